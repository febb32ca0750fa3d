"""MIDI in and out: real files written with pretty_midi / mido in tmp_path, and the real
multi-track files shipped inside music21."""

from __future__ import annotations

from pathlib import Path

import mido
import pretty_midi
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melodyvae.cli import main
from melodyvae.melody import Melody, Note, steps_per_bar_for
from melodyvae.midi import (
    DrumsOnlyError,
    EmptyMidiError,
    MidiError,
    NotMidiError,
    read_midi,
    write_midi,
)


def spans(melody: Melody) -> list[tuple[int, int, int]]:
    return [(n.start, n.end, n.pitch) for n in melody.notes]


def write_instruments(path: Path, instruments: list[pretty_midi.Instrument],
                      qpm: float = 120.0) -> Path:
    pm = pretty_midi.PrettyMIDI(initial_tempo=qpm)
    pm.instruments.extend(instruments)
    pm.write(str(path))
    return path


def instrument(notes: list[tuple[int, float, float]], program: int = 0, is_drum: bool = False,
               qpm: float = 120.0) -> pretty_midi.Instrument:
    """An instrument from (pitch, start_beat, end_beat) at a constant tempo ``qpm``."""
    inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
    spb = 60.0 / qpm
    for pitch, start, end in notes:
        inst.notes.append(pretty_midi.Note(100, pitch, start * spb, end * spb))
    return inst


# ---------------------------------------------------------------------------- round trips

METERS = [(4, 4), (3, 4), (2, 4), (6, 8)]


@st.composite
def midi_melodies(draw) -> Melody:
    meter = draw(st.sampled_from(METERS))
    qpm = draw(st.floats(60.0, 200.0, allow_nan=False))
    n = draw(st.integers(1, 20))
    t = draw(st.integers(0, 8))
    notes = []
    for _ in range(n):
        duration = draw(st.integers(1, 16))
        notes.append(Note(t, t + duration, draw(st.integers(21, 108)), draw(st.integers(1, 127))))
        t += duration + draw(st.integers(0, 5))
    spb = steps_per_bar_for(*meter)
    return Melody(tuple(notes), -(-notes[-1].end // spb) * spb, spb, qpm, meter)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(midi_melodies())
def test_write_read_round_trip(tmp_path: Path, melody: Melody) -> None:
    path = tmp_path / "round.mid"
    write_midi(melody, path)
    back, info = read_midi(path)
    assert spans(back) == spans(melody)
    assert [n.velocity for n in back.notes] == [n.velocity for n in melody.notes]
    assert back.time_signature == melody.time_signature
    assert back.steps_per_bar == melody.steps_per_bar
    assert back.total_steps == melody.total_steps  # whole bars
    assert back.qpm == pytest.approx(melody.qpm, rel=1e-4)
    assert (info.track, info.n_tracks) == (0, 1)


def test_total_steps_is_whole_bars(tmp_path: Path) -> None:
    melody = Melody((Note(0, 5, 60),), 5, 12, 120.0, (3, 4))
    write_midi(melody, tmp_path / "a.mid")
    back, _ = read_midi(tmp_path / "a.mid")
    assert back.total_steps == 12
    assert back.n_bars == 1


def _mido_file(path: Path, events: list[tuple[int, mido.Message | mido.MetaMessage]],
               ticks_per_beat: int = 480) -> Path:
    """A type-0 file from (absolute tick, message) pairs."""
    mid = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    track = mido.MidiTrack()
    mid.tracks.append(track)
    now = 0
    for tick, msg in sorted(events, key=lambda e: (e[0], e[1].type == "note_on")):
        track.append(msg.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    mid.save(str(path))
    return path


def test_tempo_changes_quantize_on_the_beat_grid(tmp_path: Path) -> None:
    tpb = 480
    sixteenth = tpb // 4
    events: list[tuple[int, mido.Message | mido.MetaMessage]] = [
        (0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
        (0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(120))),
        (4 * tpb, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(60))),  # bar 2: slower
        (6 * tpb, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(173))),  # odd tempo
        (10 * tpb, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(90))),
    ]
    # (start step, end step, pitch): quarters, eighths and sixteenths on both sides of
    # every tempo change; a few placed a little off the grid (humanized)
    expected = [(0, 4, 60), (4, 8, 62), (8, 12, 64), (12, 16, 65), (16, 18, 67),
                (18, 20, 69), (20, 21, 71), (21, 22, 72), (22, 24, 74), (24, 28, 76),
                (28, 30, 77), (30, 32, 79), (36, 40, 81), (40, 44, 79), (44, 45, 77),
                (45, 48, 76), (52, 64, 74)]
    jitter = [0, 7, -9, 0, 20, -20, 3, 0, 0, -11, 0, 5, 0, 0, 13, 0, -30]
    for (start, end, pitch), j in zip(expected, jitter, strict=True):
        events.append((max(0, start * sixteenth + j),
                       mido.Message("note_on", note=pitch, velocity=80)))
        events.append((end * sixteenth + j, mido.Message("note_off", note=pitch, velocity=0)))
    path = _mido_file(tmp_path / "tempo.mid", events, tpb)
    melody, info = read_midi(path)
    assert spans(melody) == expected
    assert melody.qpm == pytest.approx(120.0)
    assert info.tempo_changes == 3  # changes after the initial tempo
    assert melody.total_steps == 64
    # and the seconds really differ from a constant-tempo reading: the grid is the beats'
    pm = pretty_midi.PrettyMIDI(str(path))
    last = max(pm.instruments[0].notes, key=lambda n: n.start)
    assert round(last.start / (60 / 120 / 4)) != 52


def test_time_signature_changes_keep_the_first_meter(tmp_path: Path) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    pm.time_signature_changes += [pretty_midi.TimeSignature(3, 4, 0.0),
                                  pretty_midi.TimeSignature(4, 4, 3.0)]
    pm.instruments.append(instrument([(60, 0, 1), (62, 1, 2), (64, 6, 7)]))
    pm.write(str(tmp_path / "ts.mid"))
    melody, info = read_midi(tmp_path / "ts.mid")
    assert melody.time_signature == (3, 4)
    assert melody.steps_per_bar == 12
    assert info.time_signature_changes == 1
    assert spans(melody) == [(0, 4, 60), (4, 8, 62), (24, 28, 64)]


# ---------------------------------------------------------------------------- track choice


def test_busiest_non_drum_line_is_taken(tmp_path: Path) -> None:
    drums = instrument([(36, b / 2, b / 2 + 0.25) for b in range(40)], is_drum=True)
    chords = instrument([(p, b, b + 1) for b in range(4) for p in (48, 52, 55)])  # 12 notes,
    # a line of 4
    lead = instrument([(72, b, b + 0.5) for b in range(6)], program=73)  # 6 notes, a line of 6
    path = write_instruments(tmp_path / "band.mid", [drums, chords, lead])
    melody, info = read_midi(path)
    assert (info.track, info.n_tracks) == (2, 3)
    assert spans(melody) == [(4 * b, 4 * b + 2, 72) for b in range(6)]


@st.composite
def bands(draw) -> list[tuple[bool, list[tuple[int, int, int]]]]:
    """1-4 instruments, each (is_drum, notes on the grid as (start, end, pitch) in steps);
    polyphonic, but no two notes of one pitch overlap (MIDI could not tell them apart)."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        is_drum = draw(st.booleans()) and draw(st.booleans())  # drums now and then
        notes: list[tuple[int, int, int]] = []
        for _ in range(draw(st.integers(1, 14))):
            start = draw(st.integers(0, 47))
            end = start + draw(st.integers(1, 12))
            pitch = draw(st.integers(30, 100))
            if all(p != pitch or e <= start or end <= s for s, e, p in notes):
                notes.append((start, end, pitch))
        out.append((is_drum, notes))
    return out


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bands())
def test_melodic_line_rule_property(tmp_path: Path,
                                    band: list[tuple[bool, list[tuple[int, int, int]]]]) -> None:
    instruments = [instrument([(p, s / 4, e / 4) for s, e, p in notes], is_drum=is_drum)
                   for is_drum, notes in band]
    path = write_instruments(tmp_path / "band.mid", instruments)
    pitched = [i for i, (is_drum, _) in enumerate(band) if not is_drum]
    if not pitched:
        with pytest.raises(DrumsOnlyError):
            read_midi(path)
        return
    melody, info = read_midi(path)
    onsets = {i: sorted({s for s, _, _ in band[i][1]}) for i in pitched}
    most = max(len(o) for o in onsets.values())
    expected_track = next(i for i in pitched if len(onsets[i]) == most)  # earliest of the ties
    assert info.track == expected_track
    notes = band[expected_track][1]
    starts = onsets[expected_track]
    expected = []
    for k, start in enumerate(starts):
        top = max((n for n in notes if n[0] == start), key=lambda n: n[2])
        end = top[1] if k + 1 == len(starts) else min(top[1], starts[k + 1])
        expected.append((start, end, top[2]))
    assert spans(melody) == expected


def test_a_tie_goes_to_the_earlier_track(tmp_path: Path) -> None:
    first = instrument([(60, b, b + 1) for b in range(4)])
    second = instrument([(64, b, b + 1) for b in range(4)])
    melody, info = read_midi(write_instruments(tmp_path / "tie.mid", [first, second]))
    assert info.track == 0
    assert {n.pitch for n in melody.notes} == {60}


def test_highest_note_at_overlapping_onsets(tmp_path: Path) -> None:
    piano = instrument([
        (60, 0, 2), (64, 0, 2), (67, 0, 1),  # a chord: 67 wins, cut at the next onset
        (48, 1, 4), (72, 1, 1.5),  # 72 wins at beat 1 and ends at 1.5
        (50, 3, 4),  # a new onset under a held note
    ])
    melody, _ = read_midi(write_instruments(tmp_path / "chords.mid", [piano]))
    assert spans(melody) == [(0, 4, 67), (4, 6, 72), (12, 16, 50)]


def test_explicit_track(tmp_path: Path) -> None:
    busy = instrument([(60 + b, b / 2, b / 2 + 0.5) for b in range(16)])
    quiet = instrument([(70, 0, 2), (72, 2, 4)])
    drums = instrument([(38, b, b + 0.5) for b in range(4)], is_drum=True)
    path = write_instruments(tmp_path / "two.mid", [busy, quiet, drums])
    assert read_midi(path)[1].track == 0
    melody, info = read_midi(path, track=1)
    assert info.track == 1
    assert spans(melody) == [(0, 8, 70), (8, 16, 72)]
    assert read_midi(path, track=2)[1].track == 2  # named explicitly, even drums
    with pytest.raises(MidiError, match="no track 3"):
        read_midi(path, track=3)


def test_a_track_without_notes_cannot_be_named(tmp_path: Path) -> None:
    # pretty_midi drops an instrument without notes, so the file has one track
    path = write_instruments(tmp_path / "e.mid",
                             [instrument([(60, 0, 1)]), pretty_midi.Instrument(program=0)])
    with pytest.raises(MidiError):
        read_midi(path, track=1)


# ---------------------------------------------------------------------------- bad files


def test_empty_midi(tmp_path: Path) -> None:
    with pytest.raises(EmptyMidiError):
        read_midi(write_instruments(tmp_path / "empty.mid", []))
    with pytest.raises(EmptyMidiError):
        read_midi(write_instruments(tmp_path / "empty2.mid", [pretty_midi.Instrument(0)]))


def test_drums_only(tmp_path: Path) -> None:
    drums = instrument([(36, b, b + 0.5) for b in range(8)], is_drum=True)
    with pytest.raises(DrumsOnlyError):
        read_midi(write_instruments(tmp_path / "drums.mid", [drums]))


def test_not_midi(tmp_path: Path) -> None:
    text = tmp_path / "notes.mid"
    text.write_text("this is a text file, not a Standard MIDI File\n")
    with pytest.raises(NotMidiError):
        read_midi(text)
    with pytest.raises(NotMidiError):
        read_midi(tmp_path / "missing.mid")
    with pytest.raises(NotMidiError):
        read_midi(tmp_path)  # a folder
    empty = tmp_path / "zero.mid"
    empty.write_bytes(b"")
    with pytest.raises(NotMidiError):
        read_midi(empty)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.9, -1])
def test_truncated_midi(tmp_path: Path, keep: float) -> None:
    melody = Melody(tuple(Note(2 * i, 2 * i + 2, 60 + i) for i in range(16)), 32)
    whole = tmp_path / "whole.mid"
    write_midi(melody, whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mid"
    cut.write_bytes(data[: int(len(data) * keep)] if keep > 0 else data[:-1])
    with pytest.raises(NotMidiError):
        read_midi(cut)


def test_garbage_after_the_header_is_not_midi(tmp_path: Path) -> None:
    path = tmp_path / "garbage.mid"
    path.write_bytes(b"MThd" + bytes(range(256)) * 4)
    with pytest.raises(NotMidiError):
        read_midi(path)


# ---------------------------------------------------------------------------- music21's files


def _music21_midi_files() -> list[Path]:
    music21 = pytest.importorskip("music21")
    root = Path(music21.__file__).parent
    return [root / "omr" / "k525MIDIMvt1.mid", *sorted((root / "midi" / "testPrimitive").glob(
        "*.mid"))]


def test_music21_files_are_present() -> None:
    files = _music21_midi_files()
    assert len(files) > 10
    assert all(f.is_file() for f in files)


@pytest.mark.parametrize("path", _music21_midi_files(), ids=lambda p: p.name)
def test_real_multi_track_files(path: Path, tmp_path: Path, capsys) -> None:
    try:
        melody, info = read_midi(path)
    except MidiError:
        return  # a known, explained refusal is fine; any other exception fails the test
    assert melody.notes
    ends = [n.end for n in melody.notes]
    starts = [n.start for n in melody.notes]
    assert all(e <= s for e, s in zip(ends, starts[1:], strict=False))  # one line
    assert all(n.end > n.start for n in melody.notes)
    assert melody.total_steps % melody.steps_per_bar == 0
    assert 0 <= info.track < info.n_tracks
    out = tmp_path / "extracted.mid"
    assert main(["extract", str(path), str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    back, back_info = read_midi(out)
    assert spans(back) == spans(melody)
    assert back.time_signature == melody.time_signature
    assert back.total_steps == melody.total_steps
    assert back.qpm == pytest.approx(melody.qpm, rel=1e-4)
    assert back_info.n_tracks == 1
