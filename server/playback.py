"""Playback at tempo: each client's current melody in a loop, as timetagged note bundles.

A tempo clock maps absolute grid steps to Unix times (``origin + step * seconds_per_step``).
A scheduler thread sends every step whose time falls within the lookahead as one bundle
(``/mvae/noteoff i pitch`` before ``/mvae/noteon i pitch i velocity``) whose timetag is
that step's exact time, so a receiver that honours timetags plays it without jitter. A new
melody waits for the first bar line not yet scheduled and takes over at the same bar
position: morphs land in time. A tempo change keeps the next unscheduled step's time and
stretches everything after it.

A live answer is *cued* (:meth:`Player.cue`): it plays once, its first step exactly on a
given bar line of the listener's clock, taking over from whatever played before; the
bundle for that bar line is sent at once, so a cue accepted is a bar line sent at least one
lookahead early. A cue that comes too late for that is refused.

A stream ends by itself when its client has sent nothing for the lease (every message
refreshes it, :meth:`Player.touch`), and the server ends it at once when its destination
answers "port unreachable" (:meth:`Player.stop` without a note-off).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from melodyvae.melody import STEPS_PER_QUARTER, Melody, Note
from melodyvae.server.protocol import PREFIX, encode_bundle, encode_message
from melodyvae.server.state import Addr
from melodyvae.server.worker import Worker

# (client, absolute step, Unix time, [(pitch, velocity), ...]); velocity 0 is a note-off
NoteTap = Callable[[Addr, int, float, Sequence[tuple[int, int]]], None]

_LOGGER = logging.getLogger(__name__)

MAX_LATE = 1.0  # seconds behind schedule after which the clock is re-anchored to now
MIN_WAKE, MAX_WAKE = 0.002, 0.02  # seconds between scheduler passes while playing
SAME_TIME = 1e-6  # seconds: step times closer than this are the same instant


def note_on(pitch: int, velocity: int) -> bytes:
    return encode_message(f"{PREFIX}/noteon", "ii", [pitch, velocity])


def note_off(pitch: int) -> bytes:
    return encode_message(f"{PREFIX}/noteoff", "i", [pitch])


@dataclass
class Track:
    """One client's loop."""

    key: Addr
    qpm: float  # tempo, quarter notes per minute
    lookahead: float  # seconds
    melody: Melody | None = None  # what plays now (None: waiting for the first melody)
    pending: Melody | None = None  # takes over at the next unscheduled bar line
    origin: float = 0.0  # Unix time of absolute step 0
    next_step: int = 0  # first absolute step not yet scheduled
    loop_start: int = 0  # absolute step where the current melody's step 0 last fell
    sounding: tuple[int, int] | None = None  # (pitch, absolute end step) of the last note-on
    starts: dict[int, Note] = field(default_factory=dict)  # the melody's notes by onset step
    once: bool = False  # a cued answer: plays its melody once, then the track ends
    heard: float = 0.0  # Unix time of the client's last message (the lease runs from it)
    tail: list[bytes] = field(default_factory=list)  # messages sent where a cued answer ends

    @property
    def seconds_per_step(self) -> float:
        return 60.0 / self.qpm / STEPS_PER_QUARTER

    def time_of(self, step: int) -> float:
        return self.origin + step * self.seconds_per_step

    def begin(self, melody: Melody, now: float) -> None:
        self._use(melody)
        self.origin = now + self.lookahead
        self.next_step = self.loop_start = 0

    def _use(self, melody: Melody) -> None:
        self.melody = melody
        self.starts = {note.start: note for note in melody.notes}


class Player(Worker):
    """The scheduler for every playing client (bounded by the client table), on its own
    thread."""

    thread_name = "mvae-playback"

    def __init__(self, send: Callable[[bytes, Addr], None],
                 clock: Callable[[], float] = time.time, lease: float | None = None,
                 on_expired: Callable[[Addr], None] | None = None) -> None:
        self.send = send
        self.clock = clock  # Unix seconds; timetags are absolute times
        self.lease = lease  # seconds a track plays without touch(); None: for ever
        self.on_expired = on_expired
        self.tracks: dict[Addr, Track] = {}
        self.lock = threading.Lock()
        self.note_tap: NoteTap | None = None  # also told every note sent (MIDI output);
        # called with the lock held: it must not call back into the player
        super().__init__(threading.Condition(self.lock))

    # ------------------------------------------------------------ control (any thread)
    def play(self, key: Addr, qpm: float, lookahead: float, melody: Melody | None) -> None:
        """Start looping ``melody`` one lookahead from now (or the next one offered)."""
        with self.lock:
            if key in self.tracks:
                return
            track = Track(key, qpm, lookahead, heard=self.clock())
            if melody is not None:
                track.begin(melody, self.clock())
            self.tracks[key] = track
        self._poke()

    def offer(self, key: Addr, melody: Melody) -> None:
        """A new melody for a playing client: it takes over at the next bar line.

        Ignored while a cued answer plays: answers are not interrupted by other melodies.
        """
        with self.lock:
            track = self.tracks.get(key)
            if track is None or track.once:
                return
            if track.melody is None:
                track.begin(melody, self.clock())
            else:
                track.pending = melody
        self._poke()

    def touch(self, key: Addr) -> None:
        """The client was heard from: its stream's lease starts again."""
        with self.lock:
            track = self.tracks.get(key)
            if track is not None:
                track.heard = self.clock()

    def streams(self) -> int:
        """Tracks playing now."""
        with self.lock:
            return len(self.tracks)

    def stop(self, key: Addr, release: bool = True) -> bool:
        """Stop a client's loop; a sounding note is released after what was scheduled
        (over OSC unless ``release`` is false: nobody listens there; on the note tap
        always)."""
        with self.lock:
            track = self.tracks.pop(key, None)
            if track is None:
                return False
            if track.sounding is not None:
                at = max(track.time_of(track.next_step), self.clock())
                self._tap(key, track.next_step, at, [(track.sounding[0], 0)])
                if release:
                    self._send(key, encode_bundle([note_off(track.sounding[0])], at))
        return True

    def play_from(self, key: Addr, melody: Melody, origin: float, qpm: float, start: int,
                  lookahead: float) -> None:
        """Loop ``melody`` from step ``start`` (a bar line) of the clock ``origin + step *
        60 / qpm / 4``: an outside clock's grid (a host's MIDI clock). Whatever the client
        played stops first."""
        self.stop(key)
        with self.lock:
            track = Track(key, qpm, lookahead, heard=self.clock())
            track._use(melody)
            track.origin, track.next_step, track.loop_start = origin, start, start
            self.tracks[key] = track
        self._poke()

    def follow(self, key: Addr, origin: float, qpm: float) -> None:
        """Put a client's unscheduled steps on the clock ``origin + step * 60 / qpm / 4``
        (an outside clock's latest estimate; its steps keep their numbers)."""
        with self.lock:
            track = self.tracks.get(key)
            if track is not None and track.melody is not None:
                track.origin, track.qpm = origin, qpm
        self._poke()

    def set_tempo(self, key: Addr, qpm: float) -> tuple[int, float] | None:
        """Change a client's tempo from its next unscheduled step on.

        For a cued answer, whose steps are the listener clock's, returns that step and its
        time, so the clock can turn at the same point; otherwise None.
        """
        with self.lock:
            track = self.tracks.get(key)
            if track is None:
                return None
            if track.melody is None:
                track.qpm = qpm
                return None
            keep = track.time_of(track.next_step)
            track.qpm = qpm
            track.origin = keep - track.next_step * track.seconds_per_step
            return (track.next_step, keep) if track.once else None

    def set_lookahead(self, key: Addr, seconds: float) -> None:
        with self.lock:
            track = self.tracks.get(key)
            if track is not None:
                track.lookahead = seconds

    def is_playing(self, key: Addr) -> bool:
        with self.lock:
            return key in self.tracks

    def cue(self, key: Addr, melody: Melody, origin: float, qpm: float, start: int,
            lookahead: float, head: Sequence[bytes] = (), tail: Sequence[bytes] = ()
            ) -> float | None:
        """Play ``melody`` once from step ``start`` of the clock ``origin + step * 60 / qpm
        / 4`` (a bar line), cutting whatever plays there; send that bar line's bundle now.

        ``head`` goes into the bar line's bundle (after the note-off of a cut note, before
        the first note-on), ``tail`` into the bundle where the melody ends. Returns the
        time the bar line's bundle was sent, or None — and nothing changes — when that
        would be later than one ``lookahead`` before the bar line.
        """
        with self.lock:
            now = self.clock()
            seconds_per_step = 60.0 / qpm / STEPS_PER_QUARTER
            at = origin + start * seconds_per_step
            if now > at - lookahead:
                return None
            track = self.tracks.get(key)
            if track is None:
                track = self.tracks[key] = Track(key, qpm, lookahead, heard=now)
            prefix: list[bytes] = []
            if track.melody is not None:
                self._schedule(track, now)  # catch up first (re-anchors if far behind)
                while (track.melody is not None
                       and track.time_of(track.next_step) < at - SAME_TIME):
                    self._schedule_step(track)  # what plays before the bar line, early
                if track.once and track.melody is not None:
                    prefix.extend(track.tail)  # an answer cut short by this one
            track.qpm, track.lookahead, track.origin = qpm, lookahead, origin
            track.next_step = track.loop_start = start
            track.pending = None
            track.once, track.tail = True, list(tail)
            track._use(melody)
            self._schedule_step(track, [*prefix, *head], cut=True)
            sent = self.clock()
        self._poke()
        return sent

    # ------------------------------------------------------------ scheduling
    def tick(self, now: float | None = None) -> int:
        """Send every step due before ``now + lookahead``; the number of bundles sent."""
        now = self.clock() if now is None else now
        sent = 0
        expired = []
        if self.lease is not None:
            with self.lock:
                expired = [k for k, t in self.tracks.items() if now - t.heard > self.lease]
        for key in expired:
            if self.stop(key) and self.on_expired is not None:
                self.on_expired(key)
        with self.lock:
            for track in self.tracks.values():
                sent += self._schedule(track, now)
            for key in [k for k, t in self.tracks.items() if t.once and t.melody is None]:
                del self.tracks[key]  # a cued answer that has ended
        return sent

    def _schedule(self, track: Track, now: float) -> int:
        if track.melody is None:
            return 0
        if track.time_of(track.next_step) < now - MAX_LATE:
            _LOGGER.warning("playback for %s fell %.1f s behind; re-anchoring", track.key,
                            now - track.time_of(track.next_step))
            track.origin = now + track.lookahead - track.next_step * track.seconds_per_step
        sent = 0
        horizon = now + track.lookahead
        while track.melody is not None and track.time_of(track.next_step) <= horizon:
            sent += self._schedule_step(track)
        return sent

    def _schedule_step(self, track: Track, head: Sequence[bytes] = (),
                       cut: bool = False) -> int:
        assert track.melody is not None
        step = track.next_step
        track.next_step += 1
        position = step - track.loop_start
        if track.once and position >= track.melody.total_steps:  # a cued answer ends
            messages = [] if track.sounding is None else [note_off(track.sounding[0])]
            if track.sounding is not None:
                self._tap(track.key, step, track.time_of(step), [(track.sounding[0], 0)])
            track.sounding = None
            track.melody = None
            messages.extend(track.tail)
            if messages:
                self._send(track.key, encode_bundle(messages, track.time_of(step)))
            return 1 if messages else 0
        swapped = cut
        if track.pending is not None and position % track.melody.steps_per_bar == 0:
            if track.pending.total_steps != track.melody.total_steps:
                track.loop_start, position = step, 0
            track._use(track.pending)
            track.pending = None
            swapped = True
        melody = track.melody
        local = position % melody.total_steps
        note = track.starts.get(local)
        messages = []
        notes: list[tuple[int, int]] = []
        if track.sounding is not None and (
                track.sounding[1] <= step or note is not None or swapped):
            messages.append(note_off(track.sounding[0]))
            notes.append((track.sounding[0], 0))
            track.sounding = None
        messages.extend(head)
        if note is not None:
            messages.append(note_on(note.pitch, note.velocity))
            notes.append((note.pitch, note.velocity))
            length = min(note.end, melody.total_steps) - local
            track.sounding = (note.pitch, step + length)
        if not messages:
            return 0
        if notes:
            self._tap(track.key, step, track.time_of(step), notes)
        self._send(track.key, encode_bundle(messages, track.time_of(step)))
        return 1

    def _tap(self, key: Addr, step: int, at: float, notes: Sequence[tuple[int, int]]) -> None:
        if self.note_tap is None:
            return
        try:
            self.note_tap(key, step, at, notes)
        except Exception:  # the MIDI side must not stop playback
            _LOGGER.exception("the note tap failed")

    def _send(self, key: Addr, data: bytes) -> None:
        try:
            self.send(data, key)
        except OSError as e:
            _LOGGER.warning("playback to %s failed: %s", key, e)

    # ------------------------------------------------------------ thread
    def wait_seconds(self) -> float | None:
        """A scheduler pass a quarter step apart while anything plays (``cond`` held)."""
        if not self.tracks:
            return None
        shortest = min(t.seconds_per_step for t in self.tracks.values())
        return min(MAX_WAKE, max(MIN_WAKE, shortest / 4))

    def run_pending(self) -> int:
        return self.tick()

    def _poke(self) -> None:
        with self.cond:
            self.poke()

    def close(self, timeout: float = 2.0) -> None:
        for key in list(self.tracks):
            self.stop(key)
        super().close(timeout)
