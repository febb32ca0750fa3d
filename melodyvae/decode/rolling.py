"""A free-running decode that phrases join and leave between steps (the server's CPU decoder).

:func:`melodyvae.decode.sample` runs a fixed batch from its first step to its last; a
:class:`Rolling` batch runs the same NumPy steps for phrases that each have their own
progress, at the same cost for a lone phrase (``python bench/decode.py``,
``rolling_over_parallel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

from melodyvae.decode.common import rows
from melodyvae.decode.numpy_stepper import FlatNumpy, HierarchicalNumpy, _pick

_G = TypeVar("_G", bound="_Group")


def _take(x: np.ndarray | list[np.ndarray], keep: np.ndarray) -> Any:
    return [a[keep] for a in x] if isinstance(x, list) else x[keep]


def _cat(x: np.ndarray | list[np.ndarray], y: np.ndarray | list[np.ndarray]) -> Any:
    if isinstance(x, list) and isinstance(y, list):
        return [np.concatenate([a, b]) for a, b in zip(x, y, strict=True)]
    return np.concatenate([x, y])


class _Group:
    """Per-row arrays (and per-layer lists of them) that rows leave and join together."""

    def select(self: _G, keep: np.ndarray) -> _G:
        return type(self)(**{name: _take(x, keep) for name, x in vars(self).items()})

    def join(self: _G, other: _G) -> _G:
        return type(self)(**{name: _cat(x, vars(other)[name]) for name, x in vars(self).items()})


@dataclass
class _Conducting(_Group):
    """Phrases whose conductor is running, one row each."""

    h: list[np.ndarray]  # per layer (P, Hc)
    c: list[np.ndarray]
    bars: np.ndarray  # (P, bars, C) bar embeddings, bar k at column (start + k) % bars
    start: np.ndarray  # (P,) the step each phrase's conductor started at
    u: np.ndarray  # (P, bars, steps) sampling uniforms of each bar row
    temperature: np.ndarray  # (P,)
    phrase: np.ndarray  # (P,) the caller's key


@dataclass
class _Rows(_Group):
    """Rows decoding tokens, one per bar (flat: per phrase); a phrase's rows are adjacent
    and in bar order. Every row lives exactly ``steps`` steps, so its step-t token and
    uniform sit at column (start + t) % steps: each step writes and reads one column."""

    h: list[np.ndarray]  # per layer (N, H)
    c: list[np.ndarray]
    cond_gates: np.ndarray  # (N, 4H) layer 0's constant input projection with its biases
    token: np.ndarray  # (N,) the previous token
    start: np.ndarray  # (N,) the step each row started at
    out: np.ndarray  # (N, steps) tokens so far
    u: np.ndarray  # (N, steps) sampling uniforms (zeros for greedy rows)
    temperature: np.ndarray  # (N, 1) float32, 0 for greedy
    phrase: np.ndarray  # (N,) the caller's key


def _shifted(a: np.ndarray, shift: int) -> np.ndarray:
    """``np.roll(a, -shift, axis=1)``: column ``shift`` first (no copy for 0)."""
    shift %= a.shape[1]
    return a if shift == 0 else np.concatenate([a[:, shift:], a[:, :shift]], axis=1)


def _joined(group: _G | None, new: _G) -> _G:
    return new if group is None else group.join(new)


def _kept(group: _G, keep: np.ndarray) -> _G | None:
    if keep.all():
        return group
    return group.select(keep) if keep.any() else None


class Rolling:
    """Free-running decodes that join and leave a running batch between steps.

    Every phrase has its own progress: a phrase added while others are half-way is stepped with them
    from its first step (a hierarchical model's conductor steps, then its bar steps), a
    phrase :meth:`drop`-ped leaves at once, and :meth:`step` returns each phrase as it
    completes. A server decodes its clients' latest requests this way: none waits for a
    batch it arrived too late to join. A phrase's tokens are those of ``sample`` on its z
    alone with the same generator (BLAS computes each row of a product on its own).

    Call it inside :func:`melodyvae.decode.numpy_context`; not thread-safe.
    """

    def __init__(self, engine: HierarchicalNumpy | FlatNumpy) -> None:
        self.engine = engine
        cfg = engine.cfg
        self.stepper = engine.bars if isinstance(engine, HierarchicalNumpy) else engine.stepper
        self.steps = cfg.steps_per_bar if isinstance(engine, HierarchicalNumpy) else cfg.steps
        self.rows_per_phrase = rows(cfg, 1)
        self.conducting: _Conducting | None = None
        self.rows: _Rows | None = None
        self.keys: set[int] = set()  # the caller's keys of the phrases being decoded
        self.width = 0  # rows the next step computes (conductor rows and token rows)
        self._step = 0  # the number of the next step
        self._bar = 0  # the number of the next conductor step
        # conductor steps per step: a phrase's conductor takes at most four steps, so that
        # phrases that join one after another soon share their token steps
        self.conductor_steps = -(-cfg.bars // 4) if isinstance(engine, HierarchicalNumpy) else 0
        self._sampled = np.zeros(0, dtype=np.int64)  # rows that sample
        self._conducted_at = self._decoded_at = -1  # the (conductor) step the oldest rows
        # complete at
        self._conductor_gates = np.zeros((0, 0), dtype=np.float32)

    def __len__(self) -> int:
        """Phrases being decoded."""
        return len(self.keys)

    def _changed(self) -> None:
        """Refresh what is computed per membership, not per step."""
        cd, r = self.conducting, self.rows
        self.width = (0 if cd is None else len(cd.phrase)) + (0 if r is None else len(r.phrase))
        if cd is not None and isinstance(self.engine, HierarchicalNumpy):
            self._conducted_at = int(cd.start.min()) + self.rows_per_phrase - 1
            bias = self.engine.conductor.bias0  # the conductor's input is zero
            self._conductor_gates = np.broadcast_to(bias, (len(cd.phrase), len(bias)))
        if r is not None:
            self._decoded_at = int(r.start.min()) + self.steps - 1
            self._sampled = np.flatnonzero(r.temperature[:, 0] > 0)

    def add(self, phrases: list[tuple[int, np.ndarray, float, torch.Generator | None]]
            ) -> None:
        """Start decoding each (key, z (Z,), temperature, generator); a phrase is sampled
        with its generator when its temperature is above 0."""
        if not phrases:
            return
        n = self.rows_per_phrase
        z = np.stack([z for _, z, _, _ in phrases]).astype(self.stepper.out_weight.dtype)
        u = np.zeros((len(z), n, self.steps), dtype=np.float32)
        temperature = np.zeros(len(z), dtype=np.float32)
        ids = np.array([key for key, _, _, _ in phrases], dtype=np.int64)
        for i, (key, _, temp, generator) in enumerate(phrases):
            if temp > 0:  # drawn as sample() draws them for this phrase alone
                u[i] = torch.rand(self.steps, n, generator=generator).numpy().T
                temperature[i] = temp
            self.keys.add(key)
        if isinstance(self.engine, HierarchicalNumpy):
            h, c = self.engine.cond_init(z)
            bars = np.empty((len(z), n, self.engine.conductor.hidden), dtype=z.dtype)
            start = np.full(len(z), self._bar)
            self.conducting = _joined(self.conducting, _Conducting(
                h, c, bars, start, u, temperature, ids))
            self._changed()
        else:
            self._start(z, u[:, 0], temperature, ids, self._step)

    def _start(self, cond: np.ndarray, u: np.ndarray, temperature: np.ndarray,
               phrase: np.ndarray, step: int) -> None:
        """Rows that start decoding tokens at ``step``: cond (N, C), u (N, steps),
        temperature and phrase (N,)."""
        h, c = self.stepper.init(cond)
        n = len(cond)
        self.rows = _joined(self.rows, _Rows(
            h, c, cond @ self.stepper.cond_weight + self.stepper.stack.bias0,
            np.full(n, self.stepper.start_token), np.full(n, step),
            np.empty((n, self.steps), dtype=np.int64), _shifted(u, -step),
            temperature[:, None], phrase))
        self._changed()

    def drop(self, key: int) -> None:
        """Stop decoding ``key`` (nothing if it is not being decoded)."""
        if key not in self.keys:
            return
        self.keys.remove(key)
        if self.conducting is not None:
            self.conducting = _kept(self.conducting, self.conducting.phrase != key)
        if self.rows is not None:
            self.rows = _kept(self.rows, self.rows.phrase != key)
        self._changed()

    def step(self) -> list[tuple[int, np.ndarray]]:
        """One step of every phrase; the phrases that completed: (key, tokens (T,))."""
        conducted = self._conduct() if self.conducting is not None else None
        finished = self._decode() if self.rows is not None else []
        if conducted is not None:  # their bar rows start at the next step
            n, p = self.rows_per_phrase, len(conducted.phrase)
            order = (conducted.start[:, None] + np.arange(n)) % n  # bar k's ring column
            bars = conducted.bars[np.arange(p)[:, None], order]  # (P, bars, C) in bar order
            self._start(bars.reshape(p * n, -1), conducted.u.reshape(p * n, -1),
                        np.repeat(conducted.temperature, n), np.repeat(conducted.phrase, n),
                        self._step + 1)
        self._step += 1
        return finished

    def _conduct(self) -> _Conducting | None:
        """Up to :attr:`conductor_steps` conductor steps; the phrases whose bar embeddings
        are now all there."""
        assert isinstance(self.engine, HierarchicalNumpy)
        conducted: _Conducting | None = None
        for _ in range(self.conductor_steps):
            cd = self.conducting
            if cd is None:
                break
            out = self.engine.conductor.step(self._conductor_gates, cd.h, cd.c)
            cd.bars[:, self._bar % self.rows_per_phrase] = out
            self._bar += 1
            if self._bar - 1 != self._conducted_at:
                continue
            done = cd.start == self._bar - self.rows_per_phrase  # started together
            self.conducting = _kept(cd, ~done)
            self._changed()
            finished = _kept(cd, done)
            assert finished is not None
            conducted = _joined(conducted, finished)
        return conducted

    def _decode(self) -> list[tuple[int, np.ndarray]]:
        """One token step of every row; the phrases that completed."""
        r = self.rows
        assert r is not None
        st = self.stepper
        top = st.stack.step(st.token_gates[r.token] + r.cond_gates, r.h, r.c)
        logits = top @ st.out_weight
        logits += st.out_bias
        token = logits.argmax(axis=1)
        column = self._step % self.steps
        sampled = self._sampled
        if len(sampled):
            token[sampled] = _pick(logits[sampled], r.temperature[sampled],
                                   r.u[sampled, column])
        r.out[:, column] = token
        r.token = token
        if self._step != self._decoded_at:
            return []
        done = r.start == self._step - (self.steps - 1)  # rows that started together
        out = _shifted(r.out[done], int(r.start[done][0]))
        keys = r.phrase[done]
        finished = [(key, out[keys == key].reshape(-1))
                    for key in dict.fromkeys(keys.tolist())]  # in the order they joined
        self.keys.difference_update(key for key, _ in finished)
        self.rows = _kept(r, ~done)
        self._changed()
        return finished


