"""Free-running decoding on the CPU in NumPy.

A decode at batch 1 is a few hundred tiny operations (16 steps of two LSTM layers over 4 to
64 rows): their cost is the per-call overhead, not the arithmetic. A NumPy ufunc or a small
BLAS GEMM costs about a microsecond of overhead, a PyTorch operator several, so the same
arithmetic runs faster here (``python bench/decode.py`` compares both). Past
:data:`MAX_ROWS` rows the GEMMs dominate and the PyTorch stepper
(:mod:`melodyvae.decode.torch_stepper`, multi-threaded) is as fast.

Every array here is built once from a decoder's weights (:class:`HierarchicalNumpy`,
:class:`FlatNumpy`) and cached until the weights change. The gate columns are reordered
from PyTorch's (i, f, g, o) to (i, f, o, g) and the first three negated, so one pass of
exp and reciprocal covers the three sigmoid gates and one tanh the cell candidate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from melodyvae.decode.common import Cancel, cached, check, rows, weight
from melodyvae.model import FlatDecoder, HierarchicalDecoder
from melodyvae.model import StateInit as _StateInit

MAX_ROWS = 64  # rows decoded together up to which NumPy beats PyTorch's CPU stepper


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
        self.bias0 = _array(_ifog(weight(rnn, "bias_ih_l0") + weight(rnn, "bias_hh_l0")))  # (4H,)
        self.hh0 = _array(_ifog(weight(rnn, "weight_hh_l0")).t())  # (H, 4H)
        self.upper = [
            (_array(_ifog(torch.cat([weight(rnn, f"weight_ih_l{k}"),
                                     weight(rnn, f"weight_hh_l{k}")], dim=1)).t()),
             _array(_ifog(weight(rnn, f"bias_ih_l{k}") + weight(rnn, f"bias_hh_l{k}"))))
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
        for k, (w, bias) in enumerate(self.upper, start=1):
            gates = np.concatenate([h[k - 1], h[k]], axis=1) @ w
            gates += bias
            h[k], c[k] = self._cell(gates, c[k])
        return h[-1]


class StateInit:
    """The decoders' ``StateInit`` (a dense tanh layer from a vector to an LSTM's initial
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
        w0 = _ifog(weight(rnn, "weight_ih_l0"))  # (4H, E + C)
        self.token_gates = _array(weight(embed, "weight") @ w0[:, :e].t())  # (V + 1, 4H)
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


def engine(decoder: HierarchicalDecoder | FlatDecoder) -> HierarchicalNumpy | FlatNumpy:
    """The decoder's weights as NumPy arrays, built once per weights."""
    if isinstance(decoder, HierarchicalDecoder):
        return cached(decoder, "numpy_engine", lambda: HierarchicalNumpy(decoder))
    return cached(decoder, "numpy_engine", lambda: FlatNumpy(decoder))


def sample(decoder: HierarchicalDecoder | FlatDecoder, z: Tensor, temperature: float,
           generator: torch.Generator | None, parallel: bool, cancel: Cancel | None
           ) -> Tensor:
    """z (B, Z) on the CPU -> (B, T) tokens, the tokens of
    :func:`melodyvae.decode.torch_stepper.sample` with the same generator."""
    cfg = decoder.cfg
    n = rows(cfg, len(z))
    uniforms = None
    if temperature > 0:  # every draw up front: (steps per row sequence, rows)
        per_row = cfg.steps_per_bar if cfg.kind == "hier" else cfg.steps
        uniforms = torch.rand(per_row, n, generator=generator).numpy()  # float32, as
        # the PyTorch stepper draws them one step at a time
    with numpy_context():
        tokens = engine(decoder).sample(z.detach().numpy(), temperature, uniforms, parallel,
                                        cancel)
    return torch.from_numpy(tokens)
