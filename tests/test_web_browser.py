"""The page in a real browser: headless Chromium driven by selenium as a person would use
it (drag on the pad, move a slider, press play, drop a MIDI file), against the server
with the shipped hier-4bar model. Checks the melody that arrived against the model's own
decode of the server's state, the notes the page scheduled, and the pixels on screen."""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import scale_melody
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select

from melodyvae.inference import MelodyVAE
from melodyvae.midi import read_midi, write_midi
from melodyvae.server.app import OscServer
from melodyvae.server.state import ClientState
from melodyvae.server.web import WebOptions, WebServer

MODEL = "hier-4bar"
NOTE_RGBS = ((242, 163, 65), (255, 210, 154))  # a note's body and onset edge (roll.js)
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--mute-audio")


# Like the other tests of outside programs: skipped, with the reason shown, where install.sh
# was run with --no-system or on a system without these packages
pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None or shutil.which("chromedriver") is None,
    reason="Chromium and its WebDriver (Debian: chromium chromium-driver) not installed")


def chromium(width: int = 1400, height: int = 900) -> tuple[WebDriver, str]:
    """Debian's Chromium, headless, with a fresh profile folder (returned for removal)."""
    profile = tempfile.mkdtemp(prefix="mvae-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
    return webdriver.Chrome(options=options, service=service), profile


@pytest.fixture(scope="module")
def vae() -> MelodyVAE:
    return MelodyVAE.load(MODEL, device="cpu")


@pytest.fixture(scope="module")
def web(vae: MelodyVAE) -> Iterator[WebServer]:
    osc_server = OscServer(vae, port=0).start()
    server = WebServer(osc_server.core, WebOptions(port=0)).start()
    yield server
    server.close()
    osc_server.close()


@pytest.fixture(scope="module")
def driver() -> Iterator[WebDriver]:
    browser, profile = chromium()
    yield browser
    browser.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def page(driver: WebDriver, web: WebServer) -> Iterator[WebDriver]:
    """The page freshly opened, connected, with its first melody drawn; afterwards, its
    console must hold no errors."""
    driver.set_window_size(1400, 900)
    driver.get(web.url)
    wait_for(lambda: driver.execute_script("return window.mvae && mvae.melodies > 0"))
    yield driver
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"
              and "/upload?" not in e["message"]]  # a refused upload answers 400
    assert not errors, errors


def wait_for(condition: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"still waiting after {timeout} s")


def client_of(page: WebDriver, web: WebServer) -> ClientState:
    client = web.core.clients.get(("tab", page.execute_script("return mvae.tab")))
    assert client is not None
    return client


def page_notes(page: WebDriver) -> list[tuple[int, int, float, float]]:
    notes = page.execute_script("return mvae.melody.notes")
    return [(n["pitch"], n["velocity"], n["start"], n["duration"]) for n in notes]


def model_notes(vae: MelodyVAE, z: np.ndarray) -> list[tuple[int, int, float, float]]:
    melody = vae.decode(z)[0]
    return [(n.pitch, n.velocity, melody.steps_to_beats(n.start),
             melody.steps_to_beats(n.duration)) for n in melody.notes]


def shows_melody_of_state(page: WebDriver, web: WebServer, vae: MelodyVAE) -> bool:
    """The melody on the page is the model's greedy decode of the server's vector."""
    with web.core.lock:
        z = client_of(page, web).z
    return page_notes(page) == model_notes(vae, z)


def test_dragging_on_the_pad_plays_through_the_chosen_axes(page: WebDriver, web: WebServer,
                                                           vae: MelodyVAE) -> None:
    Select(page.find_element(By.ID, "axis-x")).select_by_visible_text("pc3")
    pad = page.find_element(By.ID, "pad")
    before = page.execute_script("return mvae.melodies")
    size = pad.size["width"]
    ActionChains(page).move_to_element_with_offset(pad, -size // 4, size // 5) \
        .click_and_hold().move_by_offset(size // 8, -size // 10) \
        .move_by_offset(size // 3, -size // 4).release().perform()
    wait_for(lambda: page.execute_script("return mvae.melodies") > before)
    value = page.execute_script("return mvae.pad.value()")
    client = client_of(page, web)
    assert value["x"] > 0.5 and value["y"] > 0.5  # right of and above the centre
    wait_for(lambda: client.pcs[2] == pytest.approx(value["x"], abs=1e-6))
    assert client.pcs[1] == pytest.approx(value["y"], abs=1e-6)  # y stayed on pc2
    assert client.pcs[0] == 0.0
    wait_for(lambda: shows_melody_of_state(page, web, vae))
    assert page.execute_script("return mvae.latencies.length") >= 1


def test_an_attribute_slider_moves_the_melody(page: WebDriver, web: WebServer,
                                              vae: MelodyVAE) -> None:
    slider = page.find_element(By.CSS_SELECTOR, "input[data-axis=note_density]")
    ActionChains(page).click_and_hold(slider).move_by_offset(slider.size["width"] // 3, 0) \
        .release().perform()
    value = float(slider.get_attribute("value") or 0)
    assert value > 0.5
    client = client_of(page, web)
    wait_for(lambda: client.amounts.get("note_density") == pytest.approx(value))
    wait_for(lambda: shows_melody_of_state(page, web, vae))


def test_corner_slots_store_recall_and_morph(page: WebDriver, web: WebServer,
                                             vae: MelodyVAE) -> None:
    client = client_of(page, web)
    for corner in "ABCD":
        before = page.execute_script("return mvae.melodies")
        page.find_element(By.ID, "sample").click()
        wait_for(lambda before=before: page.execute_script("return mvae.melodies") > before)
        page.find_element(By.CSS_SELECTOR, f"[data-slot={corner}] [data-action=store]").click()
    wait_for(lambda: set(client.slots) == set("ABCD"))
    slots = {name: z.copy() for name, z in client.slots.items()}
    assert not np.allclose(slots["A"], slots["B"])
    Select(page.find_element(By.ID, "pad-mode")).select_by_value("corners")
    pad = page.find_element(By.ID, "pad")
    size = pad.size["width"]
    ActionChains(page).move_to_element_with_offset(pad, size // 4, -size // 8).click().perform()
    value = page.execute_script("return mvae.pad.value()")
    x, y = value["x"], value["y"]
    assert 0.6 < x < 0.9 and 0.3 < y < 0.5  # right of the centre, a little above
    blend = ((1 - x) * (1 - y) * slots["A"] + x * (1 - y) * slots["B"]
             + (1 - x) * y * slots["C"] + x * y * slots["D"])
    wait_for(lambda: np.allclose(client.z, blend, atol=1e-5))
    wait_for(lambda: shows_melody_of_state(page, web, vae))
    page.find_element(By.CSS_SELECTOR, "[data-slot=B] [data-action=recall]").click()
    wait_for(lambda: np.allclose(client.z, slots["B"], atol=1e-9))
    wait_for(lambda: shows_melody_of_state(page, web, vae))


def test_play_schedules_the_melody_in_time(page: WebDriver) -> None:
    qpm = 150
    page.find_element(By.ID, "qpm").send_keys(Keys.CONTROL, "a")
    page.find_element(By.ID, "qpm").send_keys(str(qpm), Keys.TAB)
    page.find_element(By.ID, "play").click()
    melody = page.execute_script("return mvae.melody")
    notes = melody["notes"]
    assert notes, "the first melody of the page is silent"
    total_beats = melody["bars"] * melody["stepsPerBar"] / 4
    wait_for(lambda: page.execute_script("return mvae.scheduled.length") > len(notes))
    scheduled = page.execute_script("return mvae.scheduled")
    assert page.find_element(By.ID, "play").get_attribute("aria-pressed") == "true"
    first = scheduled[: len(notes)]
    assert [(s["pitch"], s["beat"]) for s in first] == [(n["pitch"], n["start"])
                                                        for n in notes]
    seconds_per_beat = 60 / qpm
    for s in scheduled[: len(notes) + 1]:  # on the beat grid of the tempo, looping
        beats = (s["time"] - first[0]["time"]) / seconds_per_beat
        expected = s["beat"] - first[0]["beat"] + total_beats * (s["step"] // (4 * total_beats))
        assert beats == pytest.approx(expected, abs=1e-6)
    for s, n in zip(first, notes, strict=True):
        assert s["duration"] == pytest.approx(n["duration"] * seconds_per_beat)
    assert page.execute_script("return mvae.transport.qpm") == qpm
    assert page.execute_script("return mvae.transport.ctx.state") == "running"
    page.find_element(By.ID, "play").click()
    assert page.execute_script("return mvae.transport.playing") is False


def drop_file(page: WebDriver, path: Path) -> None:
    """What a drag from the desktop does: a drop event carrying the file on the drop zone
    (the file reaches the page through a file input, the only way in from outside)."""
    carrier = page.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.id = 'carrier';"
        "document.body.append(i); return i;")
    carrier.send_keys(str(path))
    page.execute_script(
        "const file = document.getElementById('carrier').files[0];"
        "const data = new DataTransfer(); data.items.add(file);"
        "const zone = document.getElementById('drop');"
        "for (const type of ['dragenter', 'dragover', 'drop'])"
        "  zone.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true,"
        "                                          cancelable: true}));"
        "document.getElementById('carrier').remove();")


def test_a_dropped_midi_file_becomes_the_melody(page: WebDriver, web: WebServer,
                                                vae: MelodyVAE, tmp_path: Path) -> None:
    write_midi(scale_melody(), tmp_path / "scale.mid")
    before = page.execute_script("return mvae.melodies")
    drop_file(page, tmp_path / "scale.mid")
    z = np.array(wait_for(lambda: page.execute_script("return mvae.z")))
    melody, _ = read_midi(tmp_path / "scale.mid")
    np.testing.assert_allclose(z, vae.encode(melody), rtol=1e-4, atol=1e-4)
    wait_for(lambda: page.execute_script("return mvae.melodies") > before)
    wait_for(lambda: shows_melody_of_state(page, web, vae))
    np.testing.assert_allclose(client_of(page, web).z, z, atol=1e-5)
    assert "scale.mid: 32 notes" in page.find_element(By.ID, "status").text
    # a file that is not MIDI is refused with a line on the page
    (tmp_path / "notes.txt").write_text("do re mi")
    drop_file(page, tmp_path / "notes.txt")
    wait_for(lambda: "not a MIDI file" in page.find_element(By.ID, "status").text)


def test_the_roll_shows_the_notes(page: WebDriver) -> None:
    roll = page.find_element(By.ID, "roll")
    melody = page.execute_script("return mvae.melody")
    notes = melody["notes"]
    assert notes
    pixels = np.asarray(Image.open(io.BytesIO(roll.screenshot_as_png)).convert("RGB"),
                        dtype=int)
    lit = np.zeros(pixels.shape[:2], dtype=bool)  # (H, W): a note's body or its onset edge
    for rgb in NOTE_RGBS:
        lit |= np.abs(pixels - np.array(rgb)).sum(axis=2) < 60
    assert lit.sum() > 200, "the roll is blank"
    # each column is lit where a note sounds at its time, and dark where none does (but
    # for a few pixels at each note's ends: notes are drawn with a gap between them)
    width = lit.shape[1]
    total = melody["bars"] * melody["stepsPerBar"] / 4
    beat = (np.arange(width) + 0.5) / width * total
    sounding = np.zeros(width, dtype=bool)
    near_end = np.zeros(width, dtype=bool)
    for n in notes:
        sounding |= (beat >= n["start"]) & (beat < n["start"] + n["duration"])
        for end in (n["start"], n["start"] + n["duration"]):
            near_end |= np.abs(np.arange(width) - end / total * width) <= 3
    assert (lit.any(axis=0) == sounding)[~near_end].mean() > 0.98
    # and higher notes are drawn higher up
    rows = np.arange(lit.shape[0])[:, None]

    def height_of(note: dict[str, Any]) -> float:
        columns = (beat >= note["start"]) & (beat < note["start"] + note["duration"])
        column_lit = lit[:, columns]
        return float((rows * column_lit).sum() / max(1, column_lit.sum()))

    high = max(notes, key=lambda n: n["pitch"])
    low = min(notes, key=lambda n: n["pitch"])
    if high["pitch"] > low["pitch"]:
        assert height_of(high) < height_of(low)


def test_the_melody_downloads_as_a_midi_file(page: WebDriver) -> None:
    head = page.execute_async_script(
        "const done = arguments[0];"
        "fetch(document.getElementById('download').href)"
        "  .then(r => r.arrayBuffer()).then(b => done(Array.from(new Uint8Array(b))))")
    assert bytes(head[:4]) == b"MThd"


def test_the_page_fits_a_phone(page: WebDriver, tmp_path: Path) -> None:
    page.set_window_size(390, 844)
    wait_for(lambda: page.execute_script("return window.innerWidth") <= 400)
    width = page.execute_script("return window.innerWidth")
    assert page.execute_script("return document.documentElement.scrollWidth") <= width
    for element in ("pad", "roll", "play", "sample"):
        rect = page.find_element(By.ID, element).rect
        assert rect["x"] >= 0 and rect["x"] + rect["width"] <= width, element
    pad = page.find_element(By.ID, "pad")
    before = page.execute_script("return mvae.melodies")
    ActionChains(page).move_to_element_with_offset(pad, 20, -30).click().perform()
    wait_for(lambda: page.execute_script("return mvae.melodies") > before)


def test_a_model_without_latent_axes_gets_the_corner_pad(driver: WebDriver,
                                                        tmp_path: Path) -> None:
    from conftest import make_checkpoint

    tiny = MelodyVAE.load(make_checkpoint(tmp_path / "tiny.safetensors"), device="cpu")
    with OscServer(tiny, port=0) as osc_server, \
            WebServer(osc_server.core, WebOptions(port=0)) as server:
        driver.get(server.url)
        wait_for(lambda: driver.execute_script("return window.mvae && mvae.melodies > 0"))
        assert driver.execute_script("return mvae.pad.mode") == "corners"
        assert not driver.find_element(By.ID, "axis-x").is_displayed()
        assert not driver.find_elements(By.CSS_SELECTOR, "#sliders input")
        assert "no latent axes" in driver.find_element(By.ID, "status").text
        before = driver.execute_script("return mvae.melodies")
        driver.find_element(By.ID, "sample").click()
        wait_for(lambda: driver.execute_script("return mvae.melodies") > before)
        assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
