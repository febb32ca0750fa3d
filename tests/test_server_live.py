"""Live improvisation: performer notes in, an answer on the bar line where the phrase ends.

Most tests drive the server core with a fake clock and no threads (the listener's
``run_due``, the engine's ``run_pending`` and the player's ``tick`` by hand). The scripted
performer plays over real UDP at 120 qpm with its notes in timetagged bundles, so its
timing is exact however loaded the machine is. The models are untrained tiny ones: their
answers are random but valid melodies, and the answer path guarantees at least one note
(a silent decode is resampled; with these fixed seeds and phrases it always finds notes).
"""

from __future__ import annotations

import math
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_checkpoint, random_tokens, scale_melody
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder

from melodyvae.inference import MelodyVAE
from melodyvae.melody import Melody, Note
from melodyvae.server.app import OscServer
from melodyvae.server.core import ServerConfig, ServerCore
from melodyvae.server.live import (
    DRAFT_ESTIMATES,
    DRAFT_S,
    LAST_CALL_S,
    LOST_AFTER_S,
    Listener,
)
from melodyvae.server.playback import Player
from melodyvae.server.protocol import Message, encode_message, parse_packet, timetag_seconds
from melodyvae.training.axes import axes_document

ROOT = Path(__file__).resolve().parent.parent
KEY = ("127.0.0.1", 50000)
T0 = 1_800_000_000.0  # a fake "now" (Unix seconds)
STEP = 0.125  # seconds per 16th at 120 qpm
PHRASE = 64  # steps in the tiny 4-bar models
GRID = 1e-4  # steps: how close a timetag must sit to the grid


@pytest.fixture(scope="module")
def vae_axes(tmp_path_factory: pytest.TempPathFactory, vae: MelodyVAE) -> MelodyVAE:
    """The same weights with axes computed from random phrases (attribute vectors)."""
    tokens = random_tokens(128, vae.steps)
    mu, _ = vae.encode_tokens(tokens)
    doc = axes_document(mu.numpy(), tokens)
    path = make_checkpoint(tmp_path_factory.mktemp("model") / "tiny-axes.safetensors",
                           extra={"axes": doc})
    return MelodyVAE.load(path, device="cpu")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def osc(address: str, *args: Any) -> Any:
    builder = OscMessageBuilder(address)
    for value in args:
        builder.add_arg(value)
    return builder.build()


def bundle(at: float, *messages: Any) -> bytes:
    builder = OscBundleBuilder(at)  # type: ignore[arg-type]  # (typed int, takes float)
    for message in messages:
        builder.add_content(message)
    return builder.build().dgram


Event = tuple[float | None, str, tuple[Any, ...]]  # (timetag, address, args)


class Wire:
    """A ServerCore with a list for a socket and a fake clock."""

    def __init__(self, vae: MelodyVAE) -> None:
        self.clock = Clock()
        self.sent: list[bytes] = []
        self.core = ServerCore(vae, lambda data, addr: self.sent.append(data), ServerConfig(),
                               clock=self.clock)

    def send(self, address: str, *args: Any) -> None:
        self.core.handle_datagram(osc(address, *args).dgram, KEY)

    def send_at(self, at: float, address: str, *args: Any) -> None:
        self.core.handle_datagram(bundle(at, osc(address, *args)), KEY)

    def play(self, melody: Melody, origin: float, step: float = STEP) -> None:
        """The melody's notes as timetagged bundles, its step 0 at ``origin``."""
        for note in melody.notes:
            self.send_at(origin + note.start * step, "/mvae/in/noteon", note.pitch, 100)
            self.send_at(origin + note.end * step - 0.01, "/mvae/in/noteoff", note.pitch)

    def events(self) -> list[Event]:
        out: list[Event] = []
        for data in self.sent:
            at = timetag_seconds(data[8:16]) if data.startswith(b"#bundle") else None
            for item in parse_packet(data):
                assert isinstance(item, Message)
                out.append((at, item.address, item.args))
        self.sent.clear()
        return out

    def errors(self) -> list[str]:
        return [str(args[1]) for _, address, args in self.events() if address == "/mvae/error"]

    def until(self, at: float, model: bool = True) -> None:
        """Move the clock to ``at`` in 10 ms ticks, running every thread's step (the model
        thread's only with ``model``: without, it is stalled)."""
        while self.clock.now < at:
            self.clock.now = min(at, self.clock.now + 0.01)
            self.step(model)

    def step(self, model: bool = True) -> None:
        self.core.live.run_due()
        if model:
            self.core.engine.run_pending()
        self.core.player.tick()


def on_grid(at: float, origin: float, seconds_per_step: float = STEP) -> bool:
    steps = (at - origin) / seconds_per_step
    return abs(steps - round(steps)) < GRID


def listening(vae: MelodyVAE) -> Wire:
    """A client listening from T0 (its first bar line), calibration done."""
    wire = Wire(vae)
    wire.send("/mvae/listen", 1)
    wire.core.engine.run_pending()  # the calibration run
    assert wire.core.live.samples, "calibration measured nothing"
    return wire


@pytest.mark.parametrize("attributes", [True, False])
def test_the_calibration_times_three_kinds_of_answer_due_together(
        vae: MelodyVAE, vae_axes: MelodyVAE, attributes: bool,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any answer is timed, the estimate comes from answers as three performers get
    them at one bar line: an echo, a blend and a contrast (a sampled echo for a model
    without attributes), in one batch."""
    batches: list[list[tuple[str, float]]] = []
    compose = Listener.compose

    def timed(self: Listener, requests: list[Any]) -> Any:
        batches.append(sorted((r.mode, r.temperature) for r in requests))
        return compose(self, requests)

    monkeypatch.setattr(Listener, "compose", timed)
    listening(vae_axes if attributes else vae)
    third = ("contrast", 0.0) if attributes else ("echo", 1.0)
    assert batches == [sorted([("echo", 0.0), ("blend", 0.0), third])] * 2  # warm-up, timed


# ------------------------------------------------------------------ the answer, fake clock


def deadline_of_bar_4(wire: Wire) -> float:
    """Bar 4 (the first phrase line), less the lookahead, less the time an answer takes."""
    return T0 + 8.0 - 0.1 - wire.core.live.estimate


def test_an_answer_starts_on_the_bar_line_where_the_phrase_ends(vae: MelodyVAE) -> None:
    """The answer is composed while the phrase is played (a draft, from the notes so far);
    at the deadline the call is what the draft heard, so the answer goes out at once."""
    wire = listening(vae)
    phrase = scale_melody()
    wire.play(phrase, T0)
    live = wire.core.live
    deadline = deadline_of_bar_4(wire)
    draft_at = live.run_due()
    assert draft_at == pytest.approx(deadline - max(DRAFT_S, DRAFT_ESTIMATES * live.estimate),
                                     abs=1e-6)
    wire.until(draft_at - 0.005)
    assert live.batches == 0  # nothing composed before the draft time
    wire.until(draft_at + 0.005)
    assert live.batches == 1  # the draft, composed (the fake clock stands still meanwhile)
    wire.until(deadline - 0.005)
    assert wire.events() == []  # nothing sent before the deadline
    wire.until(deadline + 0.005)
    assert live.batches == 1  # the draft heard the whole phrase: no model work at the deadline
    first = wire.events()
    assert first[0][0] == pytest.approx(T0 + 8.0, abs=1e-6)  # the bar line, exactly
    assert first[0][1:] == ("/mvae/answer/begin", (first[0][2][0], 4, "echo"))
    assert {at for at, _, _ in first} == {first[0][0]}  # sent now: only the bar line's bundle

    wire.until(T0 + 16.2)
    events = first + wire.events()
    times = [at for at, _, _ in events if at is not None]
    assert len(times) == len(events)  # every message came in a timed bundle
    assert all(on_grid(at, T0) for at in times) and times == sorted(times)
    assert any(address == "/mvae/noteon" for _, address, _ in events)
    assert events[-1][1:] == ("/mvae/answer/end", (first[0][2][0],))
    assert events[-1][0] == pytest.approx(T0 + 16.0, abs=1e-6)
    assert not wire.core.player.is_playing(KEY)  # the answer played once

    client = wire.core.client(KEY)
    np.testing.assert_allclose(client.slots["call"], vae.encode(phrase), atol=1e-6)
    session = wire.core.live.sessions[KEY]
    assert (session.answered, session.dropped, session.failed) == (1, 0, 0)
    assert session.worst_margin >= 0.1  # sent at least one lookahead before the bar line
    assert session.least_spare >= DRAFT_S  # ready from the draft time on
    assert session.drafts_sent == 0 and not session.pending


def partial_and_late(wire: Wire) -> tuple[Melody, float]:
    """Bars 0-3 of a scale played (timetagged) up to step 48, then listened to until just
    after the draft time; then one late note at step 60 (before the deadline). The phrase
    without the late note, and the deadline."""
    phrase = scale_melody()
    early = Melody(tuple(n for n in phrase.notes if n.start < 48), PHRASE)
    wire.play(early, T0)
    deadline = deadline_of_bar_4(wire)
    draft_at = wire.core.live.run_due()
    assert draft_at is not None and draft_at < deadline
    wire.until(draft_at + 0.005)
    assert wire.core.live.batches == 1  # the draft
    wire.send_at(T0 + 60 * STEP, "/mvae/in/noteon", 72, 100)
    wire.send_at(T0 + 62 * STEP, "/mvae/in/noteoff", 72)
    return early, deadline


def test_a_late_note_is_heard_the_answer_is_composed_again(vae: MelodyVAE) -> None:
    wire = listening(vae)
    early, deadline = partial_and_late(wire)
    wire.until(deadline + 0.005)
    assert wire.core.live.batches == 2  # composed again with the late note
    begins = [e for e in wire.events() if e[1] == "/mvae/answer/begin"]
    assert len(begins) == 1 and begins[0][0] == pytest.approx(T0 + 8.0, abs=1e-6)
    heard = Melody((*early.notes, Note(60, 62, 72, 100)), PHRASE)
    np.testing.assert_allclose(wire.core.client(KEY).slots["call"], vae.encode(heard),
                               atol=1e-6)
    session = wire.core.live.sessions[KEY]
    assert (session.answered, session.drafts_sent) == (1, 0)


def test_a_draft_is_sent_when_the_final_answer_would_be_late(vae: MelodyVAE) -> None:
    """A late note changes the call; from the deadline on the model thread is stalled (a
    CPU hog, say) past the last call: the newest ready draft is the answer, on time, and the
    final one is dropped quietly when it comes back."""
    wire = listening(vae)
    early, deadline = partial_and_late(wire)
    wire.until(deadline - 0.05)  # the late note is drafted too, while there is time ...
    wire.send_at(T0 + 62.5 * STEP, "/mvae/in/noteon", 74, 100)  # ... but not this one
    wire.until(deadline, model=False)  # the deadline hands over the final call
    batches = wire.core.live.batches
    assert wire.events() == []
    last_call = T0 + 8.0 - 0.1 - LAST_CALL_S  # after the deadline: the estimate > LAST_CALL_S
    wire.until(last_call - 0.005, model=False)
    assert wire.events() == []  # the final answer is awaited until the last call ...
    wire.until(last_call + 0.005, model=False)
    first = wire.events()  # ... then the draft goes out
    assert first[0][1] == "/mvae/answer/begin" and first[0][0] == pytest.approx(T0 + 8.0,
                                                                                 abs=1e-6)
    heard = Melody((*early.notes, Note(60, 62, 72, 100)), PHRASE)  # without the last note
    np.testing.assert_allclose(wire.core.client(KEY).slots["call"], vae.encode(heard),
                               atol=1e-6)
    wire.until(T0 + 16.2)  # the model thread gets to the final call: too late, ignored
    assert wire.core.live.batches == batches
    events = wire.events()
    assert [e for e in events if e[1] in ("/mvae/error", "/mvae/answer/begin")] == []
    assert events[-1][1] == "/mvae/answer/end"
    session = wire.core.live.sessions[KEY]
    assert (session.answered, session.dropped, session.drafts_sent) == (1, 0, 1)
    assert not session.pending


def test_the_call_is_what_was_played_on_the_grid(vae: MelodyVAE) -> None:
    wire = listening(vae)
    session = wire.core.live.sessions[KEY]

    def at_step(step: float) -> None:
        wire.clock.now = T0 + step * STEP

    at_step(-3)  # before the phrase: not in it
    wire.send("/mvae/in/noteon", 50, 80)
    at_step(-2.5)
    wire.send("/mvae/in/noteoff", 50)
    at_step(0.3)  # arrival times, a little off the grid
    wire.send("/mvae/in/noteon", 60, 100)
    at_step(3.8)
    wire.send("/mvae/in/noteoff", 60)
    at_step(4.2)
    wire.send("/mvae/in/noteon", 62.0, 90.0)  # Pure Data sends floats
    at_step(5.9)
    wire.send("/mvae/in/noteon", 62, 0)  # velocity 0: a note-off
    at_step(60)
    wire.send("/mvae/in/noteon", 67, 70)  # still held at the bar line
    at_step(63.6)
    wire.send("/mvae/in/noteon", 72, 70)  # rounds onto the bar line: the next phrase's

    call = session.call(PHRASE, PHRASE, 16)
    assert call is not None
    assert call.notes == (Note(0, 4, 60, 100), Note(4, 6, 62, 90), Note(60, 64, 67, 70))
    assert call.total_steps == PHRASE and call.qpm == 120.0


def test_silence_is_not_answered(vae: MelodyVAE) -> None:
    wire = listening(vae)
    wire.until(T0 + 8.2)
    assert wire.events() == []
    assert wire.core.live.sessions[KEY].silent == 1
    wire.send("/mvae/answer")
    wire.until(T0 + 10.2)
    assert wire.errors() == ["nothing was played in the 4 bars before bar 5; silence is not "
                             "answered"]


def test_a_setting_changed_after_the_draft_is_heard(vae: MelodyVAE) -> None:
    wire = listening(vae)
    wire.play(scale_melody(), T0)
    deadline = deadline_of_bar_4(wire)
    wire.until(deadline - 0.05)
    live = wire.core.live
    draft = live.sessions[KEY].pending[PHRASE].ready
    assert draft is not None and live.batches == 1
    wire.send("/mvae/answer/amount", 2.0)  # echo further away, asked after the draft
    wire.until(deadline + 0.001)
    assert live.batches == 2  # composed again at the deadline
    answer = wire.core.client(KEY).slots["answer"]
    z_call = wire.core.client(KEY).slots["call"]
    assert np.linalg.norm(answer - z_call) > 2 * np.linalg.norm(draft[1][2] - z_call)


def test_a_composition_lost_on_the_way_is_reported_once(vae: MelodyVAE) -> None:
    wire = listening(vae)
    wire.play(scale_melody(), T0)
    draft_at = wire.core.live.run_due()
    assert draft_at is not None
    wire.until(draft_at + 0.005, model=False)
    wire.core.engine.tasks.jobs.clear()  # the draft's task never runs
    wire.until(T0 + 8.0 + LOST_AFTER_S - 0.01, model=False)
    assert wire.events() == []
    wire.until(T0 + 8.0 + LOST_AFTER_S + 0.01, model=False)
    assert wire.errors() == ["answer for bar 4 dropped: nothing was ready by its bar line"]
    wire.until(T0 + 12.0)
    assert wire.events() == []
    session = wire.core.live.sessions[KEY]
    assert (session.answered, session.dropped) == (0, 1) and not session.pending


def test_an_answer_ready_too_late_is_dropped_with_an_error(vae: MelodyVAE) -> None:
    wire = listening(vae)
    wire.play(scale_melody(), T0)
    draft_at = wire.core.live.run_due()
    assert draft_at is not None
    wire.until(draft_at + 0.005, model=False)  # the draft goes to the model thread ...
    wire.until(T0 + 8.0 - 0.1, model=False)  # (the deadline and the last call pass)
    assert wire.events() == []
    wire.clock.now = T0 + 8.0 - 0.1 + 0.001  # ... which gets to it 1 ms too late
    wire.core.engine.run_pending()
    errors = wire.errors()
    assert len(errors) == 1 and errors[0].startswith("answer for bar 4 dropped: ready 1 ms too "
                                                     "late to be sent 100 ms before its bar")
    wire.until(T0 + 17)
    assert wire.events() == []  # nothing played late
    assert wire.core.live.sessions[KEY].dropped == 1


def test_answer_now_answers_on_the_next_bar_line_it_can_make(vae: MelodyVAE) -> None:
    wire = listening(vae)
    wire.play(scale_melody(bars=2), T0)
    wire.until(T0 + 3.0)  # in bar 1
    wire.send("/mvae/answer")
    wire.until(T0 + 4.0)
    events = wire.events()
    assert events[0][0] == pytest.approx(T0 + 4.0, abs=1e-6)  # bar 2
    assert events[0][1:] == ("/mvae/answer/begin", (events[0][2][0], 2, "echo"))
    call = wire.core.client(KEY).slots["call"]  # the 4 bars before bar 2: silence, then 2 bars
    shifted = Melody(tuple(Note(n.start + 32, n.end + 32, n.pitch, 100)
                           for n in scale_melody(bars=2).notes), PHRASE)
    np.testing.assert_allclose(call, vae.encode(shifted), atol=1e-6)


def test_sync_puts_the_bar_line_on_the_clients_beat(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/tempo", 60.0)  # a beat is 1 s, a phrase 16 s
    wire.send_at(T0 + 0.5, "/mvae/sync", 2.0)  # at T0 + 0.5 the client is on beat 2
    wire.send("/mvae/listen", 1)  # the synced clock stands
    clock = wire.core.live.sessions[KEY].clock
    assert clock.origin == pytest.approx(T0 - 1.5, abs=1e-6)
    assert wire.core.live.sessions[KEY].next_line == PHRASE  # at T0 + 14.5
    wire.play(scale_melody(), T0 - 1.5, step=0.25)
    wire.until(T0 + 14.5)
    begins = [e for e in wire.events() if e[1] == "/mvae/answer/begin"]
    assert len(begins) == 1 and begins[0][0] == pytest.approx(T0 + 14.5, abs=1e-6)


def test_a_tempo_change_keeps_answers_and_clock_on_one_grid(vae: MelodyVAE) -> None:
    wire = listening(vae)
    wire.play(scale_melody(), T0)
    wire.until(T0 + 9.0)  # the first answer plays from T0 + 8
    wire.events()
    wire.send("/mvae/tempo", 240.0)
    clock = wire.core.live.sessions[KEY].clock
    track = wire.core.player.tracks[KEY]
    turn = track.next_step  # the player's first step at the new tempo
    for step in range(turn, turn + 64):
        assert track.time_of(step) == pytest.approx(clock.time_of(step), abs=1e-9)
    for step in range(turn, 2 * PHRASE - 1, 2):  # the rest of the phrase, at 240 qpm
        wire.send_at(clock.time_of(step), "/mvae/in/noteon", 60 + step % 12, 100)
    wire.until(clock.time_of(2 * PHRASE) + 0.1)
    events = wire.events()
    begins = [e for e in events if e[1] == "/mvae/answer/begin"]
    assert len(begins) == 1 and begins[0][0] == pytest.approx(clock.time_of(2 * PHRASE),
                                                               abs=1e-6)
    assert all(on_grid(at, clock.time_of(turn), STEP / 2) for at, _, _ in events
               if at is not None)


def test_a_slower_tempo_after_the_deadline_does_not_answer_a_line_twice(vae: MelodyVAE
                                                                         ) -> None:
    wire = listening(vae)
    wire.play(Melody(tuple(n for n in scale_melody().notes if n.start < 48), PHRASE), T0)
    wire.until(deadline_of_bar_4(wire) - 0.05)  # a draft of the answer is ready ...
    wire.send_at(T0 + 60 * STEP, "/mvae/in/noteon", 72, 100)  # ... when a late note
    wire.clock.now = deadline_of_bar_4(wire)
    wire.core.live.run_due()  # sends the final answer to bar 4 on its way to the model ...
    wire.send("/mvae/tempo", 60.0)  # ... when bar 4, and its deadline, move further ahead
    wire.core.engine.run_pending()
    wire.until(T0 + 9.0)
    begins = [e for e in wire.events() if e[1] == "/mvae/answer/begin"]
    assert [args[1] for _, _, args in begins] == [4]
    assert begins[0][0] == pytest.approx(wire.core.live.sessions[KEY].clock.time_of(PHRASE),
                                         abs=1e-6)


# ------------------------------------------------------------------ settings and errors


def test_modes_and_their_errors(vae: MelodyVAE, vae_axes: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/answer/mode", "contrast")
    assert "attribute vectors" in wire.errors()[0]  # the model has none
    wire.send("/mvae/answer/attribute", "note_density", 1.0)
    assert "attribute vectors" in wire.errors()[0]
    wire.send("/mvae/answer/mode", "loud")
    assert wire.errors() == ["mode must be echo, contrast or blend, not 'loud'"]
    wire.send("/mvae/answer")
    assert wire.errors() == ["not listening; send /mvae/listen 1 first"]
    wire.send("/mvae/answer/amount", -1.0)
    assert "must lie in 0..10" in wire.errors()[0]
    wire.send("/mvae/listen", 1)
    wire.send_at(T0 + 60, "/mvae/in/noteon", 60, 100)
    assert wire.errors() == ["timetag lies +60.0 s from the server's clock (at most 10 s); send "
                             "it outside a bundle to use its arrival"]

    with_axes = Wire(vae_axes)
    with_axes.send("/mvae/answer/mode", "contrast")
    with_axes.send("/mvae/answer/attribute", "loudness", 1.0)
    assert with_axes.errors()[0].startswith("unknown attribute 'loudness'; the model has: "
                                            "note_density, mean_pitch")
    session = with_axes.core.live.sessions[KEY]
    assert (session.mode, session.attribute) == ("contrast", "note_density")  # the default
    with_axes.send("/mvae/answer/mix", 3.0)
    assert session.mix == 1.0  # clamped


def test_notes_count_only_while_listening(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/in/noteon", 60, 100)  # not listening yet: ignored, no error
    assert wire.events() == []
    wire.send("/mvae/listen", 1)
    wire.send("/mvae/in/noteon", 62, 100)
    session = wire.core.live.sessions[KEY]
    assert [n.pitch for n in session.notes] == [62]
    wire.send("/mvae/listen", 0)
    assert not session.notes and not session.listening


# ------------------------------------------------------------------ the player's cue


def test_a_cue_takes_over_a_loop_on_its_bar_line_and_plays_once() -> None:
    sent: list[bytes] = []
    clock = Clock()
    player = Player(lambda data, addr: sent.append(data), clock)
    loop = Melody((Note(12, 20, 60),), 32)  # held across the bar line at 16
    player.play(KEY, 120.0, 0.0, loop)

    def advance(to: float) -> None:
        while clock.now < to:
            clock.now = min(to, clock.now + 0.01)
            player.tick()

    advance(T0 + 13 * STEP)
    sent.clear()
    answer = Melody((Note(2, 4, 72),), 16)

    late = player.cue(KEY, answer, T0, 120.0, 16, lookahead=3 * STEP + 0.01)
    assert late is None and not sent  # refused: nothing changed
    head, tail = encode_message("/head", "", []), encode_message("/tail", "", [])
    assert player.cue(KEY, answer, T0, 120.0, 16, 0.1, [head], [tail]) == clock.now
    player.offer(KEY, loop)  # ignored while the answer plays
    advance(T0 + 40 * STEP)
    got = [(timetag_seconds(data[8:16]), [m.address for m in parse_packet(data)
                                          if isinstance(m, Message)]) for data in sent]
    assert got == [
        (pytest.approx(T0 + 16 * STEP, abs=1e-6), ["/mvae/noteoff", "/head"]),  # cut there
        (pytest.approx(T0 + 18 * STEP, abs=1e-6), ["/mvae/noteon"]),
        (pytest.approx(T0 + 20 * STEP, abs=1e-6), ["/mvae/noteoff"]),
        (pytest.approx(T0 + 32 * STEP, abs=1e-6), ["/tail"]),
    ]
    assert not player.is_playing(KEY)


# ------------------------------------------------------------------ the scripted performer


class Performer:
    """One client over UDP: sends with exact timetags, records everything it receives."""

    def __init__(self, port: int) -> None:
        self.target = ("127.0.0.1", port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(0.1)
        self.received: list[tuple[float, bytes]] = []  # (arrival, datagram)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            self.received.append((time.time(), data))

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()

    def events(self) -> list[tuple[float, float | None, str, tuple[Any, ...]]]:
        """(arrival, timetag, address, args) of everything received."""
        out = []
        for arrival, data in self.received:
            at = timetag_seconds(data[8:16]) if data.startswith(b"#bundle") else None
            for item in parse_packet(data):
                assert isinstance(item, Message)
                out.append((arrival, at, item.address, item.args))
        return out


MODES: dict[str, list[tuple[Any, ...]]] = {  # mode -> its settings
    "echo": [("/mvae/answer/amount", 0.3)],
    "contrast": [("/mvae/answer/attribute", "note_density", 1.0)],
    "blend": [("/mvae/answer/mix", 0.5)],
}


def perform(vae: MelodyVAE) -> tuple[float, dict[str, Performer], dict[str, Any]]:
    """Three performers at once, one per mode, each plays a 4-bar phrase (a transposed
    scale) at 120 qpm into a server in this process, its notes timetagged and sent 0.3 s
    ahead; then asks for its stats. Bar 0's time, the performers (closed, with what they
    received) and each mode's live session on the server."""
    with OscServer(vae, port=0) as server:
        performers = {mode: Performer(server.port) for mode in MODES}
        try:
            origin = time.time() + 1.0  # bar 0, when the performers start playing
            for mode, performer in performers.items():
                performer.send(osc("/mvae/tempo", 120.0).dgram)
                performer.send(bundle(origin, osc("/mvae/sync", 0.0)))
                performer.send(osc("/mvae/listen", 1).dgram)
                performer.send(osc("/mvae/answer/mode", mode).dgram)
                for address, *values in MODES[mode]:
                    performer.send(osc(address, *values).dgram)
            script = []  # (time, performer, datagram)
            for k, performer in enumerate(performers.values()):
                for note in scale_melody().transpose(3 * k).notes:
                    start, end = origin + note.start * STEP, origin + note.end * STEP - 0.02
                    script.append((start, performer, bundle(start, osc("/mvae/in/noteon",
                                                                       note.pitch, 100))))
                    script.append((end, performer, bundle(end, osc("/mvae/in/noteoff",
                                                                   note.pitch))))
            for at, performer, data in sorted(script, key=lambda item: item[0]):
                time.sleep(max(0.0, at - 0.3 - time.time()))  # played ahead, timetagged
                performer.send(data)
            deadline = origin + 16.0 + 2.0
            while time.time() < deadline and not all(
                    any(b"/mvae/answer/end" in d for _, d in p.received)
                    for p in performers.values()):
                time.sleep(0.1)
            for performer in performers.values():
                performer.send(osc("/mvae/answer/stats").dgram)
            time.sleep(0.3)
            with server.core.lock:
                sessions = {mode: server.core.live.sessions[
                    ("127.0.0.1", performer.sock.getsockname()[1])]
                    for mode, performer in performers.items()}
        finally:
            for performer in performers.values():
                performer.close()
    return origin, performers, sessions


def check_answers(origin: float, performers: dict[str, Performer]) -> None:
    """Each answer starts on bar 4, exactly where the phrase ended, on the 16th grid, sent
    at least the lookahead before it; no errors, none dropped."""
    bar_line = origin + 8.0
    for mode, performer in performers.items():
        events = performer.events()
        assert [e for e in events if e[2] == "/mvae/error"] == [], mode
        played = [(arrival, at, address, args) for arrival, at, address, args in events
                  if at is not None]  # (timetagged: playback)
        assert played, f"{mode}: no answer"
        arrival, first, address, args = played[0]
        assert address == "/mvae/answer/begin" and args[1:] == (4, mode), mode
        assert first == pytest.approx(bar_line, abs=1e-5), mode  # where the phrase ended
        assert arrival < bar_line, mode
        assert all(on_grid(at, origin) for _, at, _, _ in played), mode
        assert all(bar_line - 1e-5 < at < bar_line + 8.0 + 1e-5 for _, at, _, _ in played)
        notes = [e for e in played if e[2] == "/mvae/noteon"]
        assert len(notes) >= 1, mode
        assert played[-1][2] == "/mvae/answer/end", mode
        assert played[-1][1] == pytest.approx(bar_line + 8.0, abs=1e-5), mode
        stats = [e[3] for e in events if e[2] == "/mvae/answer/stats"]
        answered, dropped, _, failed, _, worst_ms = stats[0]
        assert (answered, dropped, failed) == (1, 0, 0), mode
        assert worst_ms >= 100.0, mode  # sent at least the lookahead before its bar line


def test_a_scripted_performer_gets_answers_on_the_bar_line_in_every_mode(
        vae_axes: MelodyVAE) -> None:
    origin, performers, _ = perform(vae_axes)
    check_answers(origin, performers)


@pytest.fixture
def cpu_hogs() -> Any:
    """Two processes that spin on the CPU (as many as this machine's cores), for the test."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(2)]
    try:
        yield hogs
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_answers_are_ready_before_their_lookahead_beside_cpu_hogs(
        vae_axes: MelodyVAE, cpu_hogs: list[subprocess.Popen[bytes]]) -> None:
    """The same three performers with two CPU hogs running: each answer is composed while
    its phrase is played, so it is ready before its lookahead (here: before its deadline,
    with the whole phrase heard), not dropped."""
    origin, performers, sessions = perform(vae_axes)
    assert all(hog.poll() is None for hog in cpu_hogs)  # they spun all along
    check_answers(origin, performers)
    for mode, session in sessions.items():
        assert session.least_spare > 0, mode  # ready before it had to be sent
        assert session.drafts_sent == 0, mode  # and it heard the whole phrase


# ------------------------------------------------------------------ Pure Data


PD_DRIVER = """#N canvas 0 0 450 300 12;
#X obj 10 10 loadbang;
#X obj 10 40 delay 300;
#X msg 10 70 \\; mvae-connect disconnect \\; mvae-connect connect 127.0.0.1 {port} \\; \
mvae-tempo 300 \\; mvae-mode echo;
#X obj 10 100 delay 300;
#X obj 10 130 t b b;
#X msg 200 160 \\; mvae-start 1;
#X obj 10 160 metro 200;
#X obj 10 190 f;
#X obj 50 190 + 1;
#X obj 10 220 moses 16;
#X obj 10 250 expr 60 + ($f1 % 5) * 2;
#X obj 10 280 t f f;
#X obj 10 310 list append 100;
#X obj 100 310 pipe 150;
#X obj 100 340 list append 0;
#X obj 10 370 s mvae-note;
#X obj 200 220 delay 4800;
#X msg 200 250 \\; mvae-start 0 \\; pd quit;
#X connect 0 0 1 0;
#X connect 1 0 2 0;
#X connect 1 0 3 0;
#X connect 3 0 4 0;
#X connect 4 1 5 0;
#X connect 4 0 6 0;
#X connect 4 0 16 0;
#X connect 6 0 7 0;
#X connect 7 0 8 0;
#X connect 8 0 7 1;
#X connect 7 0 9 0;
#X connect 9 0 10 0;
#X connect 10 0 11 0;
#X connect 11 0 12 0;
#X connect 11 1 13 0;
#X connect 13 0 14 0;
#X connect 12 0 15 0;
#X connect 14 0 15 0;
#X connect 16 0 17 0;
"""


@pytest.mark.skipif(shutil.which("pd") is None, reason="Pure Data (puredata-core) not installed")
def test_the_pd_improvise_patch_gets_an_answer(vae: MelodyVAE, tmp_path: Path) -> None:
    """improvise.pd headless: a driver plays 16 quarter notes at 300 qpm into its
    keyboard input; the answer begins on bar 4 (Pd sends without timetags: arrival times)."""
    driver = tmp_path / "driver.pd"
    with OscServer(vae, port=0) as server:
        driver.write_text(PD_DRIVER.format(port=server.port))
        result = subprocess.run(
            ["pd", "-nogui", "-noaudio", "-nomidi", "-stderr",
             "-open", str(ROOT / "examples" / "pd" / "improvise.pd"), "-open", str(driver)],
            capture_output=True, text=True, timeout=30)
        sessions = list(server.core.live.sessions.values())
    out = result.stdout + result.stderr
    assert "couldn't create" not in out and "connection failed" not in out, out
    assert re.search(r"answer: begin \d+ 4 echo", out), out
    assert len(sessions) == 1 and sessions[0].answered == 1, out
    assert sessions[0].clock.qpm == 300.0
    assert math.isfinite(sessions[0].worst_margin) and sessions[0].worst_margin >= 0.1
