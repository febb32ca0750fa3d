"""The melody VAE: bidirectional LSTM encoder, and a hierarchical or a flat decoder.

Shapes use B for the batch, T = bars * steps_per_bar for the phrase, V for the vocabulary,
Z for the latent size.

Hierarchical decoder (MusicVAE hierdec): z sets the initial state of a conductor LSTM that
runs one step per bar and emits a bar embedding c_b. Each bar is decoded by the bar decoder
LSTM, whose state starts from c_b and whose input at each step is the previous token of the
same bar (a start token at the bar's first step) next to c_b. Bars are therefore independent
given the conductor: at inference all bars decode as one batch of B * bars rows, 16
autoregressive steps in all, where MusicVAE decodes them one bar after another.

Flat decoder (MusicVAE flat baseline): one LSTM over all T steps, its state started from z
and z fed beside the previous token at every step.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from melodyvae import cpu_decode
from melodyvae.cpu_decode import Cancel, DecodeCancelled
from melodyvae.presets import ModelConfig

__all__ = ["VAE", "DecodeCancelled", "Cancel", "kl_divergence", "reconstruction_nll",
           "vae_loss"]

# Decode on the CPU with melodyvae.cpu_decode (NumPy): the same arithmetic with less
# per-operation overhead. False keeps every decode on the PyTorch stepper (tests compare).
NUMPY_ON_CPU = True

_T = TypeVar("_T")


class Decoder(Protocol):
    """What both decoders provide."""

    def forward(self, z: Tensor, targets: Tensor) -> Tensor:
        """Teacher-forced logits.

        z: (B, Z); targets: (B, T) int64 -> logits (B, T, V); logits at step t see the
        targets before t (within the bar for the hierarchical decoder).
        """
        ...

    def sample(
        self, z: Tensor, temperature: float = 0.0, generator: torch.Generator | None = None,
        parallel: bool = True, cancel: Cancel | None = None,
    ) -> Tensor:
        """Free-running decode: z (B, Z) -> tokens (B, T) int64.

        temperature 0 takes the argmax; above 0 samples softmax(logits / temperature) with
        ``generator``. ``parallel`` (hierarchical only) decodes all bars as one batch;
        False decodes them one after another with the same weights. ``cancel`` is asked
        before every step; when it returns True the decode raises :class:`DecodeCancelled`.
        """
        ...

    def decode_macs(self) -> int:
        """Multiply-adds of one free-running decode of one phrase (batch 1)."""
        ...


def _lstm_macs(input_size: int, hidden: int, layers: int, directions: int = 1) -> int:
    macs = 0
    for layer in range(layers):
        in_size = input_size if layer == 0 else hidden * directions
        macs += directions * 4 * hidden * (in_size + hidden)
    return macs


def _step_macs(hidden: int, layers: int, vocab: int) -> int:
    """Multiply-adds of one free-running step of one row in :class:`_Stepper`."""
    return 4 * hidden * hidden + (layers - 1) * 4 * hidden * 2 * hidden + hidden * vocab


def _pick(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """(N, V) logits -> (N,) token ids."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    # inverse CDF: one uniform draw per row (multinomial draws one exponential per class)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum_(dim=-1)  # (N, V)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    return (cdf < u).sum(dim=-1).clamp_(max=cdf.shape[1] - 1)


class _StateInit(nn.Module):
    """A dense tanh layer from a vector to an LSTM's initial (h, c)."""

    def __init__(self, in_size: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.proj = nn.Linear(in_size, 2 * layers * hidden)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        n = x.shape[0]
        hc = torch.tanh(self.proj(x)).view(n, 2, self.layers, self.hidden)  # (N, 2, L, H)
        hc = hc.permute(1, 2, 0, 3).contiguous()  # (2, L, N, H)
        return hc[0], hc[1]


def _weight(module: nn.Module, name: str) -> Tensor:
    """A parameter of ``module`` by name, detached (for inference-only copies)."""
    tensor: Tensor = getattr(module, name)
    return tensor.detach()


def _mkldnn_linear_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight"))


class _Linear:
    """``x @ weight.T + bias`` for inference. On the CPU the weight is prepacked for oneDNN,
    which multiplies the few-row matrices of a step decode faster than a plain GEMM."""

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


_MKLDNN_LINEAR = _mkldnn_linear_available()


def _double_cell_rows(t: Tensor) -> Tensor:
    """A copy of an LSTM gate weight or bias, (4H, ...) in PyTorch's i, f, g, o order, with
    the cell-candidate rows g doubled: sigmoid of a doubled g gives tanh(g) = 2 sigmoid(2g) - 1
    from the same sigmoid pass as the other gates."""
    out = t.clone()
    h = t.shape[0] // 4
    out[2 * h : 3 * h] *= 2.0
    return out


class _LSTMStack:
    """One step of a stacked ``nn.LSTM`` at a time, from its weights (inference only).

    The caller supplies layer 0's input projection (biases included, cell rows doubled with
    :func:`_double_cell_rows`), so inputs that are constant per row or drawn from a small
    vocabulary can be projected once, not per step.
    """

    def __init__(self, rnn: nn.LSTM) -> None:
        self.bias0 = _double_cell_rows(_weight(rnn, "bias_ih_l0") + _weight(rnn, "bias_hh_l0"))
        self.hh0 = _Linear(_double_cell_rows(_weight(rnn, "weight_hh_l0")),
                           torch.zeros_like(self.bias0))
        self.upper = [
            _Linear(
                _double_cell_rows(torch.cat([_weight(rnn, f"weight_ih_l{k}"),
                                             _weight(rnn, f"weight_hh_l{k}")], dim=1)),
                _double_cell_rows(_weight(rnn, f"bias_ih_l{k}")
                                  + _weight(rnn, f"bias_hh_l{k}")),
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


class _Stepper:
    """Free-running decode with the weights of an (embedding, LSTM, output) triple.

    The LSTM's input is [embedding of the previous token ; a per-row constant] (the bar
    embedding, or z for the flat decoder), so the first layer's input projection splits
    into a per-token table (V+1, 4H) and a per-row term computed once per decode; each step
    is then a gather, one GEMM per layer and the output GEMM. The same arithmetic as
    ``nn.LSTM``, in fewer operations.
    """

    def __init__(self, embed: nn.Embedding, rnn: nn.LSTM, out: nn.Linear) -> None:
        self.stack = _LSTMStack(rnn)
        e = embed.embedding_dim
        w0 = _double_cell_rows(_weight(rnn, "weight_ih_l0"))
        self.token_gates = embed.weight.detach() @ w0[:, :e].t()  # (V+1, 4H)
        self.cond_weight = w0[:, e:].t().contiguous()  # (C, 4H)
        self.out = _Linear(_weight(out, "weight"), _weight(out, "bias"))  # (H) -> (V)

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
            cpu_decode.check(cancel)
            top = self.stack.step(self.token_gates[token] + cond_gates, h, c)
            token = _pick(self.out(top), temperature, generator)
            out[:, t] = token
        return out


_CACHES: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[Any, Any]]] = (
    weakref.WeakKeyDictionary()
)


def _cached(module: nn.Module, attr: str, build: Callable[[], _T]) -> _T:
    """``build()`` cached for ``module`` until one of its weights is replaced or updated in
    place by autograd-visible ops (optimizer steps, ``load_state_dict``). Edits through
    ``param.data`` are invisible to it. Kept outside the module so that it never travels
    with ``copy.deepcopy`` or ``state_dict``."""
    key = tuple((p.data_ptr(), p._version) for p in module.parameters())
    caches = _CACHES.setdefault(module, {})
    cached = caches.get(attr)
    if cached is None or cached[0] != key:
        cached = (key, build())
        caches[attr] = cached
    result: _T = cached[1]
    return result


def _numpy_capable(decoder: HierarchicalDecoder | FlatDecoder) -> bool:
    """Whether decodes of this decoder may go to :mod:`melodyvae.cpu_decode`."""
    weight = _weight(decoder.out, "weight")
    return (NUMPY_ON_CPU and weight.device.type == "cpu"
            and weight.dtype in (torch.float32, torch.float64))


def _numpy_decodes(decoder: HierarchicalDecoder | FlatDecoder, z: Tensor) -> bool:
    """Whether this decode goes to :mod:`melodyvae.cpu_decode`: a small decode of CPU tensors
    of the model's own float type."""
    return (_numpy_capable(decoder) and z.device.type == "cpu"
            and z.dtype == _weight(decoder.out, "weight").dtype
            and cpu_decode.rows(decoder.cfg, z.shape[0]) <= cpu_decode.MAX_ROWS)


def rolling_decoder(decoder: HierarchicalDecoder | FlatDecoder) -> cpu_decode.Rolling | None:
    """A :class:`melodyvae.cpu_decode.Rolling` decode with ``decoder``'s weights, or None
    where its decodes do not run in NumPy (on a GPU, or with :data:`NUMPY_ON_CPU` off)."""
    return cpu_decode.Rolling(decoder.numpy_engine()) if _numpy_capable(decoder) else None


def _stepper(module: nn.Module) -> _Stepper:
    """The decoder module's stepper, rebuilt whenever its weights have changed."""
    return _cached(
        module, "_stepper_cache",
        lambda: _Stepper(module.embed, module.rnn, module.out),  # type: ignore[arg-type]
    )


class Encoder(nn.Module):
    """Bidirectional LSTM over the tokens -> (mu, logvar), each (B, Z)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.rnn = nn.LSTM(cfg.embed_dim, cfg.enc_hidden, cfg.enc_layers, batch_first=True,
                           bidirectional=True)
        self.to_mu = nn.Linear(2 * cfg.enc_hidden, cfg.z_dim)
        self.to_logvar = nn.Linear(2 * cfg.enc_hidden, cfg.z_dim)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        x = self.embed(tokens)  # (B, T, E)
        _, (h, _) = self.rnn(x)  # h: (layers * 2, B, H)
        last = torch.cat([h[-2], h[-1]], dim=-1)  # (B, 2H): forward and backward final states
        return self.to_mu(last), self.to_logvar(last)


class HierarchicalDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cond_init = _StateInit(cfg.z_dim, cfg.cond_hidden, cfg.cond_layers)
        self.conductor = nn.LSTM(1, cfg.cond_hidden, cfg.cond_layers, batch_first=True)
        self.bar_init = _StateInit(cfg.cond_hidden, cfg.dec_hidden, cfg.dec_layers)
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.embed_dim)  # last row: start token
        self.rnn = nn.LSTM(cfg.embed_dim + cfg.cond_hidden, cfg.dec_hidden, cfg.dec_layers,
                           batch_first=True)
        self.out = nn.Linear(cfg.dec_hidden, cfg.vocab_size)
        self.start_token = cfg.vocab_size

    def bar_embeddings(self, z: Tensor) -> Tensor:
        """z (B, Z) -> conductor outputs (B, bars, C)."""
        b = z.shape[0]
        state = self.cond_init(z)
        zeros = z.new_zeros(b, self.cfg.bars, 1)  # the conductor runs on its state alone
        c, _ = self.conductor(zeros, state)  # (B, bars, C)
        return c

    def forward(self, z: Tensor, targets: Tensor) -> Tensor:
        cfg = self.cfg
        b = z.shape[0]
        c = self.bar_embeddings(z).reshape(b * cfg.bars, -1)  # (B*bars, C)
        bars = targets.reshape(b * cfg.bars, cfg.steps_per_bar)  # (B*bars, S)
        start = bars.new_full((b * cfg.bars, 1), self.start_token)
        previous = torch.cat([start, bars[:, :-1]], dim=1)  # (B*bars, S)
        x = torch.cat(
            [self.embed(previous), c.unsqueeze(1).expand(-1, cfg.steps_per_bar, -1)], dim=-1
        )  # (B*bars, S, E + C)
        y, _ = self.rnn(x, self.bar_init(c))  # (B*bars, S, H)
        return self.out(y).view(b, cfg.steps, cfg.vocab_size)  # (B, T, V)

    def _decode_bars(self, c: Tensor, temperature: float,
                     generator: torch.Generator | None, cancel: Cancel | None) -> Tensor:
        """c (N, C) bar embeddings -> (N, S) tokens, N bars decoded together."""
        return _stepper(self).run(c, self.bar_init(c), self.start_token,
                                  self.cfg.steps_per_bar, temperature, generator, cancel)

    def _conduct(self, z: Tensor, cancel: Cancel | None = None) -> Tensor:
        """The conductor stepped from its weights: z (B, Z) -> (B, bars, C).
        Same values as :meth:`bar_embeddings`, without nn.LSTM's per-call overhead."""
        stack = _cached(self.conductor, "_stack_cache", lambda: _LSTMStack(self.conductor))
        h0, c0 = self.cond_init(z)
        h, c = list(h0.unbind(0)), list(c0.unbind(0))
        gates = stack.bias0.expand(z.shape[0], -1)  # the conductor's input is zero
        out = []
        for _ in range(self.cfg.bars):
            cpu_decode.check(cancel)
            out.append(stack.step(gates, h, c))
        return torch.stack(out, dim=1)

    def numpy_engine(self) -> cpu_decode.HierarchicalNumpy:
        """This decoder's weights for :mod:`melodyvae.cpu_decode` (built once per weights)."""
        return _cached(self, "_numpy_cache", lambda: cpu_decode.HierarchicalNumpy(self))

    def sample(self, z: Tensor, temperature: float = 0.0,
               generator: torch.Generator | None = None, parallel: bool = True,
               cancel: Cancel | None = None) -> Tensor:
        if _numpy_decodes(self, z):
            return cpu_decode.decode(self.numpy_engine(), z, temperature, generator, parallel,
                                     cancel)
        cfg = self.cfg
        b = z.shape[0]
        c = self._conduct(z, cancel)  # (B, bars, C)
        if parallel:
            tokens = self._decode_bars(c.reshape(b * cfg.bars, -1), temperature, generator,
                                       cancel)
            return tokens.view(b, cfg.steps)  # (B, T)
        bars = [self._decode_bars(c[:, i], temperature, generator, cancel)
                for i in range(cfg.bars)]
        return torch.cat(bars, dim=1)  # (B, T)

    def decode_macs(self) -> int:
        cfg = self.cfg
        conductor = cfg.bars * _lstm_macs(1, cfg.cond_hidden, cfg.cond_layers)
        per_bar = (cfg.cond_hidden * 2 * cfg.dec_layers * cfg.dec_hidden  # bar_init
                   + cfg.cond_hidden * 4 * cfg.dec_hidden  # per-bar input gates
                   + cfg.steps_per_bar * _step_macs(cfg.dec_hidden, cfg.dec_layers,
                                                    cfg.vocab_size))
        return conductor + cfg.bars * per_bar


class FlatDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.init = _StateInit(cfg.z_dim, cfg.dec_hidden, cfg.dec_layers)
        self.embed = nn.Embedding(cfg.vocab_size + 1, cfg.embed_dim)
        self.rnn = nn.LSTM(cfg.embed_dim + cfg.z_dim, cfg.dec_hidden, cfg.dec_layers,
                           batch_first=True)
        self.out = nn.Linear(cfg.dec_hidden, cfg.vocab_size)
        self.start_token = cfg.vocab_size

    def forward(self, z: Tensor, targets: Tensor) -> Tensor:
        b, t = targets.shape
        start = targets.new_full((b, 1), self.start_token)
        previous = torch.cat([start, targets[:, :-1]], dim=1)  # (B, T)
        x = torch.cat([self.embed(previous), z.unsqueeze(1).expand(-1, t, -1)], dim=-1)
        y, _ = self.rnn(x, self.init(z))  # (B, T, H)
        return self.out(y)  # (B, T, V)

    def numpy_engine(self) -> cpu_decode.FlatNumpy:
        """This decoder's weights for :mod:`melodyvae.cpu_decode` (built once per weights)."""
        return _cached(self, "_numpy_cache", lambda: cpu_decode.FlatNumpy(self))

    def sample(self, z: Tensor, temperature: float = 0.0,
               generator: torch.Generator | None = None, parallel: bool = True,
               cancel: Cancel | None = None) -> Tensor:
        if _numpy_decodes(self, z):
            return cpu_decode.decode(self.numpy_engine(), z, temperature, generator, parallel,
                                     cancel)
        return _stepper(self).run(z, self.init(z), self.start_token, self.cfg.steps,
                                  temperature, generator, cancel)

    def decode_macs(self) -> int:
        cfg = self.cfg
        return (cfg.z_dim * 2 * cfg.dec_layers * cfg.dec_hidden + cfg.z_dim * 4 * cfg.dec_hidden
                + cfg.steps * _step_macs(cfg.dec_hidden, cfg.dec_layers, cfg.vocab_size))


class VAE(nn.Module):
    """Encoder + decoder, with the loss pieces training needs."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder: HierarchicalDecoder | FlatDecoder = (
            HierarchicalDecoder(cfg) if cfg.kind == "hier" else FlatDecoder(cfg)
        )

    def encode(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, T) -> mu, logvar (B, Z)."""
        self._check_tokens(tokens)
        return self.encoder(tokens)

    def forward(self, tokens: Tensor, sample_z: bool = True,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Teacher-forced pass: tokens (B, T) -> logits (B, T, V), mu, logvar (B, Z)."""
        mu, logvar = self.encode(tokens)
        if sample_z:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            z = mu + eps * torch.exp(0.5 * logvar)
        else:
            z = mu
        return self.decoder(z, tokens), mu, logvar

    @torch.no_grad()
    def sample(self, z: Tensor, temperature: float = 0.0,
               generator: torch.Generator | None = None, parallel: bool = True,
               cancel: Cancel | None = None) -> Tensor:
        """z (B, Z) -> tokens (B, T); see :meth:`Decoder.sample`."""
        return self.decoder.sample(z, temperature, generator, parallel, cancel)

    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dim() != 2 or tokens.shape[1] != self.cfg.steps:
            raise ValueError(
                f"expected tokens of shape (batch, {self.cfg.steps}), got {tuple(tokens.shape)}"
            )

    def decode_macs(self) -> int:
        """Multiply-adds of one free-running decode at batch 1."""
        return self.decoder.decode_macs()


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z|x) || N(0, I)) per example, in nats: (B, Z) -> (B,)."""
    return 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=-1)


def reconstruction_nll(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed cross entropy per example, in nats: (B, T, V), (B, T) -> (B,)."""
    nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")  # (B, T)
    return nll.sum(dim=1)


def vae_loss(logits: Tensor, targets: Tensor, mu: Tensor, logvar: Tensor, beta: float,
             free_bits: float) -> dict[str, Tensor]:
    """MusicVAE's objective: reconstruction + beta * max(KL - free_nats, 0), batch means."""
    nll = reconstruction_nll(logits, targets).mean()
    kl = kl_divergence(mu.float(), logvar.float())  # (B,)
    free_nats = free_bits * math.log(2.0)
    kl_cost = torch.clamp(kl - free_nats, min=0.0).mean()
    return {"loss": nll + beta * kl_cost, "nll": nll, "kl": kl.mean()}
