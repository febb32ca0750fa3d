"""Playback: timetagged note bundles at exact step times, swaps on bar lines, tempo."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest
from conftest import osc
from pythonosc.osc_bundle import OscBundle

from melodyvae.inference import MelodyVAE
from melodyvae.melody import Melody, Note
from melodyvae.server.app import OscServer
from melodyvae.server.core import ServerConfig, ServerCore
from melodyvae.server.playback import Player
from melodyvae.server.protocol import timetag_seconds

KEY = ("127.0.0.1", 50000)
T0 = 1_800_000_000.0  # a fake "now" (Unix seconds)
STEP = 0.125  # seconds per 16th at 120 qpm


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


Event = tuple[float, str, tuple[Any, ...]]


def events(sent: list[tuple[bytes, Any]]) -> list[Event]:
    """(time, address, args) of every note message, flattened from the bundles."""
    out: list[Event] = []
    for data, _ in sent:
        bundle = OscBundle(data)
        at = timetag_seconds(data[8:16])
        assert at is not None
        out.extend((at, m.address, tuple(m.params)) for m in bundle)
    sent.clear()
    return out


def melody(*notes: tuple[int, int, int], bars: int = 2) -> Melody:
    return Melody(tuple(Note(s, e, p) for s, e, p in notes), bars * 16)


def advance(p: Player, clock: Clock, to: float) -> None:
    """Move the clock to ``to`` in 10 ms ticks, like the scheduler thread does."""
    while clock.now < to:
        clock.now = min(to, clock.now + 0.01)
        p.tick()



@pytest.fixture
def player() -> tuple[Player, Clock, list[tuple[bytes, Any]]]:
    sent: list[tuple[bytes, Any]] = []
    clock = Clock()
    return Player(lambda data, addr: sent.append((data, addr)), clock), clock, sent


def test_notes_are_sent_one_lookahead_early_with_exact_timetags(player: Any) -> None:
    p, clock, sent = player
    p.play(KEY, 120.0, 0.1, melody((0, 4, 60), (4, 6, 62), (8, 10, 64)))
    assert p.tick() == 1  # only step 0 is within 100 ms
    assert events(sent) == [(pytest.approx(T0 + 0.1), "/mvae/noteon", (60, 90))]
    advance(p, clock, T0 + 0.6)  # steps due by 0.7 s: up to step 4

    assert events(sent) == [
        (pytest.approx(T0 + 0.1 + 4 * STEP), "/mvae/noteoff", (60,)),
        (pytest.approx(T0 + 0.1 + 4 * STEP), "/mvae/noteon", (62, 90)),
    ]
    advance(p, clock, T0 + 1.2)

    assert events(sent) == [
        (pytest.approx(T0 + 0.1 + 6 * STEP), "/mvae/noteoff", (62,)),
        (pytest.approx(T0 + 0.1 + 8 * STEP), "/mvae/noteon", (64, 90)),
    ]


def test_the_melody_loops(player: Any) -> None:
    p, clock, sent = player
    p.play(KEY, 120.0, 0.0, melody((30, 32, 70)))  # a note at the end of bar 2
    advance(p, clock, T0 + 32 * STEP + 0.01)

    got = events(sent)
    assert got[:2] == [(pytest.approx(T0 + 30 * STEP), "/mvae/noteon", (70, 90)),
                       (pytest.approx(T0 + 32 * STEP), "/mvae/noteoff", (70,))]
    advance(p, clock, T0 + 62 * STEP + 0.01)

    assert events(sent) == [(pytest.approx(T0 + 62 * STEP), "/mvae/noteon", (70, 90))]


def test_a_new_melody_takes_over_at_the_next_bar_line(player: Any) -> None:
    p, clock, sent = player
    p.play(KEY, 120.0, 0.0, melody(*[(s, s + 1, 60) for s in range(0, 32, 2)]))
    advance(p, clock, T0 + 5 * STEP - 0.001)  # steps 0..4 scheduled

    events(sent)
    new = melody(*[(s, s + 3, 72) for s in range(0, 32, 4)])
    p.offer(KEY, new)
    advance(p, clock, T0 + 20 * STEP + 0.001)

    got = events(sent)
    old = [e for e in got if e[2][0] == 60]
    assert max(e[0] for e in old) < T0 + 16 * STEP  # the old melody stops at the bar line
    first_new = next(e for e in got if e[2][0] == 72)
    assert first_new[0] == pytest.approx(T0 + 16 * STEP)  # bar 2 of the new melody
    assert first_new[1] == "/mvae/noteon"


def test_a_held_note_is_cut_when_the_melody_changes(player: Any) -> None:
    p, clock, sent = player
    p.play(KEY, 120.0, 0.0, melody((12, 20, 60)))  # held across the bar line at 16
    advance(p, clock, T0 + 14 * STEP)

    events(sent)
    p.offer(KEY, melody((20, 22, 72)))
    advance(p, clock, T0 + 21 * STEP)

    assert events(sent) == [(pytest.approx(T0 + 16 * STEP), "/mvae/noteoff", (60,)),
                            (pytest.approx(T0 + 20 * STEP), "/mvae/noteon", (72, 90))]


def test_a_tempo_change_keeps_the_next_step_time(player: Any) -> None:
    p, clock, sent = player
    p.play(KEY, 120.0, 0.0, melody(*[(s, s + 1, 60) for s in range(0, 32)]))
    advance(p, clock, T0 + 4 * STEP - 0.001)  # steps 0..3 scheduled

    events(sent)
    p.set_tempo(KEY, 60.0)  # twice as slow from step 4 on
    advance(p, clock, T0 + 4 * STEP + 2 * 2 * STEP - 0.001)

    times = [e[0] for e in events(sent) if e[1] == "/mvae/noteon"]
    assert times == [pytest.approx(T0 + 4 * STEP), pytest.approx(T0 + 4 * STEP + 2 * STEP)]


def test_stop_releases_the_sounding_note(player: Any) -> None:
    p, clock, sent = player
    p.play(KEY, 120.0, 0.0, melody((0, 16, 60)))
    advance(p, clock, T0 + 2 * STEP)

    events(sent)
    assert p.stop(KEY)
    assert events(sent) == [(pytest.approx(T0 + 3 * STEP), "/mvae/noteoff", (60,))]
    clock.now += 10
    assert p.tick() == 0
    assert not p.stop(KEY)


def test_a_late_scheduler_reanchors_instead_of_flooding(player: Any) -> None:
    p, clock, sent = player
    p.play(KEY, 120.0, 0.1, melody(*[(s, s + 1, 60) for s in range(32)]))
    clock.now = T0 + 3600  # the machine slept for an hour
    p.tick()

    assert len(events(sent)) < 10


def test_play_through_the_core_decodes_then_loops(vae: MelodyVAE) -> None:
    sent: list[tuple[bytes, Any]] = []
    clock = Clock()
    core = ServerCore(vae, lambda data, addr: sent.append((data, addr)), ServerConfig(),
                      clock=clock)
    core.handle_datagram(osc("/mvae/tempo", 60.0), KEY)
    core.handle_datagram(osc("/mvae/lookahead", 50.0), KEY)
    core.handle_datagram(osc("/mvae/play"), KEY)  # no melody yet: one is decoded first
    core.engine.run_pending()
    assert b"/mvae/melody/end" in sent[-1][0]
    melody_sent = core.client(KEY).melody
    assert melody_sent is not None and melody_sent.qpm == 60.0
    sent.clear()
    advance(core.player, clock, T0 + 16.0)  # one 4-bar loop at 60 qpm
    ons = [e for e in events(sent) if e[1] == "/mvae/noteon"]
    first = melody_sent.notes[0]
    assert ons[0] == (pytest.approx(T0 + 0.05 + first.start * 0.25), "/mvae/noteon",
                      (first.pitch, first.velocity))
    core.handle_datagram(osc("/mvae/stop"), KEY)
    assert not core.player.is_playing(KEY)


def test_play_over_udp_sends_timetagged_bundles(vae: MelodyVAE) -> None:
    with OscServer(vae, port=0) as server, socket.socket(socket.AF_INET,
                                                          socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(osc("/mvae/z", 1.0, -0.5), ("127.0.0.1", server.port))
        while b"/mvae/melody/end" not in sock.recv(65536):
            pass
        sock.sendto(osc("/mvae/tempo", 240.0), ("127.0.0.1", server.port))
        sock.sendto(osc("/mvae/play"), ("127.0.0.1", server.port))
        data = sock.recv(65536)
        received = time.time()
        at = timetag_seconds(data[8:16])
        assert at is not None and data.startswith(b"#bundle")
        assert received - 0.05 < at < received + 0.2  # about one lookahead ahead
        sock.sendto(osc("/mvae/stop"), ("127.0.0.1", server.port))
