"""Latency of the browser page: from a pad move to the new melody drawn, in the page's own
clock, with ``melodyvae serve --web`` and headless Chromium.

1. **One move at a time** (``--moves``, 500): the page gets a pointer event on its pad at a
   random point, sends the move, and draws the melody that comes back; the next move waits
   for it. The page records ``performance.now()`` in its pointer handler and again once the
   roll is drawn (and at the next animation frame, when the browser shows it).
2. **A flood** (``--flood-rate`` moves/s for ``--flood-seconds``, 60/s for 10 s): moves
   sent on a timer whatever comes back. Reported: the most decode requests ever waiting at
   once (``max_waiting`` from ``/mvae/stats``, asked by the page: with one tab, the decodes
   that tab has queued; latest wins keeps it at one), requests, melodies drawn, and how long
   after the flood's last move its melody was drawn.

The server is started the way users start it (``--threads 1`` unless told otherwise);
the events are dispatched inside the page (a real drag goes through the same handler, see
tests/test_web_browser.py), so WebDriver's own round trips are not in the figures.

    python bench/web_latency.py                         # hier-4bar, 500 moves, 60/s for 10 s
    python bench/web_latency.py --screenshot docs/web.png

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import resolve, start
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

GOAL_P99_MS = 50.0  # pad move -> melody drawn, hier-4bar
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--mute-audio")

# Moves one at a time; resolves with [drawn ms, painted ms] per move.
SEQUENTIAL = """
const [n, seed, done] = arguments;
const pad = document.getElementById("pad");
let s = seed;
const rand = () => (s = (s * 1103515245 + 12345) % 2147483648) / 2147483648;
const at = (u, v) => {
  const r = pad.getBoundingClientRect();
  return {clientX: r.left + u * r.width, clientY: r.top + v * r.height, pointerId: 1,
          pointerType: "mouse", buttons: 1, bubbles: true};
};
const next = () => new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error("no melody within 10 s")), 10000);
  window.addEventListener("mvae:melody", (e) => {
    clearTimeout(timer);
    requestAnimationFrame(() => resolve([e.detail.drawnAt, performance.now()]));
  }, {once: true});
});
(async () => {
  const out = [];
  let arrived = next();
  pad.dispatchEvent(new PointerEvent("pointerdown", at(0.5, 0.5)));
  await arrived;
  for (let i = 0; i < n; i++) {
    arrived = next();
    pad.dispatchEvent(new PointerEvent("pointermove", at(rand(), rand())));
    const [drawn, painted] = await arrived;
    const ms = mvae.latencies[mvae.latencies.length - 1];
    out.push([ms, ms + painted - drawn]);
    await new Promise((r) => setTimeout(r, 5));
  }
  pad.dispatchEvent(new PointerEvent("pointerup", at(0.5, 0.5)));
  done(out);
})().catch((e) => done(String(e)));
"""

# A flood of moves on a timer; resolves once the page has been quiet for `quiet` ms.
FLOOD = """
const [rate, seconds, quiet, done] = arguments;
const pad = document.getElementById("pad");
const at = (u, v) => {
  const r = pad.getBoundingClientRect();
  return {clientX: r.left + u * r.width, clientY: r.top + v * r.height, pointerId: 1,
          pointerType: "mouse", buttons: 1, bubbles: true};
};
const total = Math.round(rate * seconds);
const period = 1000 / rate;
const melodies = mvae.melodies;
let lastDrawn = 0;
window.addEventListener("mvae:melody", (e) => { lastDrawn = e.detail.drawnAt; });
pad.dispatchEvent(new PointerEvent("pointerdown", at(0.5, 0.5)));
const start = performance.now();
let i = 0;
let lastMove = 0;
const late = [];
function tick() {
  while (i < total && performance.now() >= start + i * period) {
    const a = (2 * Math.PI * i) / (rate * 2);  // a circle every 2 s
    late.push(performance.now() - (start + i * period));
    pad.dispatchEvent(new PointerEvent("pointermove",
      at(0.5 + 0.4 * Math.cos(a), 0.5 + 0.4 * Math.sin(a))));
    lastMove = performance.now();
    i++;
  }
  if (i < total) setTimeout(tick, Math.max(0, start + i * period - performance.now()));
  else setTimeout(wait, quiet);
}
function wait() {
  if (performance.now() - Math.max(lastDrawn, lastMove) < quiet) return setTimeout(wait, 50);
  pad.dispatchEvent(new PointerEvent("pointerup", at(0.5, 0.5)));
  done({moves: total, seconds: (lastMove - start) / 1000, melodies: mvae.melodies - melodies,
        last_answer_ms: lastDrawn - lastMove, timer_late_ms_max: Math.max(...late)});
}
tick();
"""

STATS = ("received", "requests", "decoded", "superseded", "batches", "max_batch",
         "max_waiting", "clients", "encoded", "errors", "cancelled")


def chromium(width: int, height: int) -> tuple[WebDriver, str]:
    profile = tempfile.mkdtemp(prefix="mvae-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service), profile


def wait_for(driver: WebDriver, script: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = driver.execute_script(script)
        if value:
            return value
        time.sleep(0.05)
    raise SystemExit(f"the page never got to: {script}")


def stats(driver: WebDriver) -> dict[str, int]:
    """/mvae/stats, asked by the page over its socket."""
    driver.execute_script("mvae.last['/mvae/stats'] = null; mvae.send('/mvae/stats')")
    values = wait_for(driver, "return mvae.last['/mvae/stats']")
    return dict(zip(STATS, values, strict=False))


def summary(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {"n": len(a), "p50": round(float(np.percentile(a, 50)), 2),
            "p90": round(float(np.percentile(a, 90)), 2),
            "p99": round(float(np.percentile(a, 99)), 2), "max": round(float(a.max()), 2)}


def showcase(driver: WebDriver, path: Path) -> None:
    """A screenshot with something to see: four corners stored, a melody playing."""
    driver.execute_script("document.getElementById('temperature').value = 0.6;"
                          "document.getElementById('temperature').dispatchEvent("
                          "new Event('input'));")
    for corner in "ABCD":
        before = driver.execute_script("return mvae.melodies")
        driver.find_element(By.ID, "sample").click()
        wait_for(driver, f"return mvae.melodies > {before}")
        time.sleep(0.3)
        driver.find_element(By.CSS_SELECTOR, f"[data-slot={corner}] [data-action=store]"
                            ).click()
    driver.set_window_size(1400, 790)
    driver.find_element(By.ID, "play").click()  # a real click: audio needs a gesture
    time.sleep(1.7)
    driver.save_screenshot(str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hier-4bar")
    parser.add_argument("--moves", type=int, default=500)
    parser.add_argument("--flood-rate", type=float, default=60.0)
    parser.add_argument("--flood-seconds", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=1, help="server threads (1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="save a screenshot of the page here at the end")
    parser.add_argument("--phone-screenshot", type=Path, default=None,
                        help="and one at phone width (390 x 844)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model, untrained = resolve(args.model, Path(tmp))
        proc, _ = start([sys.executable, "-m", "melodyvae.cli", "serve", "--model", model,
                         "--port", "0", "--web", "0", "--threads", str(args.threads)])
        driver = None
        profile = ""
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if "web page at " not in line:
                raise SystemExit(f"no web page address from the server: {line!r}")
            url = line.split("web page at ", 1)[1].strip()
            driver, profile = chromium(1400, 900)
            driver.set_script_timeout(600)
            driver.get(url)
            wait_for(driver, "return window.mvae && mvae.melodies > 0")
            raw = driver.execute_async_script(SEQUENTIAL, args.moves, args.seed)
            if isinstance(raw, str):
                raise SystemExit(f"the page failed: {raw}")
            drawn = [r[0] for r in raw]
            painted = [r[1] for r in raw]
            after_moves = stats(driver)
            flood = driver.execute_async_script(FLOOD, args.flood_rate, args.flood_seconds,
                                                 700)
            after_flood = stats(driver)
            if args.screenshot:
                showcase(driver, args.screenshot)
            if args.phone_screenshot:
                driver.set_window_size(390, 844)
                time.sleep(0.5)
                driver.save_screenshot(str(args.phone_screenshot))
        finally:
            if driver is not None:
                driver.quit()
                shutil.rmtree(profile, ignore_errors=True)
            proc.terminate()
            proc.wait(30)

    flood_requests = after_flood["requests"] - after_moves["requests"]
    result = {
        "model": args.model, "untrained_stand_in": untrained, "threads": args.threads,
        "cpus": os.cpu_count(), "machine": platform.machine(),
        "load_average": os.getloadavg(),
        "move_to_drawn_ms": summary(drawn), "move_to_painted_ms": summary(painted),
        "goal_p99_ms": GOAL_P99_MS,
        "meets_goal": summary(drawn)["p99"] <= GOAL_P99_MS,
        "flood": {**flood, "requests": flood_requests,
                  "decoded": after_flood["decoded"] - after_moves["decoded"],
                  "superseded": after_flood["superseded"] - after_moves["superseded"],
                  "cancelled": after_flood["cancelled"] - after_moves["cancelled"],
                  "max_waiting": after_flood["max_waiting"]},
        "flood_queues_at_most_one": after_flood["max_waiting"] <= 1,
    }
    print(f"move -> drawn: {result['move_to_drawn_ms']} (goal p99 <= {GOAL_P99_MS} ms)")
    print(f"move -> painted: {result['move_to_painted_ms']}")
    print(f"flood: {result['flood']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
