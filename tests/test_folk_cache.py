"""The folk-tune cache (training.corpus.folk_tunes): parsed once, read back the same.

Parsing all of music21's folk collections takes minutes, so the tune list is cut to a few
real tunes of one collection plus one that music21 cannot read; everything else (parsing
in worker processes, writing the cache, reading it) runs as in a real build."""

from __future__ import annotations

from pathlib import Path

import pytest

from melodyvae.training import corpus


@pytest.fixture
def few_tunes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    texts = corpus.folk_tune_texts(["miscFolk"])[:6]
    texts.append(("broken#0", "X:1\nT:broken\nM:4/4\nK:C\n|: [[[ ((( :|\n"))
    real = corpus.folk_tune_texts
    monkeypatch.setattr(corpus, "folk_tune_texts",
                        lambda collections=corpus.FOLK_COLLECTIONS: texts
                        if tuple(collections) == corpus.FOLK_COLLECTIONS else real(collections))
    return texts


def test_folk_tunes_come_back_from_the_cache_as_they_were_parsed(
        tmp_path: Path, few_tunes: list[tuple[str, str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    first_report = corpus.BuildReport()
    parsed = corpus.folk_tunes(first_report, tmp_path, workers=2)
    caches = list(tmp_path.glob("folk-*.npz"))
    assert len(caches) == 1 and not list(tmp_path.glob("*.tmp*"))
    assert len(parsed) >= 5  # the real tunes parse
    assert all(t.melody.notes for t in parsed)
    assert "broken#0" not in [t.name for t in parsed]

    monkeypatch.setattr(corpus, "folk_tune_texts", None)  # a second build must not parse
    again_report = corpus.BuildReport()
    again = corpus.folk_tunes(again_report, tmp_path, workers=2)
    assert [t.name for t in again] == [t.name for t in parsed]
    assert [t.melody for t in again] == [t.melody for t in parsed]
    assert again_report.inputs == first_report.inputs == len(few_tunes)
    assert again_report.skipped == first_report.skipped
    assert sum(first_report.skipped.values()) == len(few_tunes) - len(parsed)
