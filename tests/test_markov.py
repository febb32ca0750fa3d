"""The Markov-chain baseline: events from tokens and back, counts, seeded sampling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melodyvae.melody import HOLD, NOTE_OFFSET, REST
from melodyvae.training.markov import MarkovChain, events_of, tokens_of


def events_phrase(events: list[tuple[int | None, int]]) -> np.ndarray:
    """Tokens from (MIDI pitch or None for a rest, duration in steps) events."""
    row = []
    for pitch, duration in events:
        row += [REST if pitch is None else pitch + NOTE_OFFSET] + [HOLD] * (duration - 1)
    return np.asarray(row, dtype=np.int64)


def event_grams(chain: MarkovChain, row: np.ndarray) -> list[tuple]:
    """(previous 3 events, event) of one phrase, phrase start marked with None."""
    kinds, durations = events_of(row)
    seq = [None] * chain.order + list(zip(kinds.tolist(), durations.tolist(), strict=True))
    return [tuple(seq[i : i + chain.order + 1]) for i in range(len(seq) - chain.order)]


def test_events_of_a_phrase() -> None:
    row = events_phrase([(60, 4), (None, 2), (62, 10)])
    kinds, durations = events_of(row)
    assert kinds.tolist() == [60 + NOTE_OFFSET, REST, 62 + NOTE_OFFSET]
    assert durations.tolist() == [4, 2, 10]


def test_leading_holds_and_double_rests_read_as_one_rest() -> None:
    row = np.array([HOLD, HOLD, REST, HOLD, 50, HOLD, REST, REST])
    kinds, durations = events_of(row)
    assert kinds.tolist() == [REST, 50, REST]
    assert durations.tolist() == [4, 2, 2]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 89), min_size=1, max_size=64))
def test_events_round_trip(tokens: list[int]) -> None:
    row = np.asarray(tokens, dtype=np.int64)
    kinds, durations = events_of(row)
    assert durations.sum() == len(row)
    again = tokens_of(kinds, durations, len(row))
    k2, d2 = events_of(again)
    assert k2.tolist() == kinds.tolist() and d2.tolist() == durations.tolist()
    notes = row > REST
    assert (again[notes] == row[notes]).all()  # every note where it was


def test_tokens_of_cuts_the_last_event() -> None:
    row = tokens_of(np.array([60, 62]), np.array([4, 8]), 8)
    assert row.tolist() == [60, 0, 0, 0, 62, 0, 0, 0]


# Two 2-bar phrases of quarter notes that share the context (C, D, E) with
# different continuations, every context followed by something.
CDE_C = events_phrase([(p, 4) for p in (60, 62, 64, 60, 62, 64, 60, 62)])
CDE_G = events_phrase([(p, 4) for p in (60, 62, 64, 67, 60, 62, 64, 67)])


def test_samples_only_seen_transitions() -> None:
    corpus = np.stack([CDE_C, CDE_G])
    chain = MarkovChain.fit(corpus)
    seen = {g for row in corpus for g in event_grams(chain, row)}
    samples = chain.sample(50, seed=3)
    assert samples.shape == (50, 32)
    sampled = [g for row in samples for g in event_grams(chain, row)]
    assert set(sampled) <= seen
    assert chain.backoffs == 0
    assert len({row.tobytes() for row in samples}) > 2  # it mixes the two phrases


def test_one_phrase_with_unique_contexts_is_reproduced() -> None:
    scale = events_phrase([(p, 2) for p in (60, 62, 64, 65, 67, 69, 71, 72)] + [(None, 16)])
    chain = MarkovChain.fit(scale[None])
    assert (chain.sample(5, seed=0) == scale).all()


def test_seeded() -> None:
    chain = MarkovChain.fit(np.stack([CDE_C, CDE_G]))
    assert (chain.sample(20, seed=7) == chain.sample(20, seed=7)).all()
    assert (chain.sample(20, seed=7) != chain.sample(20, seed=8)).any()


def test_dead_end_backs_off_and_still_fills_the_phrase() -> None:
    # After (C, D, E) comes a long F or G then A; (E, G, A) ends its phrase and was never
    # followed by anything, so a sample that takes G reaches it at step 6 and backs off.
    a = events_phrase([(60, 1), (62, 1), (64, 1), (65, 13)])
    b = events_phrase([(59, 10), (60, 1), (62, 1), (64, 1), (67, 1), (69, 2)])
    chain = MarkovChain.fit(np.stack([a, b]))
    samples = chain.sample(40, seed=0)
    assert samples.shape == (40, 16)
    assert chain.backoffs > 0
    took_g = [row for row in samples if row[3] == 67 + NOTE_OFFSET]
    assert took_g and all(row[6] > HOLD for row in took_g)  # something new after the A


def test_needs_phrases() -> None:
    with pytest.raises(ValueError, match="phrases"):
        MarkovChain.fit(np.zeros((0, 16), dtype=np.int64))
