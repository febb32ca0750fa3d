"""Corpus building: windows, meters, the split by tune, the file format, MIDI folders and
the music21 folk path (on a few small ABC texts, not the whole collection)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from conftest import scale_melody
from hypothesis import given, settings
from hypothesis import strategies as st

from melodyvae.melody import Melody, Note, from_tokens, steps_per_bar_for, to_tokens
from melodyvae.midi import write_midi
from melodyvae.training.corpus import (
    CORPUS_FORMAT_VERSION,
    SPLITS,
    BuildReport,
    Corpus,
    CorpusError,
    NoPhrasesError,
    Tune,
    build_corpus,
    melodies_from_midi_folder,
    melody_from_music21,
    midi_tunes,
    split_abc,
    split_of,
    windows,
)


def spans(melody: Melody) -> list[tuple[int, int, int]]:
    return [(n.start, n.end, n.pitch) for n in melody.notes]


def quarter_tune(name: str, n_bars: int, meter: tuple[int, int] = (4, 4),
                 silent_bars: set[int] | frozenset[int] = frozenset(),
                 seed: int = 0) -> Tune:
    """Quarter notes (4 steps) filling ``n_bars`` bars of ``meter``, but for silent bars."""
    spb = steps_per_bar_for(*meter)
    rng = random.Random(seed)
    notes = [Note(s, s + 4, rng.randint(55, 80)) for s in range(0, n_bars * spb, 4)
             if s // spb not in silent_bars]
    return Tune(name, Melody(tuple(notes), n_bars * spb, spb, 120.0, meter))


def expected_window(melody: Melody, start: int, length: int) -> list[tuple[int, int, int]]:
    return [(n.start - start, min(n.end, start + length) - start, n.pitch)
            for n in melody.notes if start <= n.start < start + length]


# ---------------------------------------------------------------------------- windows


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.sampled_from([1, 2, 4]), st.integers(1, 4))
def test_window_counts_and_contents(n_bars: int, bars: int, hop: int) -> None:
    tune = quarter_tune("t", n_bars)
    report = BuildReport()
    if n_bars < bars and n_bars * 16 < 0.75 * bars * 16:
        with pytest.raises(NoPhrasesError):
            build_corpus([tune], bars, hop, "test", report)
        assert report.skipped["shorter than a phrase or too sparse"] == 1
        return
    corpus = build_corpus([tune], bars, hop, "test", report)
    starts = [0] if n_bars < bars else list(range(0, n_bars - bars + 1, hop))
    assert len(corpus.tokens) == len(starts) == report.phrases
    assert corpus.tokens.shape[1] == bars * 16
    assert corpus.tokens.dtype == np.uint8
    for row, start in zip(corpus.tokens, starts, strict=True):
        decoded = from_tokens(row)
        assert spans(decoded) == expected_window(tune.melody, start * 16, bars * 16)
    assert report.kept == 1
    assert report.windows_dropped_sparse == 0


def test_sparse_windows_are_dropped_and_counted() -> None:
    tune = quarter_tune("sparse", 8, silent_bars={2, 3, 4, 5, 6, 7})
    lone = Note(6 * 16, 6 * 16 + 4, 70)  # one note in bar 6: not enough for a phrase
    melody = Melody((*tune.melody.notes, lone), tune.melody.total_steps)
    report = BuildReport()
    corpus = build_corpus([Tune("sparse", melody)], 4, 1, "test", report)
    # windows at bars 0..4: 8, 4, 0, 1 and 1 notes; at least 2 are needed
    assert len(corpus.tokens) == 2 == report.phrases
    assert report.windows_dropped_sparse == 3


def test_meters_other_than_whole_16_step_bars_are_dropped_and_counted() -> None:
    tunes = [
        quarter_tune("four", 8, (4, 4)),
        quarter_tune("two", 16, (2, 4)),  # 16 bars of 8 steps: 8 bars of 16
        quarter_tune("three", 12, (3, 4)),
        quarter_tune("three-b", 12, (3, 4), seed=1),
        quarter_tune("six-eight", 8, (6, 8)),
    ]
    report = BuildReport()
    corpus = build_corpus(tunes, 4, 1, "test", report)
    assert report.meters == {"4/4": 1, "2/4": 1, "3/4": 2, "6/8": 1}
    assert report.meters_dropped == {"3/4": 2, "6/8": 1}
    assert report.kept == 2
    assert corpus.meta["tunes"] == ["four", "two"]
    assert len(corpus.tokens) == 5 + 5
    two_rows = corpus.tokens[corpus.tune == 1]
    two = tunes[1].melody
    for i, row in enumerate(two_rows):  # the 2/4 tune laid on 16-step bars
        assert spans(from_tokens(row)) == expected_window(two, 16 * i, 64)
    assert any("3/4" in line for line in report.lines())


def test_nothing_usable_raises() -> None:
    with pytest.raises(NoPhrasesError):
        build_corpus([quarter_tune("waltz", 16, (3, 4))], 4, 1, "test", BuildReport())
    with pytest.raises(NoPhrasesError):
        build_corpus([], 4, 1, "test", BuildReport())


# ---------------------------------------------------------------------------- the split


def many_tunes(n: int = 120) -> list[Tune]:
    return [quarter_tune(f"collection/tune-{i}", 5 + i % 4, seed=i) for i in range(n)]


def test_split_is_by_tune_without_leakage() -> None:
    tunes = many_tunes()
    report = BuildReport()
    corpus = build_corpus(tunes, 4, 1, "test", report)
    names = corpus.meta["tunes"]
    assert len(names) == len(tunes)
    for index in np.unique(corpus.tune):
        splits = np.unique(corpus.split[corpus.tune == index])
        assert len(splits) == 1, f"tune {names[index]} is in several splits"
        assert splits[0] == split_of(names[index])
    assert set(np.unique(corpus.split)) == {0, 1, 2}  # 120 tunes fill every split
    tune_sets = [set(corpus.tune[corpus.split == s].tolist()) for s in range(3)]
    assert not tune_sets[0] & tune_sets[1]
    assert not tune_sets[0] & tune_sets[2]
    assert not tune_sets[1] & tune_sets[2]
    assert report.split_phrases == {s: int((corpus.split == i).sum())
                                    for i, s in enumerate(SPLITS)}
    assert sum(report.split_tunes.values()) == len(tunes)
    for s in range(3):
        assert len(corpus.subset(SPLITS[s])) == int((corpus.split == s).sum())


def test_split_is_deterministic_and_independent_of_order() -> None:
    tunes = many_tunes(40)
    a = build_corpus(tunes, 4, 1, "test", BuildReport())
    b = build_corpus(tunes, 4, 1, "test", BuildReport())
    for key in ("tokens", "tune", "split"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
    assert a.meta == b.meta
    shuffled = list(tunes)
    random.Random(3).shuffle(shuffled)
    c = build_corpus(shuffled, 4, 1, "test", BuildReport())

    def by_name(corpus: Corpus) -> dict[str, tuple[int, list[bytes]]]:
        out = {}
        for index, name in enumerate(corpus.meta["tunes"]):
            rows = corpus.tokens[corpus.tune == index]
            out[name] = (int(corpus.split[corpus.tune == index][0]),
                         [r.tobytes() for r in rows])
        return out

    assert by_name(a) == by_name(c)


def test_split_of_proportions() -> None:
    splits = [split_of(f"tune {i}") for i in range(4000)]
    counts = np.bincount(splits, minlength=3) / len(splits)
    assert 0.86 < counts[0] < 0.94
    assert 0.03 < counts[1] < 0.07
    assert 0.03 < counts[2] < 0.07
    assert split_of("tune 7") == split_of("tune 7")


# ---------------------------------------------------------------------------- the file


def test_corpus_save_load_round_trip(tmp_path: Path) -> None:
    corpus = build_corpus(many_tunes(30), 4, 2, "synthetic", BuildReport())
    path = tmp_path / "sub" / "corpus.data"  # any name, not only .npz
    corpus.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["corpus.data"]  # no temporary left
    loaded = Corpus.load(path)
    for key in ("tokens", "tune", "split"):
        np.testing.assert_array_equal(getattr(loaded, key), getattr(corpus, key))
        assert getattr(loaded, key).dtype == getattr(corpus, key).dtype
    assert loaded.meta == corpus.meta
    assert loaded.bars == 4 and loaded.steps_per_bar == 16
    assert loaded.meta["format_version"] == CORPUS_FORMAT_VERSION
    summary = loaded.summary()
    assert summary["tunes"] == 30 and summary["hop_bars"] == 2
    assert sum(summary["phrases"].values()) == len(corpus.tokens)  # type: ignore[union-attr]
    with pytest.raises(CorpusError):
        loaded.subset("holdout")


def test_corpus_load_rejects_garbage(tmp_path: Path) -> None:
    text = tmp_path / "text.npz"
    text.write_text("not a corpus\n" * 20)
    with pytest.raises(CorpusError):
        Corpus.load(text)
    with pytest.raises(CorpusError):
        Corpus.load(tmp_path / "missing.npz")
    keys = tmp_path / "keys.npz"
    np.savez(keys, tokens=np.zeros((2, 64), np.uint8))
    with pytest.raises(CorpusError):
        Corpus.load(keys)
    corpus = build_corpus(many_tunes(5), 4, 1, "synthetic", BuildReport())
    corpus.meta["format_version"] = 99
    future = tmp_path / "future.npz"
    corpus.save(future)
    with pytest.raises(CorpusError, match="format"):
        Corpus.load(future)


def test_corpus_load_rejects_a_truncated_file(tmp_path: Path) -> None:
    corpus = build_corpus(many_tunes(20), 4, 1, "synthetic", BuildReport())
    whole = tmp_path / "whole.npz"
    corpus.save(whole)
    data = whole.read_bytes()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorpusError):
        Corpus.load(cut)


# ---------------------------------------------------------------------------- MIDI folders


def test_midi_tunes_reads_a_folder_and_reports_broken_files(tmp_path: Path) -> None:
    folder = tmp_path / "midi"
    (folder / "sub").mkdir(parents=True)
    melodies = {"a.mid": scale_melody(8), "sub/b.midi": scale_melody(4, qpm=90.0),
                "sub/c.MID": scale_melody(6).transpose(3)}
    for name, melody in melodies.items():
        write_midi(melody, folder / name)
    (folder / "broken.mid").write_text("not MIDI at all")
    (folder / "readme.txt").write_text("ignored: not a MIDI suffix")
    report = BuildReport()
    tunes = midi_tunes(folder, report, workers=2)
    assert report.inputs == 4
    assert report.skipped == {"NotMidiError": 1}
    assert sorted(t.name for t in tunes) == sorted(melodies)
    for tune in tunes:
        assert spans(tune.melody) == spans(melodies[tune.name])
    corpus = build_corpus(tunes, 4, 1, str(folder), report)
    distinct = sum(len({to_tokens(w)[0].tobytes() for w in windows(t.melody, 4, 1)})
                   for t in tunes)  # windows equal to an earlier one of the same tune go
    assert 3 <= len(corpus.tokens) == distinct <= 5 + 1 + 3
    assert any("NotMidiError" in line for line in report.lines())
    assert len(melodies_from_midi_folder(folder)) == 3


def test_midi_tunes_of_an_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(NoPhrasesError):
        midi_tunes(tmp_path, BuildReport(), workers=1)
    with pytest.raises(CorpusError):
        midi_tunes(tmp_path / "missing", BuildReport(), workers=1)


# ---------------------------------------------------------------------------- music21 folk

ABC_FILE = """%abc
% a file header that every tune shares
L:1/8
R:reel

X:1
T:First
M:4/4
K:G
GABc d2d2|

X:2
T:Second
M:3/4
K:D
DEF A2A|

X:3
T:Third
K:C
C8|
"""


def test_split_abc() -> None:
    tunes = split_abc(ABC_FILE)
    assert len(tunes) == 3
    header = ABC_FILE[: ABC_FILE.index("X:1")]
    for tune, title in zip(tunes, ("First", "Second", "Third"), strict=True):
        assert tune.startswith(header)
        body = tune[len(header):]
        assert body.startswith("X:")
        assert f"T:{title}" in body
        assert body.count("X:") == 1
    assert split_abc("no tunes here\nT:x\n") == []


PICKUP_REPEATS = """X:1
T:Pickup and repeats
M:4/4
L:1/8
K:C
C2|:DEFG ABcd|e4-e4:|cBAG FEDC|C8|]
"""


def test_melody_from_music21_pads_the_pickup_and_expands_repeats() -> None:
    music21 = pytest.importorskip("music21")
    score = music21.converter.parse(PICKUP_REPEATS, format="abc")
    parsed = melody_from_music21(score)
    melody = parsed.melody
    assert parsed.expanded and (parsed.notated_steps, parsed.expanded_steps) == (80, 112)
    assert melody.time_signature == (4, 4) and melody.steps_per_bar == 16
    run = [62, 64, 65, 67, 69, 71, 72, 74]  # D E F G A B c d
    expected = [(12, 16, 60)]  # the pickup: a quarter note just before the first bar line
    for bar in (1, 3):  # the repeated section, twice
        start = 16 * bar
        expected += [(start + 2 * i, start + 2 * i + 2, p) for i, p in enumerate(run)]
        expected.append((start + 16, start + 32, 76))  # e4-e4: a tie, one note
    expected += [(80 + 2 * i, 82 + 2 * i, p)
                 for i, p in enumerate([72, 71, 69, 67, 65, 64, 62, 60])]  # cBAG FEDC
    expected.append((96, 112, 60))
    assert spans(melody) == expected
    assert melody.total_steps == 112


def test_melody_from_music21_three_four_pickup() -> None:
    music21 = pytest.importorskip("music21")
    abc = "X:1\nT:Waltz\nM:3/4\nL:1/4\nK:F\nC|F2A|c3|A2F|C3|F3|]\n"
    melody = melody_from_music21(music21.converter.parse(abc, format="abc")).melody
    assert melody.time_signature == (3, 4) and melody.steps_per_bar == 12
    assert spans(melody)[:3] == [(8, 12, 60), (12, 20, 65), (20, 24, 69)]
    assert melody.total_steps == 12 * 6
    # every bar's first note falls on a bar line
    assert [n.start for n in melody.notes if n.start % 12 == 0] == [12, 24, 36, 48, 60]


def test_a_repeat_expansion_past_the_limit_is_read_as_notated() -> None:
    music21 = pytest.importorskip("music21")
    score = music21.converter.parse(PICKUP_REPEATS, format="abc")
    parsed = melody_from_music21(score, max_expansion=1.2)  # 112 / 80 = 1.4: a blow-up here
    assert not parsed.expanded
    assert parsed.melody.total_steps == parsed.notated_steps == 80
    assert parsed.expanded_steps == 112
    assert [n.pitch for n in parsed.melody.notes].count(76) == 1  # the section once


def test_repeated_windows_of_a_tune_are_dropped_and_long_tunes_capped() -> None:
    # 4 distinct bars played 10 times over: 40 bars, 37 windows of 4 bars, 4 of them distinct
    bar_pitches = [60, 62, 64, 65]
    notes = tuple(Note(16 * b + 4 * i, 16 * b + 4 * i + 4, bar_pitches[b % 4] + i)
                  for b in range(40) for i in range(4))
    looped = Tune("looped", Melody(notes, 40 * 16, 16, 120.0, (4, 4)))
    long_tune = quarter_tune("long", 200, seed=1)  # 197 windows of random quarter notes
    report = BuildReport()
    corpus = build_corpus([looped, long_tune, quarter_tune("short", 8)], 4, 1, "test", report,
                          max_windows_per_tune=50)
    per_tune = np.bincount(corpus.tune)
    assert per_tune.tolist() == [4, 50, 5]
    assert len({row.tobytes() for row in corpus.tokens[corpus.tune == 0]}) == 4
    assert report.windows_dropped_duplicate == 33
    assert report.tunes_capped == 1 and report.windows_dropped_cap == 197 - 50
    shares = report.largest_shares
    assert [row["tune"] for row in shares] == ["long", "short", "looped"]
    assert shares[0]["phrases"] == 50 and shares[0]["share"] == pytest.approx(50 / 59, abs=1e-4)
    text = "\n".join(report.lines())
    assert "largest contributors" in text and "long: 50" in text
