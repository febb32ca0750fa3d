"""MIDI clock following of ``melodyvae serve --midi --midi-clock``: note onsets against the
host clock's ideal grid.

A headless JACK server (``jackd -d dummy -p 32``: 0.67 ms periods, the quantum in which JACK
delivers MIDI) carries a host, as a DAW would be: it sends MIDI clock at an exact tempo
(each tick at its ideal time), Start, 64 bars, Stop, into a server started the way users
start it; and it records the notes that come back, timed where JACK delivered them. Each
note-on is compared with the 16th of the ideal grid nearest to it: the median of those
differences is the latency (constant: the DAW compensates it, like any device's), the
spread around it is the jitter; the goal is a p99 jitter of at most 2 ms at 120 and 180 qpm.
With ``--knobs`` a knob turns every half bar meanwhile, so the model decodes while it plays.

    python bench/midi_clock.py                      # hier-4bar, 120 and 180 qpm, 64 bars
    python bench/midi_clock.py --qpm 120 --bars 16 --knobs

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from common import resolve
from common import start as start_process

from melodyvae.server.midi_jack import Host, JackServer, clock_times

PRE_ROLL = 24  # ticks of clock before Start (a DAW's clock runs while it is stopped)


def run(name: str, qpm: float, bars: int, knobs: bool) -> dict[str, Any]:
    host = Host(f"{name} in:{name} in", f"{name}:{name}")
    try:
        start = time.time() + 0.5
        song_ticks = (bars + 2) * 96  # the loop starts on bar 2; one bar to spare
        times = clock_times(start, [(qpm, PRE_ROLL + song_ticks)])
        stop_knobs = threading.Event()
        turned: list[float] = []

        def turn() -> None:  # CC 1 back and forth, every half bar
            value = 0
            while not stop_knobs.wait(60.0 / qpm * 2):
                value = (value + 37) % 128
                host.send([0xB0, 1, value])
                turned.append(time.time())

        turner = threading.Thread(target=turn, daemon=True)
        host.send_ticks(times[:PRE_ROLL])
        host.send([0xFA])
        if knobs:
            turner.start()
        sent = host.send_ticks(times[PRE_ROLL:])
        stop_knobs.set()
        host.send([0xFC])
        stopped = time.time()
        time.sleep(0.5)
    finally:
        host.close()
    song = np.asarray(times[PRE_ROLL:])
    step = 60.0 / qpm / 4
    received = host.received()
    ons, offs = [], []
    for r in received:
        if r.data[0] & 0xF0 == 0x90 and r.data[2] > 0:
            ons.append((r.at, r.data[1]))
        elif r.data[0] & 0xF0 in (0x80, 0x90):
            offs.append((r.at, r.data[1]))
    onsets = np.asarray([at for at, _ in ons])
    steps = np.rint((onsets - song[0]) / step)
    error = onsets - (song[0] + steps * step)  # seconds from the ideal grid
    latency = float(np.median(error))
    jitter = np.abs(error - latency)
    balance = Counter(p for _, p in ons)
    balance.subtract(Counter(p for _, p in offs))
    sender = np.abs(np.asarray(sent) - song)
    worst = []
    for i in np.argsort(-jitter)[:5]:
        before = [t for t in turned if t <= onsets[i]]
        worst.append({"step": int(steps[i]), "off_ms": round(float(error[i] - latency) * 1000, 2),
                      "after_knob_ms": round((onsets[i] - before[-1]) * 1000) if before else None})
    return {
        "qpm": qpm,
        "bars": bars,
        "knobs": knobs,
        "onsets": len(onsets),
        "first_onset_step": int(steps[0]) if len(steps) else None,
        "latency_ms": round(latency * 1000, 3),
        "jitter_p50_ms": round(float(np.percentile(jitter, 50)) * 1000, 3),
        "jitter_p99_ms": round(float(np.percentile(jitter, 99)) * 1000, 3),
        "jitter_max_ms": round(float(jitter.max()) * 1000, 3),
        "note_ons_after_stop": int(np.sum(onsets > stopped + 0.002)),
        "unreleased_notes": sum(v for v in balance.values() if v > 0),
        "clock_send_p99_ms": round(float(np.percentile(sender, 99)) * 1000, 3),
        "worst_onsets": worst,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="hier-4bar", help="shipped name, preset or file")
    parser.add_argument("--qpm", type=float, action="append", default=None,
                        help="tempo (repeat for several; default 120 and 180)")
    parser.add_argument("--bars", type=int, default=64)
    parser.add_argument("--period", type=int, default=32, help="JACK frames per period")
    parser.add_argument("--knobs", action="store_true", help="turn a knob every half bar")
    parser.add_argument("--threads", type=int, default=1, help="server CPU threads")
    args = parser.parse_args()
    tempi = args.qpm or [120.0, 180.0]

    results = []
    with tempfile.TemporaryDirectory() as tmp, JackServer(period=args.period):
        path, untrained = resolve(args.model, Path(tmp))
        name = "melodyvae"
        command = [sys.executable, "-m", "melodyvae.cli", "serve", "--model", path,
                   "--port", "0", "--threads", str(args.threads), "--midi", name,
                   "--midi-api", "jack", "--midi-clock"]
        proc, _ = start_process(command)
        try:
            time.sleep(1.0)  # the ports line follows the listening line
            for qpm in tempi:
                print(f"{args.bars} bars at {qpm:g} qpm (~{args.bars * 240 / qpm:.0f} s) ...",
                      flush=True)
                figures = run(name, qpm, args.bars, args.knobs)
                results.append(figures)
                print(f"  {figures['onsets']} onsets, latency {figures['latency_ms']} ms, "
                      f"jitter p50 {figures['jitter_p50_ms']} ms, p99 "
                      f"{figures['jitter_p99_ms']} ms, max {figures['jitter_max_ms']} ms; "
                      f"first onset on step {figures['first_onset_step']}; "
                      f"{figures['note_ons_after_stop']} note-ons after Stop, "
                      f"{figures['unreleased_notes']} notes left sounding", flush=True)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps({
        "benchmark": "midi_clock",
        "command": " ".join(["python", "bench/midi_clock.py", *sys.argv[1:]]),
        "model": args.model,
        "untrained_stand_in": untrained,
        "jack": f"jackd -d dummy -r 48000 -p {args.period} "
                f"({args.period / 48:.2f} ms periods)",
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "results": results,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
