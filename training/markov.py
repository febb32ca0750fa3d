"""A third-order Markov chain on note events: the baseline every model card carries.

An *event* is a note or a rest with its duration: ``(pitch token, steps)``, where the pitch
token is the note-on token (``2..89``) or ``1`` for a rest, and ``steps`` counts the grid
steps until the next event. A phrase's tokens read as a list of events (leading holds, as
in a window that starts inside a note, read as a rest; consecutive rests merge), and an
event list writes back to tokens exactly.

The chain counts every (``order`` events of context, next event) in the training phrases,
each phrase's context starting as ``order`` begin-of-phrase marks, so the chain also learns
how phrases open. Pitches are absolute (no transposition): the chain keeps the key it starts
in the way the data does. It samples event after event from those counts until the phrase
is full, cutting the last event at the phrase end. A context never followed by anything in
training (it was only ever seen at a phrase end) backs off to its longest suffix that was;
:attr:`MarkovChain.backoffs` counts how often sampling did that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from melodyvae.melody import HOLD, REST

ORDER = 3  # events of context
_BEGIN = 0  # the begin-of-phrase mark in the event vocabulary


def events_of(row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One phrase (T,) of tokens -> its events as (pitch tokens, durations in steps)."""
    row = np.asarray(row, dtype=np.int64)
    starts = np.flatnonzero(row != HOLD)
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    kinds = row[starts]
    kinds[kinds == HOLD] = REST  # leading holds: the phrase opens inside an earlier note
    keep = np.ones(len(starts), dtype=bool)
    keep[1:] = ~((kinds[1:] == REST) & (kinds[:-1] == REST))
    starts, kinds = starts[keep], kinds[keep]
    durations = np.diff(np.append(starts, len(row)))
    return kinds, durations


def tokens_of(kinds: np.ndarray, durations: np.ndarray, steps: int) -> np.ndarray:
    """Events -> (steps,) tokens, the last event cut (or the phrase padded with rest)."""
    row = np.zeros(steps, dtype=np.int64)
    t = 0
    for kind, duration in zip(kinds, durations, strict=True):
        if t >= steps:
            break
        row[t] = kind
        t += int(duration)
    if t < steps:
        row[t] = REST
    return row


@dataclass
class MarkovChain:
    """Event counts of a corpus; :meth:`fit` builds one, :meth:`sample` draws phrases."""

    order: int  # events of context
    steps: int  # steps per phrase (T)
    events: np.ndarray  # (V, 2) pitch token and duration of each event id (row 0: begin)
    bits: int  # bits per event id in a packed n-gram
    grams: list[np.ndarray]  # per context length k = 0..order: sorted packed (k+1)-grams
    counts: list[np.ndarray]  # how often each of those was seen
    backoffs: int = field(default=0)  # times sampling backed off to a shorter context

    @classmethod
    def fit(cls, tokens: np.ndarray, order: int = ORDER) -> MarkovChain:
        """Count the events of phrases ``tokens`` (N, T)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or len(tokens) == 0:
            raise ValueError("a Markov chain needs phrases (N, T), N > 0")
        steps = tokens.shape[1]
        per_phrase = [events_of(row) for row in tokens]
        kinds = np.concatenate([k for k, _ in per_phrase])
        durations = np.concatenate([d for _, d in per_phrase])
        raw = kinds * (steps + 1) + durations
        table, ids = np.unique(raw, return_inverse=True)
        ids = ids.reshape(-1) + 1  # 0 is the begin mark
        events = np.zeros((len(table) + 1, 2), dtype=np.int64)
        events[1:, 0], events[1:, 1] = np.divmod(table, steps + 1)
        bits = max(1, int(len(events) - 1).bit_length())
        if bits * (order + 1) > 63:
            raise ValueError(f"{len(events)} distinct events do not pack into "
                             f"{order + 1}-grams")
        lengths = np.array([len(k) for k, _ in per_phrase])
        # every phrase padded with `order` begin marks; (order+1)-grams inside each phrase
        padded = np.zeros(len(ids) + order * len(per_phrase), dtype=np.int64)
        phrase = np.repeat(np.arange(len(per_phrase)), lengths)
        positions = np.arange(len(ids)) + order * (phrase + 1)  # after each phrase's marks
        padded[positions] = ids
        window = sliding_window_view(padded, order + 1)  # (len, order + 1)
        gram_rows = window[positions - order]  # one per event: its context and itself
        grams, counts = [], []
        for k in range(order + 1):
            packed = np.zeros(len(gram_rows), dtype=np.int64)
            for column in gram_rows[:, order - k :].T:
                packed = (packed << bits) | column
            unique, count = np.unique(packed, return_counts=True)
            grams.append(unique)
            counts.append(count)
        return cls(order, steps, events, bits, grams, counts)

    def _next(self, context: list[int], rng: np.random.Generator) -> int:
        for k in range(min(self.order, len(context)), -1, -1):
            key = 0
            for event in context[len(context) - k :]:
                key = (key << self.bits) | event
            lo, hi = np.searchsorted(self.grams[k], [key << self.bits, (key + 1) << self.bits])
            if hi > lo:
                if k < self.order:
                    self.backoffs += 1
                weights = self.counts[k][lo:hi]
                pick = rng.choice(hi - lo, p=weights / weights.sum())
                return int(self.grams[k][lo + pick] & ((1 << self.bits) - 1))
        raise AssertionError("the order-0 table holds every event")

    def sample_events(self, rng: np.random.Generator) -> list[int]:
        """Event ids of one phrase, enough to fill :attr:`steps`."""
        context = [_BEGIN] * self.order
        out: list[int] = []
        filled = 0
        while filled < self.steps:
            event = self._next(context, rng)
            out.append(event)
            context = context[1:] + [event]
            filled += int(self.events[event, 1])
        return out

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` phrases as tokens (n, T); the same seed gives the same phrases."""
        rng = np.random.default_rng(seed)
        rows = []
        for _ in range(n):
            ids = np.asarray(self.sample_events(rng), dtype=np.int64)
            rows.append(tokens_of(self.events[ids, 0], self.events[ids, 1], self.steps))
        return np.stack(rows) if rows else np.zeros((0, self.steps), dtype=np.int64)
