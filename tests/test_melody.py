"""The melody representation: notes on the 16th grid, tokens, and their round trips."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melodyvae.melody import (
    HOLD,
    MAX_PITCH,
    MIN_PITCH,
    NOTE_OFFSET,
    REST,
    VOCAB_SIZE,
    Melody,
    MelodyError,
    Note,
    fold_pitch,
    from_note_list,
    from_tokens,
    monophonic,
    steps_per_bar_for,
    to_tokens,
)


def spans(melody: Melody) -> list[tuple[int, int, int]]:
    return [(n.start, n.end, n.pitch) for n in melody.notes]


@st.composite
def melodies(draw, min_pitch: int = MIN_PITCH, max_pitch: int = MAX_PITCH) -> Melody:
    """Monophonic melodies: notes with random gaps, durations and pitches, and a total length
    at or past the last note's end."""
    n = draw(st.integers(0, 24))
    t = 0
    notes = []
    for _ in range(n):
        t += draw(st.integers(0, 6))  # gap (0: the note starts where the last one ended)
        duration = draw(st.integers(1, 17))
        pitch = draw(st.integers(min_pitch, max_pitch))
        velocity = draw(st.integers(1, 127))
        notes.append(Note(t, t + duration, pitch, velocity))
        t += duration
    total = t + draw(st.integers(0, 20))
    return Melody(tuple(notes), total)


# ---------------------------------------------------------------------------- tokens


def test_vocabulary_layout() -> None:
    assert VOCAB_SIZE == 90
    assert (HOLD, REST) == (0, 1)
    assert MIN_PITCH + NOTE_OFFSET == 2
    assert MAX_PITCH + NOTE_OFFSET == VOCAB_SIZE - 1


@settings(max_examples=100, deadline=None)
@given(melodies())
def test_tokens_round_trip(melody: Melody) -> None:
    tokens, n_folded = to_tokens(melody)
    assert tokens.dtype == np.int64
    assert tokens.shape == (melody.total_steps,)
    assert n_folded == 0
    assert tokens.min(initial=0) >= 0 and tokens.max(initial=0) < VOCAB_SIZE
    back = from_tokens(tokens)
    assert spans(back) == spans(melody)
    assert back.total_steps == melody.total_steps


@settings(max_examples=100, deadline=None)
@given(melodies(min_pitch=0, max_pitch=127))
def test_out_of_range_pitches_are_folded_by_octaves_and_counted(melody: Melody) -> None:
    tokens, n_folded = to_tokens(melody)
    outside = [n for n in melody.notes if not MIN_PITCH <= n.pitch <= MAX_PITCH]
    assert n_folded == len(outside)
    back = from_tokens(tokens)
    assert [(n.start, n.end) for n in back.notes] == [(n.start, n.end) for n in melody.notes]
    for original, decoded in zip(melody.notes, back.notes, strict=True):
        assert MIN_PITCH <= decoded.pitch <= MAX_PITCH
        assert (decoded.pitch - original.pitch) % 12 == 0
        if MIN_PITCH <= original.pitch <= MAX_PITCH:
            assert decoded.pitch == original.pitch
        elif original.pitch < MIN_PITCH:  # moved up just far enough
            assert decoded.pitch - 12 < MIN_PITCH
        else:  # moved down just far enough
            assert decoded.pitch + 12 > MAX_PITCH


def test_fold_pitch_examples() -> None:
    assert fold_pitch(20) == 32
    assert fold_pitch(0) == 24
    assert fold_pitch(109) == 97
    assert fold_pitch(127) == 103
    assert fold_pitch(60) == 60


def test_token_values_for_a_known_melody() -> None:
    melody = Melody((Note(2, 4, 60), Note(4, 5, 21), Note(8, 12, 108)), 14)
    tokens, _ = to_tokens(melody)
    assert tokens.tolist() == [REST, HOLD, 60 + NOTE_OFFSET, HOLD, 2, REST, HOLD, HOLD,
                               89, HOLD, HOLD, HOLD, REST, HOLD]


def test_repeated_notes_of_one_pitch_stay_apart() -> None:
    melody = Melody((Note(0, 2, 60), Note(2, 4, 60), Note(4, 8, 60), Note(9, 10, 60)), 12)
    tokens, _ = to_tokens(melody)
    note = 60 + NOTE_OFFSET
    assert tokens.tolist() == [note, HOLD, note, HOLD, note, HOLD, HOLD, HOLD, REST, note,
                               REST, HOLD]
    assert spans(from_tokens(tokens)) == spans(melody)


def test_a_leading_hold_is_silence() -> None:
    melody = from_tokens([HOLD, HOLD, 40, HOLD, REST, HOLD])
    assert spans(melody) == [(2, 4, 40 - NOTE_OFFSET)]
    assert melody.total_steps == 6
    assert spans(from_tokens([HOLD] * 8)) == []


def test_from_tokens_of_nothing() -> None:
    melody = from_tokens([])
    assert melody.notes == () and melody.total_steps == 0
    tokens, _ = to_tokens(melody)
    assert tokens.shape == (0,)


@pytest.mark.parametrize("bad", [[-1], [VOCAB_SIZE], [0, 1, 2, 255], [1000]])
def test_invalid_tokens_raise(bad: list[int]) -> None:
    with pytest.raises(MelodyError):
        from_tokens(bad)


def test_from_tokens_keeps_the_given_meter_and_tempo() -> None:
    melody = from_tokens([30, HOLD, REST] * 4, steps_per_bar=12, qpm=90.0,
                         time_signature=(3, 4), velocity=33)
    assert melody.steps_per_bar == 12 and melody.qpm == 90.0
    assert melody.time_signature == (3, 4)
    assert {n.velocity for n in melody.notes} == {33}


# ---------------------------------------------------------------------------- Melody rules


def test_melody_rejects_overlapping_notes() -> None:
    with pytest.raises(MelodyError, match="overlap"):
        Melody((Note(0, 4, 60), Note(3, 6, 62)), 8)
    with pytest.raises(MelodyError):  # same onset
        Melody((Note(0, 4, 60), Note(0, 2, 64)), 8)


def test_melody_sorts_its_notes_and_accepts_touching_notes() -> None:
    melody = Melody((Note(4, 8, 62), Note(0, 4, 60)), 8)
    assert spans(melody) == [(0, 4, 60), (4, 8, 62)]


@pytest.mark.parametrize(
    "notes,total",
    [
        ((Note(2, 2, 60),), 4),  # empty span
        ((Note(3, 1, 60),), 4),  # negative span
        ((Note(-1, 1, 60),), 4),  # before the start
        ((Note(0, 1, 128),), 4),  # pitch outside MIDI
        ((Note(0, 1, -1),), 4),
        ((Note(0, 5, 60),), 4),  # total_steps before the last end
    ],
)
def test_melody_rejects_broken_notes(notes: tuple[Note, ...], total: int) -> None:
    with pytest.raises(MelodyError):
        Melody(notes, total)


def test_melody_rejects_bad_bar_and_tempo() -> None:
    with pytest.raises(MelodyError):
        Melody((), 4, steps_per_bar=0)
    with pytest.raises(MelodyError):
        Melody((), 4, qpm=0.0)


def test_n_bars_and_seconds_per_step() -> None:
    melody = Melody((), 33, steps_per_bar=16, qpm=150.0)
    assert melody.n_bars == 3
    assert melody.seconds_per_step == pytest.approx(0.1)
    assert melody.steps_to_beats(6) == 1.5


@pytest.mark.parametrize(
    "meter,steps", [((4, 4), 16), ((3, 4), 12), ((2, 4), 8), ((6, 8), 12), ((2, 2), 16),
                    ((7, 8), 14), ((3, 16), 3)]
)
def test_steps_per_bar_for(meter: tuple[int, int], steps: int) -> None:
    assert steps_per_bar_for(*meter) == steps


def test_steps_per_bar_for_rejects_meters_off_the_grid() -> None:
    with pytest.raises(MelodyError):
        steps_per_bar_for(3, 32)
    with pytest.raises(MelodyError):
        steps_per_bar_for(0, 4)


# ---------------------------------------------------------------------------- monophonic


def test_monophonic_keeps_the_highest_note_at_a_shared_onset() -> None:
    notes = [Note(0, 4, 60), Note(0, 4, 67), Note(0, 2, 64), Note(4, 8, 55), Note(4, 6, 59)]
    line = monophonic(notes, 8)
    assert spans(line) == [(0, 4, 67), (4, 6, 59)]


def test_monophonic_cuts_a_note_where_the_next_begins() -> None:
    line = monophonic([Note(0, 8, 72), Note(4, 6, 60), Note(10, 12, 62)], 16)
    assert spans(line) == [(0, 4, 72), (4, 6, 60), (10, 12, 62)]
    assert line.total_steps == 16


def test_monophonic_extends_total_steps_to_the_last_note() -> None:
    line = monophonic([Note(0, 20, 60)], 16, steps_per_bar=12, qpm=80.0,
                      time_signature=(3, 4))
    assert line.total_steps == 20
    assert (line.steps_per_bar, line.qpm, line.time_signature) == (12, 80.0, (3, 4))


@st.composite
def note_heaps(draw) -> list[Note]:
    return [
        Note(s, s + draw(st.integers(1, 12)), draw(st.integers(0, 127)))
        for s in draw(st.lists(st.integers(0, 60), max_size=30))
    ]


@settings(max_examples=100, deadline=None)
@given(note_heaps())
def test_monophonic_property(notes: list[Note]) -> None:
    line = monophonic(notes, 0)  # Melody's constructor checks it is one line
    onsets = sorted({n.start for n in notes})
    assert [n.start for n in line.notes] == onsets
    for i, kept in enumerate(line.notes):
        at_onset = [n for n in notes if n.start == kept.start]
        assert kept.pitch == max(n.pitch for n in at_onset)
        own_ends = {n.end for n in at_onset if n.pitch == kept.pitch}
        next_start = onsets[i + 1] if i + 1 < len(onsets) else None
        assert kept.end in {min(e, next_start) if next_start is not None else e
                            for e in own_ends}


# ---------------------------------------------------------------------------- window


def test_window_semantics() -> None:
    melody = Melody(
        (Note(0, 6, 60), Note(6, 10, 62), Note(12, 20, 64), Note(24, 26, 65)), 32,
        steps_per_bar=16, qpm=100.0, time_signature=(4, 4),
    )
    window = melody.window(8, 8)
    # the note sounding into the window (6..10) began before it: left out;
    # the note running past its end (12..20) is cut at 16
    assert spans(window) == [(4, 8, 64)]
    assert window.total_steps == 8
    assert (window.qpm, window.steps_per_bar) == (100.0, 16)
    assert spans(melody.window(0, 32)) == spans(melody)
    assert spans(melody.window(24, 16)) == [(0, 2, 65)]  # past the end: padded silence
    assert melody.window(24, 16).total_steps == 16
    assert spans(melody.window(26, 6)) == []


@settings(max_examples=100, deadline=None)
@given(melodies(), st.integers(0, 100), st.integers(1, 64))
def test_window_property(melody: Melody, start: int, length: int) -> None:
    window = melody.window(start, length)
    assert window.total_steps == length
    expected = [(n.start - start, min(n.end, start + length) - start, n.pitch)
                for n in melody.notes if start <= n.start < start + length]
    assert spans(window) == expected
    # the window's tokens equal the melody's own from its first onset on
    tokens, _ = to_tokens(melody)
    window_tokens, _ = to_tokens(window)
    if window.notes:
        first = window.notes[0].start
        last_end = window.notes[-1].end
        assert window_tokens[first:last_end].tolist() == (
            tokens[start + first : start + last_end].tolist())


def test_transpose() -> None:
    melody = Melody((Note(0, 4, 60), Note(4, 8, 64)), 8).transpose(-3)
    assert [n.pitch for n in melody.notes] == [57, 61]


# ---------------------------------------------------------------------------- note lists


def test_from_note_list_rounds_to_the_grid() -> None:
    melody = from_note_list([(60, 0.0, 1.0), (62, 1.02, 0.48), (64, 2.26, 0.5)], 16)
    assert spans(melody) == [(0, 4, 60), (4, 6, 62), (9, 11, 64)]


def test_from_note_list_later_onset_wins_and_highest_at_shared_onsets() -> None:
    melody = from_note_list([(60, 0, 2.0), (64, 0.5, 1.0), (67, 0.5, 0.25), (50, 0.5, 3)], 16)
    assert spans(melody) == [(0, 2, 60), (2, 3, 67)]


def test_from_note_list_drops_notes_outside_and_clips_at_the_end() -> None:
    melody = from_note_list([(60, 3.0, 4.0), (70, 10.0, 1.0), (72, -1.0, 0.5)], 16,
                            steps_per_bar=12, qpm=90.0, velocity=20)
    assert spans(melody) == [(12, 16, 60)]
    assert melody.total_steps == 16
    assert (melody.steps_per_bar, melody.qpm) == (12, 90.0)
    assert melody.notes[0].velocity == 20


def test_from_note_list_zero_duration_gets_one_step() -> None:
    melody = from_note_list([(60, 1.0, 0.0)], 8)
    assert spans(melody) == [(4, 5, 60)]


@settings(max_examples=60, deadline=None)
@given(melodies())
def test_from_note_list_reads_back_an_on_grid_melody(melody: Melody) -> None:
    triples = [(n.pitch, n.start / 4, (n.end - n.start) / 4) for n in melody.notes]
    assert spans(from_note_list(triples, melody.total_steps)) == spans(melody)
