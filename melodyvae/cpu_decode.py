"""Free-running decoding on the CPU in NumPy.

A decode at batch 1 is a few hundred tiny operations (16 steps of two LSTM layers over 4 to
64 rows): their cost is the per-call overhead, not the arithmetic. A NumPy ufunc or a small
BLAS GEMM costs about a microsecond of overhead, a PyTorch operator several, so the same
arithmetic runs about twice as fast here (``python bench/decode.py`` compares both). Past
:data:`MAX_ROWS` rows the GEMMs dominate and PyTorch's (multi-threaded) stepper in
:mod:`melodyvae.model` is as fast; it stays the path for large batches, for CUDA and MPS,
and the reference these functions are tested against.

Every array here is built once from a decoder's weights (:class:`HierarchicalNumpy`,
:class:`FlatNumpy`) and cached by :mod:`melodyvae.model` until the weights change. The
gate columns are reordered from PyTorch's (i, f, g, o) to (i, f, o, g), so one sigmoid pass
covers the three gates and one tanh the cell candidate.

:func:`decode` runs a fixed batch from its first step to its last. :class:`Rolling` runs the
same steps for phrases that join and leave between steps (the server's decoder), at the
same cost for a lone phrase (``python bench/decode.py``, ``rolling_over_parallel``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from melodyvae.model import FlatDecoder, HierarchicalDecoder, _StateInit
    from melodyvae.presets import ModelConfig

Cancel = Callable[[], bool]

_G = TypeVar("_G", bound="_Group")

MAX_ROWS = 64  # rows decoded together up to which NumPy beats PyTorch's CPU stepper


class DecodeCancelled(Exception):
    """A free-running decode was stopped by its ``cancel`` callback."""


def check(cancel: Cancel | None) -> None:
    """Raise :class:`DecodeCancelled` if ``cancel`` says so (asked before every step)."""
    if cancel is not None and cancel():
        raise DecodeCancelled


def _w(module: nn.Module, name: str) -> Tensor:
    """A parameter of ``module`` by name, detached."""
    tensor: Tensor = getattr(module, name)
    return tensor.detach()


def _array(t: Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy())


def _ifog(t: Tensor) -> Tensor:
    """Gate rows (4H, ...) from PyTorch's i, f, g, o order to i, f, o, g."""
    i, f, g, o = t.chunk(4, dim=0)
    return torch.cat([-i, -f, -o, g], dim=0)


def _sigmoid_(x: np.ndarray) -> None:
    """In place, from -x; three ufunc passes are faster than scipy's expit on short rows."""
    np.exp(x, out=x)
    x += 1.0
    np.reciprocal(x, out=x)


class LSTMStack:
    """One step of a stacked ``nn.LSTM`` at a time (inference only).

    The caller supplies layer 0's input projection with its biases, so that inputs constant
    per row or drawn from a small vocabulary are projected once, not per step.
    """

    def __init__(self, rnn: nn.LSTM) -> None:
        self.hidden = rnn.hidden_size
        self.bias0 = _array(_ifog(_w(rnn, "bias_ih_l0") + _w(rnn, "bias_hh_l0")))  # (4H,)
        self.hh0 = _array(_ifog(_w(rnn, "weight_hh_l0")).t())  # (H, 4H)
        self.upper = [
            (_array(_ifog(torch.cat([_w(rnn, f"weight_ih_l{k}"),
                                     _w(rnn, f"weight_hh_l{k}")], dim=1)).t()),
             _array(_ifog(_w(rnn, f"bias_ih_l{k}") + _w(rnn, f"bias_hh_l{k}"))))
            for k in range(1, rnn.num_layers)
        ]  # (2H, 4H), (4H,) per upper layer

    def _cell(self, gates: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = self.hidden
        _sigmoid_(gates[:, : 3 * h])
        cand = np.tanh(gates[:, 3 * h :])
        cand *= gates[:, :h]  # i * tanh(g)
        c = gates[:, h : 2 * h] * c  # f * c
        c += cand
        out = np.tanh(c)
        out *= gates[:, 2 * h : 3 * h]  # o * tanh(c)
        return out, c

    def step(self, input_gates: np.ndarray, h: list[np.ndarray], c: list[np.ndarray]
             ) -> np.ndarray:
        """input_gates (N, 4H) for layer 0; h, c: per-layer (N, H), replaced in the lists.
        Returns the top layer's new h."""
        gates = h[0] @ self.hh0
        gates += input_gates
        h[0], c[0] = self._cell(gates, c[0])
        for k, (weight, bias) in enumerate(self.upper, start=1):
            gates = np.concatenate([h[k - 1], h[k]], axis=1) @ weight
            gates += bias
            h[k], c[k] = self._cell(gates, c[k])
        return h[-1]


class StateInit:
    """The decoders' ``_StateInit`` (a dense tanh layer from a vector to an LSTM's initial
    h and c): x (N, D) -> per-layer h and c, each (N, H)."""

    def __init__(self, init: _StateInit) -> None:
        self.weight, self.bias = _array(init.proj.weight).T.copy(), _array(init.proj.bias)
        self.layers, self.hidden = init.layers, init.hidden

    def __call__(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        hc = np.tanh(x @ self.weight + self.bias).reshape(len(x), 2, self.layers, self.hidden)
        return ([np.ascontiguousarray(hc[:, 0, k]) for k in range(self.layers)],
                [np.ascontiguousarray(hc[:, 1, k]) for k in range(self.layers)])


class Stepper:
    """Token-by-token decode with an (embedding, LSTM, output) triple whose LSTM input is
    [embedding of the previous token ; a per-row constant] (a bar embedding, or z)."""

    def __init__(self, embed: nn.Embedding, rnn: nn.LSTM, out: nn.Linear,
                 init: _StateInit, start_token: int) -> None:
        self.stack = LSTMStack(rnn)
        e = embed.embedding_dim
        w0 = _ifog(_w(rnn, "weight_ih_l0"))  # (4H, E + C)
        self.token_gates = _array(_w(embed, "weight") @ w0[:, :e].t())  # (V + 1, 4H)
        self.cond_weight = _array(w0[:, e:].t())  # (C, 4H)
        self.out_weight, self.out_bias = _array(out.weight).T.copy(), _array(out.bias)
        self.init = StateInit(init)
        self.start_token = start_token

    def run(self, cond: np.ndarray, steps: int, temperature: float,
            uniforms: np.ndarray | None, cancel: Cancel | None) -> np.ndarray:
        """cond (N, C) -> tokens (N, steps). ``uniforms`` (steps, N) drive sampling."""
        h, c = self.init(cond)
        cond_gates = cond @ self.cond_weight + self.stack.bias0  # (N, 4H)
        token = np.full(len(cond), self.start_token)
        out = np.empty((len(cond), steps), dtype=np.int64)
        for t in range(steps):
            check(cancel)
            top = self.stack.step(self.token_gates[token] + cond_gates, h, c)
            logits = top @ self.out_weight
            logits += self.out_bias
            token = _pick(logits, temperature, None if uniforms is None else uniforms[t])
            out[:, t] = token
        return out


def _pick(logits: np.ndarray, temperature: float | np.ndarray, u: np.ndarray | None
          ) -> np.ndarray:
    """(N, V) logits -> (N,) token ids: argmax, or an inverse-CDF draw with uniforms u.
    ``temperature`` may be one per row, (N, 1) float32, all above 0."""
    if u is None or (isinstance(temperature, float) and temperature <= 0.0):
        return logits.argmax(axis=1)
    x = logits / temperature
    x -= x.max(axis=1, keepdims=True)
    np.exp(x, out=x)
    cdf = np.cumsum(x, axis=1)
    chosen = (cdf < (u * cdf[:, -1])[:, None]).sum(axis=1)
    return np.minimum(chosen, logits.shape[1] - 1)


class HierarchicalNumpy:
    def __init__(self, dec: HierarchicalDecoder) -> None:
        self.cfg = dec.cfg
        self.cond_init = StateInit(dec.cond_init)
        self.conductor = LSTMStack(dec.conductor)
        self.bars = Stepper(dec.embed, dec.rnn, dec.out, dec.bar_init, dec.start_token)

    def conduct(self, z: np.ndarray, cancel: Cancel | None = None) -> np.ndarray:
        """z (B, Z) -> bar embeddings (B, bars, C)."""
        h, c = self.cond_init(z)
        gates = np.broadcast_to(self.conductor.bias0, (len(z), len(self.conductor.bias0)))
        out = []
        for _ in range(self.cfg.bars):
            check(cancel)
            out.append(self.conductor.step(gates, h, c))
        return np.stack(out, axis=1)

    def sample(self, z: np.ndarray, temperature: float, uniforms: np.ndarray | None,
               parallel: bool, cancel: Cancel | None) -> np.ndarray:
        cfg = self.cfg
        b = len(z)
        emb = self.conduct(z, cancel)  # (B, bars, C)
        steps = cfg.steps_per_bar
        if parallel:
            u = None if uniforms is None else uniforms.reshape(steps, b * cfg.bars)
            rows = self.bars.run(emb.reshape(b * cfg.bars, -1), steps, temperature, u, cancel)
            return rows.reshape(b, cfg.steps)
        bars = []
        for i in range(cfg.bars):
            u = None if uniforms is None else uniforms.reshape(steps, b, cfg.bars)[:, :, i]
            bars.append(self.bars.run(np.ascontiguousarray(emb[:, i]), steps, temperature, u,
                                      cancel))
        return np.concatenate(bars, axis=1)


class FlatNumpy:
    def __init__(self, dec: FlatDecoder) -> None:
        self.cfg = dec.cfg
        self.stepper = Stepper(dec.embed, dec.rnn, dec.out, dec.init, dec.start_token)

    def sample(self, z: np.ndarray, temperature: float, uniforms: np.ndarray | None,
               parallel: bool, cancel: Cancel | None) -> np.ndarray:
        u = None if uniforms is None else uniforms.reshape(self.cfg.steps, len(z))
        return self.stepper.run(z, self.cfg.steps, temperature, u, cancel)


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

    :func:`decode` runs a fixed batch from its first step to its last. Here every phrase
    has its own progress: a phrase added while others are half-way is stepped with them
    from its first step (a hierarchical model's conductor steps, then its bar steps), a
    phrase :meth:`drop`-ped leaves at once, and :meth:`step` returns each phrase as it
    completes. A server decodes its clients' latest requests this way: none waits for a
    batch it arrived too late to join. A phrase's tokens are those of ``decode`` on its z
    alone with the same generator (BLAS computes each row of a product on its own).

    Call it inside :func:`numpy_context`; not thread-safe.
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
            if temp > 0:  # drawn as decode() draws them for this phrase alone
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


_CONTROLLER: Any = None


@contextlib.contextmanager
def blas_threads(n: int) -> Iterator[None]:
    """NumPy's BLAS on ``n`` threads inside the block."""
    global _CONTROLLER
    from threadpoolctl import ThreadpoolController

    if _CONTROLLER is None:
        _CONTROLLER = ThreadpoolController()
    with _CONTROLLER.limit(limits=n, user_api="blas"):
        yield


@contextlib.contextmanager
def numpy_context() -> Iterator[None]:
    """How these decoders run: one BLAS thread (their GEMMs are too small for thread
    hand-offs to pay), and no warning when exp overflows to inf for a large negative
    pre-activation (the sigmoid is then exactly 0)."""
    with blas_threads(1), np.errstate(over="ignore"):
        yield


def rows(cfg: ModelConfig, batch: int) -> int:
    """How many rows a decode of ``batch`` phrases steps together."""
    return batch * (cfg.bars if cfg.kind == "hier" else 1)


def decode(engine: HierarchicalNumpy | FlatNumpy, z: Tensor, temperature: float,
           generator: torch.Generator | None, parallel: bool, cancel: Cancel | None
           ) -> Tensor:
    """z (B, Z) on the CPU -> (B, T) tokens, as ``decoder.sample`` computes them."""
    cfg = engine.cfg
    n = rows(cfg, len(z))
    uniforms = None
    if temperature > 0:  # every draw up front: (steps per row sequence, rows)
        per_row = cfg.steps_per_bar if cfg.kind == "hier" else cfg.steps
        uniforms = torch.rand(per_row, n, generator=generator).numpy()  # float32, as
        # the PyTorch stepper draws them one step at a time
    with numpy_context():
        tokens = engine.sample(z.detach().numpy(), temperature, uniforms, parallel, cancel)
    return torch.from_numpy(tokens)
