"""Free-running decoding in PyTorch: the path for CUDA and MPS, and for CPU decodes of more
rows than :data:`melodyvae.decode.numpy_stepper.MAX_ROWS`, where the GEMMs dominate and
PyTorch's threads pay.

The stepper holds inference-only copies of an ``nn.LSTM``'s weights, arranged so that each
step is a gather, one GEMM per layer and the output GEMM; the arithmetic is ``nn.LSTM``'s
(``tests/test_decode.py`` compares them).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from melodyvae.decode.common import Cancel, cached, check, weight
from melodyvae.model import FlatDecoder, HierarchicalDecoder


def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """(N, V) logits -> (N,) token ids."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    # inverse CDF: one uniform draw per row (multinomial draws one exponential per class)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum_(dim=-1)  # (N, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return (cdf < u).sum(dim=-1).clamp_(max=cdf.shape[1] - 1)


def _mkldnn_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight"))


_MKLDNN_LINEAR = _mkldnn_linear_available()


class _Linear:
    """``x @ weight.T + bias`` for inference. On the CPU the weight is prepacked for oneDNN
    (through ``torch.ops.mkldnn``, which PyTorch's own inference passes use), which
    multiplies the few-row matrices of a step decode faster than a plain GEMM; without
    those operators it is a plain ``addmm``."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        self.bias = bias.contiguous()
        self.weight_t = weight.t().contiguous()  # (K, N)
        self.packed: Tensor | None = None
        if weight.device.type == "cpu" and weight.dtype == torch.float32 and _MKLDNN_LINEAR:
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())

    def __call__(self, x: Tensor) -> Tensor:
        if self.packed is not None:
            out: Tensor = torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none",
                                                             [], "")
            return out
        return torch.addmm(self.bias, x, self.weight_t)


def _double_cell_rows(t: Tensor) -> Tensor:
    """A copy of an LSTM gate weight or bias, (4H, ...) in PyTorch's i, f, g, o order, with
    the cell-candidate rows g doubled: sigmoid of a doubled g gives tanh(g) = 2 sigmoid(2g) - 1
    from the same sigmoid pass as the other gates."""
    out = t.clone()
    h = t.shape[0] // 4
    out[2 * h : 3 * h] *= 2.0
    return out


class LSTMStack:
    """One step of a stacked ``nn.LSTM`` at a time, from its weights (inference only).

    The caller supplies layer 0's input projection (biases included, cell rows doubled with
    :func:`_double_cell_rows`), so inputs that are constant per row or drawn from a small
    vocabulary can be projected once, not per step.
    """

    def __init__(self, rnn: nn.LSTM) -> None:
        self.bias0 = _double_cell_rows(weight(rnn, "bias_ih_l0") + weight(rnn, "bias_hh_l0"))
        self.hh0 = _Linear(_double_cell_rows(weight(rnn, "weight_hh_l0")),
                           torch.zeros_like(self.bias0))
        self.upper = [
            _Linear(
                _double_cell_rows(torch.cat([weight(rnn, f"weight_ih_l{k}"),
                                             weight(rnn, f"weight_hh_l{k}")], dim=1)),
                _double_cell_rows(weight(rnn, f"bias_ih_l{k}")
                                  + weight(rnn, f"bias_hh_l{k}")),
            )
            for k in range(1, rnn.num_layers)
        ]

    @staticmethod
    def _cell(gates: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """gates (N, 4H) with doubled cell rows, a fresh tensor changed in place."""
        # tanh(x) = 2 sigmoid(2x) - 1: CPU tanh is several times slower than sigmoid, so one
        # sigmoid pass serves all four gates, and c' = f*c + i*(2 sig(2g) - 1).
        i, f, g, o = gates.sigmoid_().chunk(4, dim=1)
        c = torch.addcmul(f * c, i, g, value=2.0).sub_(i)
        return torch.sigmoid(c * 2.0).mul_(2.0).sub_(1.0).mul_(o), c

    def step(self, input_gates: Tensor, h: list[Tensor], c: list[Tensor]) -> Tensor:
        """input_gates (N, 4H) for layer 0; h, c: per-layer (N, H), updated in place.
        Returns the top layer's new h."""
        h[0], c[0] = self._cell(self.hh0(h[0]) + input_gates, c[0])
        for k, layer in enumerate(self.upper, start=1):
            h[k], c[k] = self._cell(layer(torch.cat([h[k - 1], h[k]], dim=1)), c[k])
        return h[-1]


class Stepper:
    """Free-running decode with the weights of an (embedding, LSTM, output) triple.

    The LSTM's input is [embedding of the previous token ; a per-row constant] (the bar
    embedding, or z for the flat decoder), so the first layer's input projection splits
    into a per-token table (V+1, 4H) and a per-row term computed once per decode.
    """

    def __init__(self, embed: nn.Embedding, rnn: nn.LSTM, out: nn.Linear) -> None:
        self.stack = LSTMStack(rnn)
        e = embed.embedding_dim
        w0 = _double_cell_rows(weight(rnn, "weight_ih_l0"))
        self.token_gates = embed.weight.detach() @ w0[:, :e].t()  # (V+1, 4H)
        self.cond_weight = w0[:, e:].t().contiguous()  # (C, 4H)
        self.out = _Linear(weight(out, "weight"), weight(out, "bias"))  # (H) -> (V)

    def run(self, cond: Tensor, state: tuple[Tensor, Tensor], start_token: int, steps: int,
            temperature: float, generator: torch.Generator | None,
            cancel: Cancel | None = None) -> Tensor:
        """cond (N, C), state (L, N, H) x 2 -> tokens (N, steps)."""
        n = cond.shape[0]
        cond_gates = torch.addmm(self.stack.bias0, cond, self.cond_weight)  # (N, 4H)
        h = list(state[0].unbind(0))
        c = list(state[1].unbind(0))
        token = torch.full((n,), start_token, dtype=torch.long, device=cond.device)
        out = torch.empty(n, steps, dtype=torch.long, device=cond.device)
        for t in range(steps):
            check(cancel)
            top = self.stack.step(self.token_gates[token] + cond_gates, h, c)
            token = _pick(self.out(top), temperature, generator)
            out[:, t] = token
        return out


def _stepper(decoder: HierarchicalDecoder | FlatDecoder) -> Stepper:
    """The decoder's stepper, rebuilt whenever its weights have changed."""
    return cached(decoder, "torch_stepper",
                  lambda: Stepper(decoder.embed, decoder.rnn, decoder.out))


def _conduct(decoder: HierarchicalDecoder, z: Tensor, cancel: Cancel | None) -> Tensor:
    """The conductor stepped from its weights: z (B, Z) -> (B, bars, C), the values of
    ``decoder.bar_embeddings`` without nn.LSTM's per-call overhead."""
    stack = cached(decoder.conductor, "torch_conductor", lambda: LSTMStack(decoder.conductor))
    h0, c0 = decoder.cond_init(z)
    h, c = list(h0.unbind(0)), list(c0.unbind(0))
    gates = stack.bias0.expand(z.shape[0], -1)  # the conductor's input is zero
    out = []
    for _ in range(decoder.cfg.bars):
        check(cancel)
        out.append(stack.step(gates, h, c))
    return torch.stack(out, dim=1)


@torch.no_grad()
def sample(decoder: HierarchicalDecoder | FlatDecoder, z: Tensor, temperature: float,
           generator: torch.Generator | None, parallel: bool, cancel: Cancel | None
           ) -> Tensor:
    """z (B, Z) -> tokens (B, T); see :func:`melodyvae.decode.sample`."""
    cfg = decoder.cfg
    if isinstance(decoder, FlatDecoder):
        return _stepper(decoder).run(z, decoder.init(z), decoder.start_token, cfg.steps,
                                     temperature, generator, cancel)
    b = z.shape[0]
    stepper = _stepper(decoder)
    c = _conduct(decoder, z, cancel)  # (B, bars, C)

    def bars(emb: Tensor) -> Tensor:  # (N, C) bar embeddings -> (N, S) tokens
        return stepper.run(emb, decoder.bar_init(emb), decoder.start_token, cfg.steps_per_bar,
                           temperature, generator, cancel)

    if parallel:
        return bars(c.reshape(b * cfg.bars, -1)).view(b, cfg.steps)  # (B, T)
    return torch.cat([bars(c[:, i]) for i in range(cfg.bars)], dim=1)  # (B, T)
