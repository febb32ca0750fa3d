"""MIDI in and out through pretty_midi, and the rule that picks the melodic line.

Reading quantizes on the file's own beat grid: a note's position in quarter notes is its
MIDI tick divided by the file's resolution, so tempo changes are honoured exactly, and it
is rounded to the 16th-note grid. The meter is the file's first time signature.

Which line is the melody (unless a track is named): among the non-drum instruments, each
is reduced to one line (at each onset the highest note wins; a note ends where the next
begins) and the instrument whose line has the most notes is taken; a tie goes to the
earlier instrument.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pretty_midi

from melodyvae.errors import MelodyVAEError
from melodyvae.limits import MAX_MIDI_BYTES, FileRefusedError, TooLargeError, read_midi_bytes
from melodyvae.melody import (
    STEPS_PER_QUARTER,
    Melody,
    MelodyError,
    Note,
    monophonic,
    steps_per_bar_for,
)

_LOGGER = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi", ".kar", ".smf")  # Standard MIDI File name endings


class MidiError(MelodyVAEError, ValueError):
    """A MIDI file that cannot give a melody."""


class NotMidiError(MidiError):
    """The file is missing, unreadable or not a Standard MIDI File."""


class EmptyMidiError(MidiError):
    """The file holds no pitched notes."""


class DrumsOnlyError(MidiError):
    """The file's only notes are on drum tracks."""


@dataclass(frozen=True)
class MidiInfo:
    """What was learned reading a file, beside the melody itself."""

    track: int  # index into the file's instruments of the line taken
    n_tracks: int  # instruments in the file
    time_signature_changes: int  # changes after the first (the first meter is kept)
    tempo_changes: int  # tempo changes after the first tempo (honoured when quantizing)


class MidiTooLargeError(NotMidiError):
    """A file over the MIDI size limit (refused before it is read)."""


def load_pretty_midi(path: str | os.PathLike[str], *, max_bytes: int = MAX_MIDI_BYTES,
                     root: str | os.PathLike[str] | None = None,
                     follow_links: bool = True) -> pretty_midi.PrettyMIDI:
    """Parse a MIDI file, turning every parse failure into :class:`NotMidiError`.

    The file is opened and checked first (:func:`melodyvae.limits.read_midi_bytes`): a
    regular file of at most ``max_bytes`` (inside ``root`` when given, not a link when
    ``follow_links`` is false) starting with ``MThd``.
    """
    path = Path(path)
    try:
        data = read_midi_bytes(path, root=root, follow_links=follow_links, max_bytes=max_bytes)
    except TooLargeError as e:
        raise MidiTooLargeError(str(e)) from e
    except FileRefusedError as e:
        raise NotMidiError(str(e)) from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pretty_midi.PrettyMIDI(io.BytesIO(data))
    except Exception as e:  # mido and pretty_midi raise many kinds on broken files
        raise NotMidiError(f"{path}: broken MIDI file ({type(e).__name__}: {e})") from e


def read_midi(
    path: str | os.PathLike[str], track: int | None = None, *,
    max_bytes: int = MAX_MIDI_BYTES, root: str | os.PathLike[str] | None = None,
    follow_links: bool = True,
) -> tuple[Melody, MidiInfo]:
    """Read the melodic line of a MIDI file as a :class:`Melody`.

    ``track`` is an index into the file's instruments (as pretty_midi lists them, from 0);
    ``None`` picks the line by the rule in this module's docstring. The file limits are
    :func:`load_pretty_midi`'s.
    """
    pm = load_pretty_midi(path, max_bytes=max_bytes, root=root, follow_links=follow_links)
    return melody_from_pretty_midi(pm, track, name=str(path))


def _quantize(pm: pretty_midi.PrettyMIDI, seconds: float) -> int:
    quarters = pm.time_to_tick(seconds) / pm.resolution
    return round(quarters * STEPS_PER_QUARTER)


def melody_from_pretty_midi(
    pm: pretty_midi.PrettyMIDI, track: int | None = None, name: str = "<midi>"
) -> tuple[Melody, MidiInfo]:
    instruments = pm.instruments
    if track is not None:
        if not 0 <= track < len(instruments):
            raise MidiError(f"{name}: no track {track} (the file has {len(instruments)})")
        candidates = [track]
    else:
        candidates = [i for i, inst in enumerate(instruments) if not inst.is_drum and inst.notes]
        if not candidates:
            if any(inst.notes for inst in instruments):
                raise DrumsOnlyError(f"{name}: only drum tracks, no melody to take")
            raise EmptyMidiError(f"{name}: no notes")

    if pm.time_signature_changes:
        ts = pm.time_signature_changes[0]
        meter = (ts.numerator, ts.denominator)
    else:
        meter = (4, 4)
    try:
        steps_per_bar = steps_per_bar_for(*meter)
    except MelodyError as e:
        raise MidiError(f"{name}: {e}") from e
    tempo_times, tempi = pm.get_tempo_changes()
    qpm = float(tempi[0]) if len(tempi) else 120.0

    best: Melody | None = None
    best_track = -1
    for index in candidates:
        grid_notes = []
        for n in instruments[index].notes:
            start = _quantize(pm, n.start)
            end = max(start + 1, _quantize(pm, n.end))
            grid_notes.append(Note(start, end, int(n.pitch), max(1, int(n.velocity))))
        if not grid_notes:
            continue
        line = monophonic(grid_notes, 0, steps_per_bar, qpm, meter)
        if best is None or len(line.notes) > len(best.notes):
            best, best_track = line, index
    if best is None:
        raise EmptyMidiError(f"{name}: track {track} has no notes")
    total = -(-best.total_steps // steps_per_bar) * steps_per_bar  # whole bars
    melody = Melody(best.notes, total, steps_per_bar, qpm, meter)
    info = MidiInfo(
        track=best_track,
        n_tracks=len(instruments),
        time_signature_changes=max(0, len(pm.time_signature_changes) - 1),
        tempo_changes=max(0, len(tempo_times) - 1),
    )
    _LOGGER.debug("%s: took track %d of %d, %d notes", name, best_track, len(instruments),
                  len(melody.notes))
    return melody, info


MIDI_TICKS_PER_QUARTER = 480  # resolution of the files melodyvae writes


def write_midi(melody: Melody, path: str | os.PathLike[str], program: int = 0) -> None:
    """Write ``melody`` as a two-track Standard MIDI File (tempo map, then the melody).

    Written with mido at 480 ticks per quarter note; at each tick every note-off comes
    before any note-on, so a reader that follows the event stream never sees two notes at
    once (pretty_midi orders same-tick events by pitch instead). The same melody always
    gives the same bytes.
    """
    import mido

    ticks_per_step = MIDI_TICKS_PER_QUARTER // melody.steps_per_quarter
    tempo_track = mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(melody.qpm), time=0),
        mido.MetaMessage("time_signature", numerator=melody.time_signature[0],
                         denominator=melody.time_signature[1], time=0),
        mido.MetaMessage("end_of_track", time=0),
    ])
    events: list[tuple[int, int, mido.Message]] = []  # (tick, 0 = off / 1 = on, message)
    for note in melody.notes:
        events.append((note.start * ticks_per_step, 1,
                       mido.Message("note_on", note=note.pitch, velocity=note.velocity)))
        events.append((note.end * ticks_per_step, 0,
                       mido.Message("note_off", note=note.pitch, velocity=0)))
    events.sort(key=lambda e: (e[0], e[1]))
    track = mido.MidiTrack([mido.MetaMessage("track_name", name="melody", time=0),
                            mido.Message("program_change", program=program, time=0)])
    now = 0
    for tick, _, message in events:
        track.append(message.copy(time=tick - now))
        now = tick
    end = max(now, melody.total_steps * ticks_per_step)
    track.append(mido.MetaMessage("end_of_track", time=end - now))
    midi = mido.MidiFile(type=1, ticks_per_beat=MIDI_TICKS_PER_QUARTER)
    midi.tracks.extend([tempo_track, track])
    midi.save(str(path))
