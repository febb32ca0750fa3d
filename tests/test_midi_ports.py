"""MIDI ports end to end on a real, headless JACK server (Debian's jackd2).

Each test runs the server with ``--midi`` ports on a JACK server of its own and drives it
from a second JACK client, as a DAW would: notes and their note-offs out, MIDI clock and
transport in, knobs on the sliders, keys into the live listener, garbage that must not stop
it. Timing bounds here are generous (the suite shares two busy cores); bench/midi_clock.py
measures the precision.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import make_checkpoint, osc, random_tokens
from hypothesis import given
from hypothesis import strategies as st

from melodyvae.cli import main
from melodyvae.inference import MelodyVAE
from melodyvae.melody import Melody, Note
from melodyvae.server.app import OscServer
from melodyvae.server.core import ServerConfig
from melodyvae.server.midi_bridge import MIDI_KEY, MidiSettings, open_ports
from melodyvae.server.midi_clock import TickClock, Transport
from melodyvae.server.midi_jack import Host, JackServer, Received, clock_times
from melodyvae.server.midi_map import CCMapError, Knob, check_map, parse_map
from melodyvae.server.midi_port import MidiError, Stamps, find_port

ROOT = Path(__file__).resolve().parent.parent
TICK_120 = 60.0 / 120 / 24  # seconds per clock tick at 120 qpm


# ---------------------------------------------------------------- without ports


def test_the_clock_fits_jittered_ticks_and_keeps_one_late_tick_out() -> None:
    clock = TickClock(qpm=100.0)
    for n in range(48):
        jitter = (0.0004, -0.0003, 0.0001)[n % 3]
        clock.tick(10.0 + n * TICK_120 + (0.008 if n == 40 else jitter))
    assert clock.qpm == pytest.approx(120.0, abs=0.3)
    assert clock.predict(60) == pytest.approx(10.0 + 60 * TICK_120, abs=0.0005)
    assert clock.resets == 0


def test_a_tempo_change_is_taken_after_three_ticks() -> None:
    clock = TickClock()
    times = clock_times(5.0, [(120.0, 48), (180.0, 10)])
    for at in times[:51]:  # tick 48 still falls on the old line; 49, 50 do not
        clock.tick(at)
    assert clock.resets == 0 and clock.qpm == pytest.approx(120.0)
    for at in times[51:52]:  # the third tick off the line
        clock.tick(at)
    assert clock.resets == 1 and clock.qpm == pytest.approx(180.0, rel=1e-6)
    for at in times[52:]:
        clock.tick(at)
    assert clock.predict(len(times)) == pytest.approx(times[-1] + 60 / 180 / 24, abs=1e-6)


def test_a_lost_tick_is_counted_and_a_burst_of_held_up_ticks_ignored() -> None:
    clock = TickClock()
    times = clock_times(5.0, [(120.0, 100)])
    for at in times[:50]:
        clock.tick(at)
    numbers = [clock.tick(at) for at in times[51:64]]  # tick 50 never came
    assert numbers == [*range(50, 61), *range(62, 64)]  # renumbered on the twelfth
    assert clock.lost == 1 and clock.resets == 0
    assert clock.predict(64) == pytest.approx(times[64], abs=1e-6)
    stall = times[67] + 0.0001  # ticks 64-67 held up, then delivered together
    for at in (stall, stall + 0.0002, stall + 0.0004, stall + 0.0006):
        clock.tick(at)
    for at in times[68:]:
        clock.tick(at)
    assert clock.bursts == 1 and clock.resets == 0 and clock.lost == 1
    assert clock.predict(100) == pytest.approx(times[-1] + TICK_120, abs=1e-4)
    later = clock_times(times[-1] + TICK_120, [(120.0, 20)])  # ticks 100-119
    for i, at in enumerate(later):  # 101-104 held up one tick each, then on time again
        clock.tick(at + (TICK_120 if 1 <= i <= 4 else 0.0))
    assert clock.lost == 1 and clock.resets == 0
    assert clock.predict(120) == pytest.approx(later[-1] + TICK_120, abs=1e-4)
    resumed = clock_times(later[-1] + TICK_120, [(120.0, 20)])  # ticks 120-139
    for i, at in enumerate(resumed):  # 121-123 held up less and less: a stall recovering
        clock.tick(at + (0.012, 0.008, 0.004)[i - 1] if 1 <= i <= 3 else at)
    assert clock.resets == 0 and clock.bursts == 2
    assert clock.predict(140) == pytest.approx(resumed[-1] + TICK_120, abs=1e-4)
    for at in clock_times(resumed[-1] + TICK_120 + 0.01, [(120.0, 14)]):  # the phase moved
        clock.tick(at)
    assert clock.resets == 1 and clock.lost == 1
    assert clock.predict(154) == pytest.approx(resumed[-1] + 15 * TICK_120 + 0.01, abs=1e-4)


def test_after_a_silence_the_clock_starts_a_new_line() -> None:
    clock = TickClock()
    first = clock_times(5.0, [(120.0, 48)])
    for at in first:
        clock.tick(at)
    second = clock_times(first[-1] + 3.0, [(180.0, 5)])  # three seconds later, faster
    numbers = [clock.tick(at) for at in second]
    assert numbers == list(range(48, 53)) and clock.qpm == pytest.approx(180.0)
    assert clock.predict(53) == pytest.approx(second[-1] + 60 / 180 / 24, abs=1e-6)


def test_a_line_that_stays_wrong_is_refitted_after_a_quarter_note() -> None:
    clock = TickClock()
    for at in clock_times(5.0, [(120.0, 48)]):
        clock.tick(at)
    wobbly = clock_times(6.0 + 0.0107, [(120.0, 24)])  # half a tick later, wobbling
    for i, at in enumerate(wobbly):
        clock.tick(at + (0.0, 0.008)[i % 2])
    assert clock.resets == 1 and clock.bursts == 7
    assert clock.predict(72) == pytest.approx(wobbly[-1] + TICK_120 + 0.004, abs=0.003)


def test_the_transport_numbers_ticks_as_the_song_does() -> None:
    t = Transport()
    assert t.tick(7) is None  # stopped: ticks measure the tempo only
    t.start()
    assert [t.tick(n) for n in (8, 9)] == [0, 1] and t.offset == 8
    t.stop()
    t.song_position(16)  # bar 2 of 4/4, in 16ths
    t.resume()
    assert t.tick(30) == 96


def test_stamps_take_the_smallest_delay_as_the_offset() -> None:
    stamps = Stamps()
    assert stamps.stamp(0.0, 100.005) == pytest.approx(100.005)
    assert stamps.stamp(0.010, 100.012) == pytest.approx(100.012)  # less delay: new offset
    assert stamps.stamp(0.010, 100.030) == pytest.approx(100.022)  # read late: still 100.022


@given(st.floats(-10, 10), st.floats(-10, 10), st.integers(0, 127), st.integers(0, 127))
def test_a_knob_maps_0_64_127_to_low_middle_high_and_never_turns_back(
        low: float, high: float, a: int, b: int) -> None:
    knob = Knob("pc1", low, high)
    assert knob.value(0) == pytest.approx(low) and knob.value(127) == pytest.approx(high)
    assert knob.value(64) == pytest.approx((low + high) / 2)
    if a <= b:
        assert (knob.value(b) - knob.value(a)) * (high - low) >= -1e-9


def test_cc_map_files_are_checked() -> None:
    knobs = parse_map({"74": {"axis": "pc2", "min": -1, "max": 1}, "1": "note_density"})
    assert knobs[74] == Knob("pc2", -1.0, 1.0) and knobs[1] == Knob("note_density", -2, 2)
    for doc, message in (([], "JSON object"), ({"x": "pc1"}, "not a CC number"),
                         ({"121": "pc1"}, "outside 0..119"), ({"1": 3}, "needs an axis"),
                         ({"1": {"axis": "pc1", "max": 11}}, "max must be a number"),
                         ({"1": {"axis": "pc1", "lo": 0}}, "unknown key 'lo'")):
        with pytest.raises(CCMapError, match=message):
            parse_map(doc)
    with pytest.raises(CCMapError, match="no such axis"):
        check_map(knobs, ["pc1", "pc2"])


def test_ports_are_found_by_number_name_windows_name_or_a_unique_part() -> None:
    names = ["melodyvae 1", "melodyvae in 2", "Midi Through:Midi Through Port-0 14:0"]
    assert find_port(names, "2", "output") == 2
    assert find_port(names, "melodyvae in 2", "output") == 1
    assert find_port(names, "melodyvae", "output") == 0  # loopMIDI's port, numbered
    assert find_port(names, "through", "output") == 2
    for spec, message in (("7", "no MIDI output number 7"), ("synth", "no MIDI output named"),
                          ("melody", "ambiguous")):
        with pytest.raises(MidiError, match=message):
            find_port(names, spec, "output")


def test_midi_options_without_a_port_or_without_rtmidi_are_one_line(
        tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--model", str(tiny_checkpoint), "--midi-clock"]) == 2
    assert capsys.readouterr().err == (
        "melodyvae: error: --midi-clock and --cc-map need --midi, --midi-in or --midi-out\n")
    monkeypatch.setitem(sys.modules, "rtmidi", None)  # as if its library failed to load
    for argv in (["midi", "ports"], ["serve", "--model", str(tiny_checkpoint), "--midi"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("melodyvae: error: MIDI needs mido and python-rtmidi")
        assert err.count("\n") == 1


# ---------------------------------------------------------------- on JACK


def _jack_missing() -> str | None:
    """Why the JACK tests cannot run here (None: they can)."""
    import rtmidi

    if shutil.which("jackd") is None or shutil.which("jack_wait") is None:
        return "jackd not installed (Debian's jackd2; install.sh brings it)"
    if rtmidi.API_UNIX_JACK not in rtmidi.get_compiled_api():
        return "this python-rtmidi has no JACK API (PyPI's macOS wheels have CoreMIDI only)"
    return None


@pytest.fixture(scope="module")
def jack() -> Iterator[JackServer]:
    missing = _jack_missing()
    if missing is not None:
        pytest.skip(missing)
    with JackServer(period=32) as server:
        yield server


@pytest.fixture(scope="module")
def vae_axes(tmp_path_factory: pytest.TempPathFactory, vae: MelodyVAE) -> MelodyVAE:
    from melodyvae.training.axes import axes_document

    tokens = random_tokens(128, vae.steps)
    mu, _ = vae.encode_tokens(tokens)
    path = make_checkpoint(tmp_path_factory.mktemp("model") / "tiny-axes.safetensors",
                           extra={"axes": axes_document(mu.numpy(), tokens)})
    return MelodyVAE.load(path, device="cpu")


_NAMES = iter(range(10_000))


def midi_server(vae: MelodyVAE, **options: object) -> tuple[OscServer, str]:
    name = f"mvae-test-{next(_NAMES)}"
    settings = MidiSettings(name=name, api="jack", **options)  # type: ignore[arg-type]
    server = OscServer(vae, port=0, midi=(open_ports(settings), settings)).start()
    return server, name


def host_for(name: str) -> Host:
    return Host(f"{name} in:{name} in", f"{name}:{name}")


def notes(received: list[Received], channel: int = 0) -> list[tuple[float, int, int]]:
    """(time, pitch, velocity) of note messages on ``channel``; velocity 0 = note-off."""
    out = []
    for r in received:
        status = r.data[0]
        if status in (0x90 | channel, 0x80 | channel):
            velocity = r.data[2] if status & 0xF0 == 0x90 else 0
            out.append((r.at, r.data[1], velocity))
    return out


def assert_paired(events: list[tuple[float, int, int]]) -> None:
    """Every note-on has exactly one note-off after it, and nothing is left sounding."""
    sounding: Counter[int] = Counter()
    for _, pitch, velocity in events:
        if velocity:
            sounding[pitch] += 1
        else:
            assert sounding[pitch] > 0, f"a note-off of {pitch} without its note-on"
            sounding[pitch] -= 1
    assert not +sounding, f"left sounding: {dict(+sounding)}"


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError("timed out")


def long_notes(bars: int = 4) -> Melody:
    """Notes of three quarters, across the bar lines: long enough to be cut."""
    return Melody(tuple(Note(s, min(s + 12, bars * 16), 60 + s // 12)
                        for s in range(0, bars * 16, 12)), bars * 16)


def osc_client(server: OscServer, melody: Melody | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    if melody is not None:
        with server.core.lock:
            server.core.client(sock.getsockname()).melody = melody
    return sock


def test_ports_are_listed_and_a_missing_port_is_one_line(
        jack: JackServer, vae: MelodyVAE, tiny_checkpoint: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    server, name = midi_server(vae)
    try:
        assert main(["midi", "ports", "--midi-api", "jack"]) == 0
        out = capsys.readouterr().out
        assert f"{name} in:{name} in" in out and f"{name}:{name}" in out
        assert "MIDI system: Jack" in out
    finally:
        server.close()
    assert main(["serve", "--model", str(tiny_checkpoint), "--port", "0", "--midi-api",
                 "jack", "--midi-out", "no-such-port"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "melodyvae: error: no MIDI output named 'no-such-port' (melodyvae midi ports lists "
        "them)"]


def test_osc_playback_goes_out_as_notes_on_the_channel_each_with_its_note_off(
        jack: JackServer, vae: MelodyVAE) -> None:
    server, name = midi_server(vae, channel=3)
    host = host_for(name)
    sock = osc_client(server, long_notes())
    try:
        sock.sendto(osc("/mvae/tempo", 240.0), ("127.0.0.1", server.port))
        sock.sendto(osc("/mvae/play"), ("127.0.0.1", server.port))
        time.sleep(0.9)  # step 14 at 240 qpm: the note from step 12 sounds
        server.core.player.offer(sock.getsockname(), Melody(
            tuple(Note(s, s + 16, 72 + s // 16) for s in range(0, 64, 16)), 64))
        time.sleep(0.6)  # it takes over on the bar line (step 16, as 73), cutting that note
        sock.sendto(osc("/mvae/stop"), ("127.0.0.1", server.port))  # mid-note
        time.sleep(0.4)
    finally:
        server.close()
        host.close()
        sock.close()
    events = notes(host.received(), channel=2)
    assert all(v in (0, 90) for _, _, v in events)
    assert [p for _, p, v in events if v] == [60, 61, 73]  # the new melody took over ...
    first, swap = (t for t, p, v in events if v and p in (60, 73))
    assert swap - first == pytest.approx(1.0, abs=0.01)  # ... on the bar line (1 s)
    assert [p for _, p, v in events] == [60, 60, 61, 61, 73, 73]
    assert_paired(events)


def test_the_host_clock_starts_follows_and_stops_playback(
        jack: JackServer, vae: MelodyVAE) -> None:
    server, name = midi_server(vae, clock=True)
    host = host_for(name)
    melody = Melody(tuple(Note(s, s + 1, 60 + s % 12) for s in range(0, 64, 2)), 64)
    with server.core.lock:
        server.core.client(MIDI_KEY).melody = melody
    try:
        start = time.time() + 0.3
        times = clock_times(start, [(120.0, 24), (120.0, 4 * 96), (180.0, 3 * 96)])
        host.send_ticks(times[:8])  # clock running before Start: the tempo is known
        host.send([0xFA])  # Start: the next tick is bar 1's downbeat
        host.send_ticks(times[8:])
        host.send([0xFC])  # Stop
        time.sleep(0.5)
    finally:
        server.close()
        host.close()
    events = notes(host.received())
    song = times[8:]  # song tick n sounds at song[n] (by the clock sent)
    ons = [(t, p) for t, p, v in events if v]
    assert ons, "nothing played"
    # the first note falls on the next bar line after Start (bar 2: step 16, tick 96)
    first_step = round((ons[0][0] - song[0]) / (TICK_120 * 6))
    assert first_step == 16 and ons[0][1] == 60
    change = song[4 * 96]  # the tempo change: 180 qpm from here
    errors = []
    for at, pitch in ons:  # the melody's notes fall on eighths: every 12th tick
        tick = min(range(0, len(song), 12), key=lambda n: abs(song[n] - at))
        assert pitch == 60 + (tick // 6 - 16) % 64 % 12  # the melody from its step 0
        if not change - 0.01 < at < change + 0.1:  # three ticks confirm a new tempo
            errors.append(at - song[tick])
    errors.sort()
    assert errors[len(errors) // 2] < 0.006  # onsets sit on the host's ticks
    assert all(-0.005 < e < 0.025 for e in errors), errors
    assert ons[-1][0] < song[-1] + 0.05  # nothing starts after Stop
    assert_paired(events)
    assert server.midi is not None and server.midi.ticks.resets >= 1


def test_continue_starts_from_the_song_position_and_a_silent_clock_stops(
        jack: JackServer, vae: MelodyVAE) -> None:
    server, name = midi_server(vae, clock=True)
    host = host_for(name)
    with server.core.lock:
        server.core.client(MIDI_KEY).melody = Melody(
            tuple(Note(s, s + 2, 60 + s % 12) for s in range(0, 64, 4)), 64)
    try:
        times = clock_times(time.time() + 0.3, [(120.0, 8 + 2 * 96)])
        host.send_ticks(times[:8])
        host.send([0xF2, 32, 0], [0xFB])  # song position: bar 3 (32 16ths); Continue
        host.send_ticks(times[8:])
        last = time.time()
        time.sleep(1.0)  # the clock goes quiet without a Stop
    finally:
        server.close()
        host.close()
    events = notes(host.received())
    ons = [t for t, _, v in events if v]
    song = times[8:]  # song tick 192 (bar 3) first
    assert round((ons[0] - song[0]) / (TICK_120 * 6)) + 32 == 48  # on bar 4's downbeat
    assert ons[-1] < last + 4 * TICK_120 + 0.01  # nothing started once the clock stopped
    assert max(t for t, _, _ in events) < last + 0.8  # and its last note was released
    assert_paired(events)


def test_with_the_host_clock_a_phrase_played_in_is_answered_on_the_hosts_bar_line(
        jack: JackServer, vae: MelodyVAE) -> None:
    server, name = midi_server(vae, clock=True)
    host = host_for(name)
    loop = Melody(tuple(Note(s, s + 2, 60 + s % 12) for s in range(0, 64, 4)), 64)
    with server.core.lock:
        server.core.client(MIDI_KEY).melody = loop  # pitches 60-71; answers use others
    try:
        times = clock_times(time.time() + 0.3, [(240.0, 24 + 13 * 96)])
        host.send_ticks(times[:24])
        host.send([0xFA])
        song = times[24:]
        for bar in range(13):  # 13 s: the listener is re-synced past /mvae/sync's 10 s
            if 1 <= bar <= 2:  # a phrase in bars 2 and 3: a note on every beat
                for beat in range(4):
                    n = bar * 96 + beat * 24
                    host.send_ticks(song[n:n + 12])
                    host.send([0x90, 50 + beat, 100])
                    host.send_ticks(song[n + 12:n + 24])
                    host.send([0x80, 50 + beat, 0])
            else:
                host.send_ticks(song[bar * 96:(bar + 1) * 96])
        host.send([0xFC])
        time.sleep(0.3)
        assert server.midi is not None and not server.midi.stats.errors  # syncs all taken
    finally:
        server.close()
        host.close()
    events = notes(host.received())
    answer = [(t, p) for t, p, v in events if v and not 60 <= p <= 71]
    assert answer, "no answer was played"
    first = min(range(len(song)), key=lambda n: abs(song[n] - answer[0][0]))
    assert first == 64 * 6  # the phrase line after the phrase: bar 5 of the host's song
    assert abs(answer[0][0] - song[first]) < 0.01
    for at, _ in answer:  # the whole answer on the host's 16ths
        n = min(range(0, len(song), 6), key=lambda k: abs(song[k] - at))
        assert abs(at - song[n]) < 0.02 and 64 * 6 <= n < 128 * 6
    assert_paired(events)


def test_knobs_move_the_axes_and_start_the_loop(jack: JackServer, vae_axes: MelodyVAE,
                                               tmp_path: Path) -> None:
    server, name = midi_server(vae_axes)
    host = host_for(name)
    core = server.core
    try:
        host.send([0xB0, 1, 127], [0xB0, 2, 0], [0xB5, 20, 64], [0xB0, 100, 5])
        wait_for(lambda: core.engine.stats.decoded >= 1)
        with core.lock:
            client = core.client(MIDI_KEY)
            assert client.pcs[0] == pytest.approx(3.0) and client.pcs[1] == pytest.approx(-3)
            first = next(iter(core.axes.attributes))
            assert client.amounts[first] == pytest.approx(0.0)
        assert server.midi is not None and server.midi.stats.ignored == 1  # CC 100
        wait_for(lambda: bool(notes(host.received())))  # the loop started with the knob
    finally:
        server.close()
        host.close()
    assert_paired(notes(host.received()))
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"74": {"axis": "pc2", "min": -1, "max": 1}}))
    from melodyvae.server.midi_map import read_map

    server, name = midi_server(vae_axes, cc_map=read_map(path))
    host = host_for(name)
    try:
        host.send([0xB0, 74, 127], [0xB0, 1, 127])
        wait_for(lambda: server.core.engine.stats.requests >= 1)
        time.sleep(0.2)
        with server.core.lock:
            client = server.core.client(MIDI_KEY)
            assert client.pcs[1] == pytest.approx(1.0) and client.pcs[0] == 0.0
    finally:
        server.close()
        host.close()


def test_a_knob_loop_plays_on_past_the_stream_lease(jack: JackServer,
                                                   vae_axes: MelodyVAE) -> None:
    name = f"mvae-test-{next(_NAMES)}"
    settings = MidiSettings(name=name, api="jack")
    server = OscServer(vae_axes, port=0, config=ServerConfig(lease=1.0),
                       midi=(open_ports(settings), settings)).start()
    host = host_for(name)
    try:
        host.send([0xB0, 1, 100])
        wait_for(lambda: bool(notes(host.received())))
        time.sleep(3.0)  # three leases without a message on the input
        assert server.core.player.is_playing(MIDI_KEY)
        assert server.core.guard.stats.expired == 0
        heard = len(notes(host.received()))
        wait_for(lambda: len(notes(host.received())) > heard)  # and it still plays
    finally:
        server.close()
        host.close()
    assert_paired(notes(host.received()))


def test_a_cc_map_naming_an_axis_the_model_lacks_is_one_line(
        jack: JackServer, tiny_checkpoint: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "map.json"
    path.write_text('{"1": "loudness"}')
    assert main(["serve", "--model", str(tiny_checkpoint), "--port", "0", "--midi",
                 f"mvae-map-{os.getpid()}", "--midi-api", "jack", "--cc-map",
                 str(path)]) == 2
    assert capsys.readouterr().err.startswith(
        "melodyvae: error: --cc-map: CC 1 -> 'loudness': the model has no such axis")


def test_keys_feed_the_live_listener(jack: JackServer, vae: MelodyVAE) -> None:
    server, name = midi_server(vae)
    host = host_for(name)
    try:
        sent = time.time()
        host.send([0x90, 60, 100])
        time.sleep(0.25)  # two steps at 120 qpm
        host.send([0x80, 60, 0], [0x91, 64, 80])
        time.sleep(0.125)
        host.send([0x91, 64, 0])  # a note-on of velocity 0 is a note-off
        wait_for(lambda: server.midi is not None and server.midi.stats.notes == 2)
        time.sleep(0.1)
        with server.core.lock:
            session = server.core.live.sessions[MIDI_KEY]
            played = [(p.pitch, p.velocity, p.on, p.off) for p in session.notes]
            assert session.listening and not session.held
            origin = session.clock.origin
    finally:
        server.close()
        host.close()
    assert abs(origin - sent) < 0.05  # listening began with the first note, a bar line
    assert [(p, v) for p, v, _, _ in played] == [(60, 100), (64, 80)]
    (_, _, on1, off1), (_, _, on2, off2) = played
    assert on1 == pytest.approx(0.0, abs=0.4) and off1 == pytest.approx(2.0, abs=0.4)
    assert on2 == pytest.approx(2.0, abs=0.4) and off2 == pytest.approx(3.0, abs=0.4)


def test_bad_midi_never_stops_the_server(jack: JackServer, vae_axes: MelodyVAE) -> None:
    server, name = midi_server(vae_axes, clock=True)
    host = host_for(name)
    try:
        garbage = [[0xF0, 0x7D, 1, 2, 3, 4, 5, 0xF7]] * 3000  # a sysex flood
        garbage += [[0x40, 0x40], [0x90, 61], [0xB0, 200, 1], [0xF4], [0xF8, 0xF8, 0xF8],
                    [0xC0, 5], [0xFA, 1, 2], [0xB0, 119, 127], [0x80, 0x80, 0x80], [0x7F]]
        garbage += [[0xB0, 50, n % 128] for n in range(2000)]  # CCs on an unmapped number
        host.send(*garbage)
        host.send([0xFC], [0xF2, 0x7F, 0x7F])  # stop while stopped; a song position
        host.send([0xB0, 1, 100])  # still heard
        wait_for(lambda: server.core.engine.stats.requests >= 1)
        with server.core.lock:
            assert server.core.client(MIDI_KEY).pcs[0] > 1.0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            sock.sendto(osc("/mvae/ping", 7), ("127.0.0.1", server.port))
            assert b"/mvae/pong" in sock.recv(1024)
        assert server.midi is not None and server.midi.stats.bad >= 4
        assert server.midi._thread is not None and server.midi._thread.is_alive()
    finally:
        server.close()
        host.close()


def test_a_vanished_output_is_reported_once_and_gets_its_note_offs_when_back(
        jack: JackServer, vae: MelodyVAE, caplog: pytest.LogCaptureFixture) -> None:
    rx_name = f"probe-{os.getpid()}"
    first = Host(None, None, rx_name=rx_name, virtual_rx=True)
    server, _ = midi_server(vae, out_port=f"{rx_name}:in")
    sock = osc_client(server, Melody((Note(0, 64, 67),), 64))  # one long note
    caplog.set_level(logging.WARNING, "melodyvae.server.midi_port")
    second = None
    try:
        sock.sendto(osc("/mvae/play"), ("127.0.0.1", server.port))
        wait_for(lambda: bool(notes(first.received())))
        first.close()  # the port vanishes with the note sounding
        time.sleep(2.5)  # seen gone (checked once a second), and reported once
        second = Host(None, None, rx_name=rx_name, virtual_rx=True)
        wait_for(lambda: bool(notes(second.received())), timeout=5)
        sock.sendto(osc("/mvae/stop"), ("127.0.0.1", server.port))
        time.sleep(0.3)
    finally:
        server.close()
        sock.close()
        if second is not None:
            second.close()
    assert [e[1:] for e in notes(first.received())] == [(67, 90)]
    assert [e[1:] for e in notes(second.received())][0] == (67, 0)  # released on return
    assert_paired(notes(first.received()) + notes(second.received()))
    messages = [r.getMessage() for r in caplog.records]
    assert sum("vanished" in m for m in messages) == 1
    assert sum("is back" in m for m in messages) == 1


def test_a_vanished_input_releases_held_keys_and_is_reopened_when_back(
        jack: JackServer, vae: MelodyVAE, caplog: pytest.LogCaptureFixture) -> None:
    tx_name = f"keys-{os.getpid()}"
    keys = Host(None, None, tx_name=tx_name, virtual_tx=True)
    server, _ = midi_server(vae, in_port=f"{tx_name}:out")
    caplog.set_level(logging.WARNING, "melodyvae.server.midi_port")
    again = None
    try:
        keys.send([0x90, 60, 100])
        wait_for(lambda: server.midi is not None and server.midi.stats.notes == 1)
        keys.close()  # the keyboard is unplugged with a key down
        time.sleep(2.5)
        with server.core.lock:
            assert not server.core.live.sessions[MIDI_KEY].held  # released
        again = Host(None, None, tx_name=tx_name, virtual_tx=True)
        wait_for(lambda: any("is back" in r.getMessage() for r in caplog.records), 5)
        again.send([0x90, 62, 100])
        wait_for(lambda: server.midi is not None and server.midi.stats.notes == 2)
    finally:
        server.close()
        if again is not None:
            again.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("vanished" in m for m in messages) == 1


def test_ctrl_c_releases_the_sounding_notes(jack: JackServer, tiny_checkpoint: Path) -> None:
    name = f"mvae-sigint-{os.getpid()}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(tiny_checkpoint),
         "--port", "0", "--threads", "1", "--midi", name, "--midi-api", "jack"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    host = None
    try:
        assert proc.stdout is not None
        port = None
        for _ in range(3):
            line = proc.stdout.readline()
            if "listening on" in line:
                port = int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1])
            if line.startswith(f"melodyvae: MIDI out '{name}'"):
                break
        assert port is not None
        host = host_for(name)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(osc("/mvae/tempo", 60.0), ("127.0.0.1", port))  # 250 ms 16ths
            sock.sendto(osc("/mvae/play"), ("127.0.0.1", port))
            wait_for(lambda: len(notes(host.received())) >= 3)
            time.sleep(0.1)  # mid-note
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
        time.sleep(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
        if host is not None:
            host.close()
    events = notes(host.received())
    assert events[-1][2] == 0  # the last thing heard is a note-off
    assert_paired(events)
