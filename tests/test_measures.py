"""Musical measures on hand-built phrases with known answers, and their invariances."""

from __future__ import annotations

import mir_eval
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melodyvae.melody import NOTE_OFFSET, REST
from melodyvae.training import measures as m

T = 64  # 4 bars of 16 steps


def phrase(pitches: list[int | None], step: int = 2, steps: int = T) -> np.ndarray:
    """Tokens with one event every ``step`` steps: a MIDI pitch, or None for a rest."""
    row = np.zeros(steps, dtype=np.int64)
    for i, pitch in enumerate(pitches):
        row[i * step] = REST if pitch is None else pitch + NOTE_OFFSET
    return row


C_MAJOR = [60, 62, 64, 65, 67, 69, 71, 72]
A_HARMONIC_MINOR = [57, 59, 60, 62, 64, 65, 68, 69]


def one(row: np.ndarray) -> dict:
    return m.sample_measures(row[None])


# ---------------------------------------------------------------------- key fit


def test_scales_fit_fully() -> None:
    for pitches in (C_MAJOR, A_HARMONIC_MINOR):
        out = one(phrase(pitches))
        assert out["key_fit"] == 1.0
        assert out["diatonic_share"] == 1.0


def test_chromatic_scale_fits_seven_of_twelve() -> None:
    out = one(phrase(list(range(60, 72))))
    assert out["key_fit"] == pytest.approx(7 / 12)
    assert out["diatonic_share"] == 0.0


def test_one_wrong_note_in_eight() -> None:
    out = one(phrase([60, 62, 64, 65, 66, 67, 69, 71]))  # F# beside F: no scale holds both
    assert out["key_fit"] == pytest.approx(7 / 8)
    assert out["diatonic_share"] == 0.0


def test_key_fit_averages_phrases_and_skips_silent_ones() -> None:
    rows = np.stack([phrase(C_MAJOR), phrase(list(range(60, 72))), np.zeros(T, np.int64)])
    out = m.sample_measures(rows)
    assert out["key_fit"] == pytest.approx((1 + 7 / 12) / 2)
    assert out["diatonic_share"] == pytest.approx(0.5)
    assert m.sample_measures(np.zeros((2, T), np.int64))["key_fit"] is None


# ---------------------------------------------------------------------- degenerate


def test_degenerate_phrases() -> None:
    silent = np.zeros(T, np.int64)
    silent[0] = REST
    single = phrase([67])
    repeated = phrase([60] * 12, step=4)
    out = m.sample_measures(np.stack([silent, single, repeated, phrase(C_MAJOR)]))
    assert out["silent_share"] == 0.25
    assert out["single_note_share"] == 0.25
    assert out["repeated_pitch_share"] == 0.25
    assert out["degenerate_share"] == 0.75


def test_repeats_count_past_eight_even_across_rests() -> None:
    assert one(phrase([60] * 8 + [62], step=4))["degenerate_share"] == 0.0
    assert one(phrase([60] * 9, step=4))["degenerate_share"] == 1.0
    with_rests = phrase([60, None] * 9, step=2, steps=64)  # nine Cs, rests between
    assert one(with_rests)["repeated_pitch_share"] == 1.0


def test_longest_pitch_run() -> None:
    assert m.longest_pitch_run(np.array([], dtype=np.int64)) == 0
    assert m.longest_pitch_run(np.array([60, 60, 62, 62, 62, 60])) == 3


# ---------------------------------------------------------------------- rhythm and range


def test_notes_per_bar_and_range() -> None:
    out = one(phrase(C_MAJOR, step=8))  # eight half notes over 4 bars
    assert out["notes_per_bar"] == 2.0
    assert out["pitch_range"] == 12.0


def test_leaps_across_and_inside_bars() -> None:
    # bar 1: C4 at 0, C5 at 8 (a leap inside the bar); bar 2: D4 at 16 (a leap across the
    # bar line), E4 at 24 (a step inside); bar 3: E4 at 32 (a step across)
    out = one(phrase([60, 72, 62, 64, 64], step=8))
    assert out["leap_share_within_bars"] == pytest.approx(1 / 2)
    assert out["leap_share_across_bars"] == pytest.approx(1 / 2)
    fifth = one(phrase([60, 67, 60, 67], step=8))  # a fifth is not a leap
    assert fifth["leap_share_within_bars"] == 0.0
    assert fifth["leap_share_across_bars"] == 0.0


# ---------------------------------------------------------------------- bar repeats


def test_bar_repeats() -> None:
    bar = [60, 62, 64, 62]  # four quarter notes: 4 notes, 3 pitches
    assert m.bar_repeats(phrase(bar * 4, step=4)) == 3
    assert one(phrase(bar * 2 + [65, 67, 69, 67] * 2, step=4))["bar_repeat_share"] == 1.0
    assert one(phrase(list(range(60, 76)), step=4))["bar_repeat_share"] == 0.0  # all differ


def test_bar_repeats_need_three_notes_and_two_pitches() -> None:
    assert m.bar_repeats(phrase([60, 62] * 4, step=8)) == 0  # two notes a bar
    assert m.bar_repeats(phrase([60, 60, 60, 60] * 4, step=4)) == 0  # one pitch


# ---------------------------------------------------------------------- reconstructions


def test_reconstruction_of_itself() -> None:
    ref = np.stack([phrase(C_MAJOR), phrase(A_HARMONIC_MINOR, step=4)])
    out = m.reconstruction_measures(ref, ref)
    assert out["token_accuracy"] == 1.0
    assert out["note_f1"] == out["note_precision"] == out["note_recall"] == 1.0
    assert out["note_f1_mean"] == 1.0
    assert out["hold_baseline_accuracy"] == pytest.approx(((64 - 8) + (64 - 8)) / 128)


def test_reconstruction_errors() -> None:
    ref = phrase(C_MAJOR, step=4)
    late = np.roll(ref, 1)  # every onset one step late
    assert m.reconstruction_measures(ref[None], late[None])["note_f1"] == 0.0
    up = np.where(ref > REST, ref + 1, ref)  # every pitch a semitone up
    assert m.reconstruction_measures(ref[None], up[None])["note_f1"] == 0.0
    half = ref.copy()
    half[16:] = 0  # the last four notes lost: the fourth note is held on
    out = m.reconstruction_measures(ref[None], half[None])
    assert out["note_precision"] == 1.0
    assert out["note_recall"] == 0.5
    assert out["note_f1"] == pytest.approx(2 / 3)
    assert out["token_accuracy"] == pytest.approx(1 - 4 / 64)


def test_reconstruction_stuck_on_one_pitch() -> None:
    ref = np.stack([phrase(C_MAJOR), phrase(C_MAJOR)])
    est = np.stack([phrase([60] * 10, step=4), phrase(C_MAJOR)])
    assert m.reconstruction_measures(ref, est)["repeated_pitch_share"] == 0.5


def test_reconstruction_pools_notes_over_phrases() -> None:
    ref = np.stack([phrase(C_MAJOR), phrase([60, 62])])
    est = np.stack([phrase(C_MAJOR), np.zeros(T, np.int64)])
    out = m.reconstruction_measures(ref, est)
    assert out["note_recall"] == pytest.approx(8 / 10)
    assert out["note_precision"] == 1.0
    assert out["note_f1_mean"] == pytest.approx(0.5)


def test_shapes_checked() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        m.reconstruction_measures(np.zeros((2, T)), np.zeros((3, T)))
    with pytest.raises(ValueError, match="must be"):
        m.sample_measures(np.zeros(T))
    with pytest.raises(ValueError, match="outside"):
        m.sample_measures(np.full((1, T), 90))


# ---------------------------------------------------------------------- properties

tokens_row = st.lists(st.integers(0, 89), min_size=T, max_size=T).map(
    lambda xs: np.asarray(xs, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(tokens_row)
def test_f1_of_a_phrase_with_itself_is_one(row: np.ndarray) -> None:
    out = m.reconstruction_measures(row[None], row[None])
    assert out["note_f1_mean"] == 1.0
    assert out["token_accuracy"] == 1.0
    if (row > REST).any():
        assert out["note_f1"] == 1.0


@settings(max_examples=40, deadline=None)
@given(tokens_row, tokens_row)
def test_f1_matches_mir_eval(ref: np.ndarray, est: np.ndarray) -> None:
    """Pooled over one phrase, the F1 is mir_eval's own onset+pitch F1 on the notes."""
    ri, rp = m.note_intervals(ref)
    ei, ep = m.note_intervals(est)
    if len(rp) == 0 or len(ep) == 0:
        return
    _, _, f1, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ri, mir_eval.util.midi_to_hz(rp.astype(float)), ei,
        mir_eval.util.midi_to_hz(ep.astype(float)), onset_tolerance=0.5, offset_ratio=None)
    assert m.reconstruction_measures(ref[None], est[None])["note_f1"] == pytest.approx(f1)


middle_row = st.lists(st.one_of(st.integers(0, 1), st.integers(30, 60)), min_size=T,
                      max_size=T).map(lambda xs: np.asarray(xs, dtype=np.int64))


@settings(max_examples=60, deadline=None)
@given(st.lists(middle_row, min_size=1, max_size=4), st.integers(-12, 12))
def test_transposition_leaves_pitch_free_measures_unchanged(rows: list[np.ndarray],
                                                            shift: int) -> None:
    tokens = np.stack(rows)
    moved = tokens + shift * (tokens > REST)  # pitches stay inside 18..72 + 19
    a, b = m.sample_measures(tokens), m.sample_measures(moved)
    assert a == pytest.approx(b)


def test_note_intervals_end_at_the_next_event() -> None:
    row = phrase([60, None, 62], step=4, steps=16)  # C at 0, rest at 4, D at 8 to the end
    intervals, pitches = m.note_intervals(row)
    assert intervals.tolist() == [[0, 4], [8, 16]]
    assert pitches.tolist() == [60, 62]
