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

Both decoders' ``forward(z (B, Z), targets (B, T)) -> logits (B, T, V)`` is teacher-forced:
the logits at step t see the targets before t (within the bar for the hierarchical one).
This module holds the ``nn.Module``s and the loss; free-running decoding (z -> tokens) is
:mod:`melodyvae.decode`'s.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from melodyvae.presets import ModelConfig

__all__ = ["VAE", "Encoder", "FlatDecoder", "HierarchicalDecoder", "StateInit",
           "kl_divergence", "reconstruction_nll", "vae_loss"]


class StateInit(nn.Module):
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
    """z -> conductor -> one embedding per bar -> bar decoder, bars independent given it."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cond_init = StateInit(cfg.z_dim, cfg.cond_hidden, cfg.cond_layers)
        self.conductor = nn.LSTM(1, cfg.cond_hidden, cfg.cond_layers, batch_first=True)
        self.bar_init = StateInit(cfg.cond_hidden, cfg.dec_hidden, cfg.dec_layers)
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


class FlatDecoder(nn.Module):
    """One LSTM over the whole phrase, z beside the previous token at every step."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.init = StateInit(cfg.z_dim, cfg.dec_hidden, cfg.dec_layers)
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

    def _check_tokens(self, tokens: Tensor) -> None:
        if tokens.dim() != 2 or tokens.shape[1] != self.cfg.steps:
            raise ValueError(
                f"expected tokens of shape (batch, {self.cfg.steps}), got {tuple(tokens.shape)}"
            )


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
