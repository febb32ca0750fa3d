"""Musical measures on token arrays: what a musician would hear in a set of phrases.

Every function takes phrases as tokens ``(N, T)`` in the model's encoding (``0`` hold,
``1`` rest, ``2..89`` note-on of MIDI pitch ``token + 19``) on bars of ``steps_per_bar``
steps, and returns plain numbers in a dict with stable keys (documented in
``docs/measures.md``). Nothing here needs a model: the same measures apply to prior
samples, to held-out data and to a baseline such as :mod:`melodyvae.training.markov`.

* :func:`reconstruction_measures` - a reference set against its reconstructions: token
  accuracy beside the all-hold baseline, note onset+pitch precision/recall/F1 (mir_eval's
  transcription matching), and the share of reconstructions stuck on one pitch.
* :func:`sample_measures` - one set of phrases alone: key fit, fully diatonic share,
  degenerate share, notes per bar, range, leaps across and inside bars, bar repeats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from melodyvae.melody import HOLD, NOTE_OFFSET, REST, VOCAB_SIZE

STEPS_PER_BAR = 16  # grid steps per bar (16th notes in 4/4)
MAX_REPEATS = 8  # one pitch sounded more than this many times in a row is degenerate
LEAP_SEMITONES = 7  # a leap is an interval larger than a perfect fifth
BAR_REPEAT_MIN_NOTES = 3  # a repeated bar counts only with at least this many notes...
BAR_REPEAT_MIN_PITCHES = 2  # ...and this many different pitches
ONSET_TOLERANCE_STEPS = 0.5  # note matching: onsets must fall on the same grid step

MAJOR = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR = (0, 2, 3, 5, 7, 8, 11)


def _scale_masks() -> np.ndarray:
    """(24, 12) 0/1: rows 0..11 major scales on C..B, rows 12..23 harmonic minor."""
    masks = np.zeros((24, 12), dtype=np.int64)
    for i, scale in enumerate((MAJOR, HARMONIC_MINOR)):
        for tonic in range(12):
            masks[i * 12 + tonic, [(tonic + d) % 12 for d in scale]] = 1
    return masks


_SCALES = _scale_masks()


def _as_tokens(tokens: np.ndarray) -> np.ndarray:
    arr = np.asarray(tokens)
    if arr.ndim != 2:
        raise ValueError(f"tokens must be (N, T), not shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= VOCAB_SIZE):
        raise ValueError(f"tokens outside 0..{VOCAB_SIZE - 1}")
    return arr.astype(np.int64)


def notes(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Onset steps and MIDI pitches of one phrase's notes, each (n,)."""
    onsets = np.flatnonzero(row > REST)
    return onsets, row[onsets] - NOTE_OFFSET


def note_intervals(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Notes of one phrase as (n, 2) [onset, offset) in steps and (n,) MIDI pitches.

    A note lasts until the next non-hold token (a rest or the next note) or the phrase end.
    """
    onsets, pitches = notes(row)
    events = np.append(np.flatnonzero(row != HOLD), len(row))
    offsets = events[np.searchsorted(events, onsets, side="right")]
    return np.stack([onsets, offsets], axis=1).astype(np.float64), pitches


def longest_pitch_run(pitches: np.ndarray) -> int:
    """Length of the longest run of consecutive notes on one pitch (rests do not break it)."""
    if len(pitches) == 0:
        return 0
    change = np.flatnonzero(np.diff(pitches) != 0)
    bounds = np.concatenate([[-1], change, [len(pitches) - 1]])
    return int(np.diff(bounds).max())


def key_fit(pitches: np.ndarray) -> float:
    """Share of notes in the best-fitting major or harmonic-minor scale (nan with no notes)."""
    if len(pitches) == 0:
        return math.nan
    histogram = np.bincount(np.asarray(pitches) % 12, minlength=12)
    return float((_SCALES @ histogram).max() / len(pitches))


def _key_fits(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Key fit of every phrase (nan for silent ones) and its note count, each (N,)."""
    onset = tokens > REST
    pitch_class = np.where(onset, (tokens - NOTE_OFFSET) % 12, 12)
    histogram = np.zeros((len(tokens), 13), dtype=np.int64)  # column 12: no note
    np.add.at(histogram, (np.arange(len(tokens))[:, None], pitch_class), 1)
    counts = onset.sum(axis=1)
    best = (histogram[:, :12] @ _SCALES.T).max(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        fits = np.where(counts > 0, best / np.maximum(counts, 1), np.nan)
    return fits, counts


def bar_repeats(row: np.ndarray, steps_per_bar: int = STEPS_PER_BAR) -> int:
    """Bars equal (token for token) to an earlier bar of the same phrase that hold at least
    3 notes on at least 2 pitches."""
    bars = row[: len(row) // steps_per_bar * steps_per_bar].reshape(-1, steps_per_bar)
    seen: set[bytes] = set()
    repeats = 0
    for bar in bars:
        key = bar.tobytes()
        _, pitches = notes(bar)
        if (key in seen and len(pitches) >= BAR_REPEAT_MIN_NOTES
                and len(np.unique(pitches)) >= BAR_REPEAT_MIN_PITCHES):
            repeats += 1
        seen.add(key)
    return repeats


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else None


def _share(hits: int, total: int) -> float | None:
    return hits / total if total else None


def sample_measures(tokens: np.ndarray, steps_per_bar: int = STEPS_PER_BAR) -> dict[str, Any]:
    """Measures of one set of phrases (prior samples, held-out data, a baseline's samples).

    Keys (``docs/measures.md``): ``n``, ``key_fit``, ``diatonic_share``,
    ``degenerate_share`` (with its parts ``silent_share``, ``single_note_share``,
    ``repeated_pitch_share``), ``notes_per_bar``, ``pitch_range``,
    ``leap_share_across_bars``, ``leap_share_within_bars``, ``bar_repeat_share``,
    ``bar_repeats_per_phrase``. Shares are fractions in [0, 1]; a measure with nothing to
    measure (e.g. key fit of silent phrases only) is None.
    """
    tokens = _as_tokens(tokens)
    n, steps = tokens.shape
    bars = steps / steps_per_bar
    fits, counts = _key_fits(tokens)
    voiced = counts > 0
    silent = int((counts == 0).sum())
    single = int((counts == 1).sum())
    repeated = degenerate = 0
    across = [0, 0]  # [leaps, note pairs] with the two notes in different bars
    within = [0, 0]  # the same inside one bar
    ranges = np.full(n, np.nan)
    repeat_bars = np.zeros(n, dtype=np.int64)
    for i, row in enumerate(tokens):
        onsets, pitches = notes(row)
        run = longest_pitch_run(pitches)
        repeated += run > MAX_REPEATS
        degenerate += len(pitches) <= 1 or run > MAX_REPEATS
        if len(pitches):
            ranges[i] = pitches.max() - pitches.min()
        if len(pitches) > 1:
            leap = np.abs(np.diff(pitches)) > LEAP_SEMITONES
            crosses = np.diff(onsets // steps_per_bar) > 0
            across[0] += int((leap & crosses).sum())
            across[1] += int(crosses.sum())
            within[0] += int((leap & ~crosses).sum())
            within[1] += int((~crosses).sum())
        repeat_bars[i] = bar_repeats(row, steps_per_bar)
    return {
        "n": int(n),
        "key_fit": _mean(fits),
        "diatonic_share": _share(int((fits[voiced] >= 1.0).sum()), int(voiced.sum())),
        "degenerate_share": _share(degenerate, n),
        "silent_share": _share(silent, n),
        "single_note_share": _share(single, n),
        "repeated_pitch_share": _share(repeated, n),
        "notes_per_bar": float(counts.mean() / bars) if n else None,
        "pitch_range": _mean(ranges),
        "leap_share_across_bars": _share(*across),
        "leap_share_within_bars": _share(*within),
        "bar_repeat_share": _share(int((repeat_bars > 0).sum()), n),
        "bar_repeats_per_phrase": float(repeat_bars.mean()) if n else None,
    }


def note_matches(reference: np.ndarray, estimate: np.ndarray) -> tuple[int, int, int]:
    """(matched notes, reference notes, estimated notes) of one phrase and its estimate.

    Notes match on onset (the same step) and pitch (the same semitone), offsets ignored,
    one to one, by :func:`mir_eval.transcription.match_notes`; steps are passed as seconds
    with an onset tolerance of half a step and mir_eval's pitch tolerance of 50 cents.
    """
    import mir_eval

    ref_intervals, ref_pitches = note_intervals(reference)
    est_intervals, est_pitches = note_intervals(estimate)
    if len(ref_pitches) == 0 or len(est_pitches) == 0:
        return 0, len(ref_pitches), len(est_pitches)
    matched = mir_eval.transcription.match_notes(
        ref_intervals, mir_eval.util.midi_to_hz(ref_pitches.astype(np.float64)),
        est_intervals, mir_eval.util.midi_to_hz(est_pitches.astype(np.float64)),
        onset_tolerance=ONSET_TOLERANCE_STEPS, pitch_tolerance=50.0, offset_ratio=None)
    return len(matched), len(ref_pitches), len(est_pitches)


def _f1(precision: float, recall: float) -> float:
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def reconstruction_measures(reference: np.ndarray, reconstruction: np.ndarray
                            ) -> dict[str, Any]:
    """Reference phrases against their reconstructions, both (N, T).

    Keys (``docs/measures.md``): ``n``, ``token_accuracy``, ``hold_baseline_accuracy``
    (the token accuracy of predicting hold at every step), ``note_precision``,
    ``note_recall``, ``note_f1`` (over all notes of the set), ``note_f1_mean`` (the mean of
    each phrase's F1), ``repeated_pitch_share`` (reconstructions with one pitch more than
    8 times in a row).
    """
    reference = _as_tokens(reference)
    reconstruction = _as_tokens(reconstruction)
    if reference.shape != reconstruction.shape:
        raise ValueError(f"shapes differ: {reference.shape} and {reconstruction.shape}")
    n = len(reference)
    matched = n_ref = n_est = 0
    f1s = np.zeros(n)
    repeated = 0
    for i, (ref, est) in enumerate(zip(reference, reconstruction, strict=True)):
        m, r, e = note_matches(ref, est)
        matched, n_ref, n_est = matched + m, n_ref + r, n_est + e
        f1s[i] = 1.0 if r == e == 0 else _f1(m / e if e else 0.0, m / r if r else 0.0)
        repeated += longest_pitch_run(notes(est)[1]) > MAX_REPEATS
    precision = matched / n_est if n_est else 0.0
    recall = matched / n_ref if n_ref else 0.0
    return {
        "n": int(n),
        "token_accuracy": float((reference == reconstruction).mean()) if n else None,
        "hold_baseline_accuracy": float((reference == HOLD).mean()) if n else None,
        "note_precision": precision,
        "note_recall": recall,
        "note_f1": _f1(precision, recall),
        "note_f1_mean": float(f1s.mean()) if n else None,
        "repeated_pitch_share": _share(repeated, n),
    }
