"""The melody representation: monophonic notes on a 16th-note grid, and its tokens.

A :class:`Melody` holds notes as integer steps on a grid of ``steps_per_quarter`` steps
per quarter note (4: sixteenth notes). Tokens follow MusicVAE's melody encoding, shifted
to be non-negative so they index an embedding directly:

* ``0`` (:data:`HOLD`) - no event: the sounding note (or silence) continues;
* ``1`` (:data:`REST`) - note-off: silence from this step on;
* ``2 + (pitch - 21)`` - note-on for MIDI pitches 21..108 (piano range).

That makes :data:`VOCAB_SIZE` = 90 classes. Pitches outside the range are folded by
octaves into it; :func:`to_tokens` reports how many were folded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from melodyvae.errors import MelodyVAEError

HOLD = 0
REST = 1
MIN_PITCH = 21
MAX_PITCH = 108
NOTE_OFFSET = 2 - MIN_PITCH  # token = pitch + NOTE_OFFSET
VOCAB_SIZE = 2 + MAX_PITCH - MIN_PITCH + 1  # 90
STEPS_PER_QUARTER = 4  # the 16th-note grid
DEFAULT_VELOCITY = 90


class MelodyError(MelodyVAEError, ValueError):
    """A melody or a token sequence that breaks the representation's rules."""


@dataclass(frozen=True, order=True)
class Note:
    """One note on the grid."""

    start: int  # first step the note sounds, >= 0
    end: int  # first step after the note, > start
    pitch: int  # MIDI pitch, 0..127
    velocity: int = DEFAULT_VELOCITY  # MIDI velocity, 1..127

    @property
    def duration(self) -> int:
        return self.end - self.start


def steps_per_bar_for(numerator: int, denominator: int, steps_per_quarter: int = 4) -> int:
    """Steps in one bar of the meter ``numerator/denominator`` (3/4 -> 12, 6/8 -> 12)."""
    steps = numerator * steps_per_quarter * 4 / denominator
    if steps != int(steps) or steps <= 0:
        raise MelodyError(f"meter {numerator}/{denominator} does not fit a 16th-note grid")
    return int(steps)


@dataclass(frozen=True)
class Melody:
    """A monophonic melody on a 16th-note grid.

    ``notes`` are sorted and never overlap; ``total_steps`` covers them all. ``qpm`` is the
    tempo in quarter notes per minute and ``time_signature`` the meter the melody came with.
    """

    notes: tuple[Note, ...]
    total_steps: int  # length in grid steps (may extend past the last note: trailing rest)
    steps_per_bar: int = 16  # grid steps per bar
    qpm: float = 120.0  # tempo, quarter notes per minute
    time_signature: tuple[int, int] = (4, 4)  # numerator, denominator
    steps_per_quarter: int = STEPS_PER_QUARTER  # grid resolution

    def __post_init__(self) -> None:
        notes = tuple(sorted(self.notes))
        object.__setattr__(self, "notes", notes)
        previous_end = 0
        for note in notes:
            if note.start < 0 or note.end <= note.start:
                raise MelodyError(f"note {note} has an empty or negative span")
            if note.start < previous_end:
                raise MelodyError(f"note {note} overlaps the note before it: not monophonic")
            if not 0 <= note.pitch <= 127:
                raise MelodyError(f"note {note} has pitch outside MIDI 0..127")
            previous_end = note.end
        if self.total_steps < previous_end:
            raise MelodyError(f"total_steps {self.total_steps} ends before the last note")
        if self.steps_per_bar <= 0 or self.qpm <= 0:
            raise MelodyError("steps_per_bar and qpm must be positive")

    @property
    def n_bars(self) -> int:
        """Bars the melody spans, counting a partial last bar."""
        return -(-self.total_steps // self.steps_per_bar)

    @property
    def seconds_per_step(self) -> float:
        return 60.0 / self.qpm / self.steps_per_quarter

    def steps_to_beats(self, steps: float) -> float:
        """Grid steps to quarter-note beats."""
        return steps / self.steps_per_quarter

    def window(self, start: int, length: int) -> Melody:
        """The steps ``[start, start + length)`` as a melody of its own.

        Notes that began before ``start`` are left out (the window opens with silence);
        notes that run past the end are cut at it.
        """
        kept = [
            dataclasses.replace(n, start=n.start - start, end=min(n.end, start + length) - start)
            for n in self.notes
            if start <= n.start < start + length
        ]
        return dataclasses.replace(self, notes=tuple(kept), total_steps=length)

    def transpose(self, semitones: int) -> Melody:
        notes = tuple(dataclasses.replace(n, pitch=n.pitch + semitones) for n in self.notes)
        return dataclasses.replace(self, notes=notes)


def fold_pitch(pitch: int) -> int:
    """Move ``pitch`` by whole octaves into MIN_PITCH..MAX_PITCH."""
    while pitch < MIN_PITCH:
        pitch += 12
    while pitch > MAX_PITCH:
        pitch -= 12
    return pitch


def to_tokens(melody: Melody) -> tuple[np.ndarray, int]:
    """Encode ``melody`` as one token per step.

    Returns ``(tokens, n_folded)``: an int64 array of length ``melody.total_steps`` and the
    number of notes whose pitch was folded by octaves into the piano range.
    """
    tokens = np.full(melody.total_steps, HOLD, dtype=np.int64)
    if melody.total_steps:
        tokens[0] = REST  # silence until the first note-on
    n_folded = 0
    notes = melody.notes
    for i, note in enumerate(notes):
        pitch = fold_pitch(note.pitch)
        n_folded += pitch != note.pitch
        tokens[note.start] = pitch + NOTE_OFFSET
        next_start = notes[i + 1].start if i + 1 < len(notes) else melody.total_steps
        if note.end < next_start:
            tokens[note.end] = REST
    return tokens, n_folded


def from_tokens(
    tokens: Sequence[int] | np.ndarray,
    steps_per_bar: int = 16,
    qpm: float = 120.0,
    time_signature: tuple[int, int] = (4, 4),
    velocity: int = DEFAULT_VELOCITY,
) -> Melody:
    """Decode a token sequence into a :class:`Melody` (the inverse of :func:`to_tokens`).

    A leading :data:`HOLD` with nothing sounding is silence.
    """
    array = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if array.size and (array.min() < 0 or array.max() >= VOCAB_SIZE):
        raise MelodyError(f"tokens must lie in 0..{VOCAB_SIZE - 1}")
    notes: list[Note] = []
    current: tuple[int, int] | None = None  # (start, pitch) of the sounding note
    for step, token in enumerate(array.tolist()):
        if token == HOLD:
            continue
        if current is not None:
            notes.append(Note(current[0], step, current[1], velocity))
            current = None
        if token != REST:
            current = (step, token - NOTE_OFFSET)
    if current is not None:
        notes.append(Note(current[0], len(array), current[1], velocity))
    return Melody(tuple(notes), len(array), steps_per_bar, qpm, time_signature)


def from_note_list(
    notes: Iterable[tuple[int, float, float]],
    total_steps: int,
    steps_per_bar: int = 16,
    qpm: float = 120.0,
    velocity: int = DEFAULT_VELOCITY,
) -> Melody:
    """Build a melody from ``(pitch, start_beat, duration_beats)`` triples.

    Beats are quarter notes; they are rounded to the grid. Where notes overlap the later
    onset wins (a note is cut where the next begins), so the result is monophonic.
    Notes that fall outside ``total_steps`` are dropped.
    """
    grid: dict[int, tuple[int, int]] = {}
    for pitch, start_beat, duration_beats in notes:
        start = round(start_beat * STEPS_PER_QUARTER)
        end = max(start + 1, round((start_beat + duration_beats) * STEPS_PER_QUARTER))
        if 0 <= start < total_steps:
            previous = grid.get(start)
            if previous is None or pitch > previous[0]:
                grid[start] = (int(pitch), min(end, total_steps))
    return monophonic(
        [Note(s, e, p, velocity) for s, (p, e) in grid.items()], total_steps, steps_per_bar, qpm
    )


def monophonic(
    notes: Iterable[Note],
    total_steps: int,
    steps_per_bar: int = 16,
    qpm: float = 120.0,
    time_signature: tuple[int, int] = (4, 4),
) -> Melody:
    """Reduce possibly overlapping grid notes to one line.

    At each onset step the highest note wins; a kept note ends where the next kept note
    begins (or at its own end, if earlier).
    """
    by_onset: dict[int, Note] = {}
    for note in notes:
        if note.end <= note.start:
            note = dataclasses.replace(note, end=note.start + 1)
        kept = by_onset.get(note.start)
        if kept is None or note.pitch > kept.pitch:
            by_onset[note.start] = note
    ordered = [by_onset[s] for s in sorted(by_onset)]
    line: list[Note] = []
    for i, note in enumerate(ordered):
        end = note.end if i + 1 == len(ordered) else min(note.end, ordered[i + 1].start)
        line.append(dataclasses.replace(note, end=end))
    last_end = line[-1].end if line else 0
    return Melody(tuple(line), max(total_steps, last_end), steps_per_bar, qpm, time_signature)
