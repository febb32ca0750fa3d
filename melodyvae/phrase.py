"""A phrase level over a section model's latent space (MidiMe-style, with form).

A long phrase is a few sections (four 4-bar sections make 16 bars), each of which the
section model (a trained 4-bar VAE) encodes to a latent code. :class:`PhraseVAE` is a small
VAE over those codes: an encoder reads the section codes, a phrase latent ``w`` carries the
whole phrase, and a decoder gives the section codes back. Decoding a phrase is ``w`` ->
section codes -> one batch of section decodes; sections that are equal in a phrase get equal
codes, so repeats and AABA forms are within reach of one latent point.

Training it costs minutes on a CPU, since the section model stays as trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PhraseConfig:
    """Architecture of a phrase VAE over section codes."""

    sections: int = 4  # sections per phrase (4 x 4 bars = 16 bars)
    code_dim: int = 128  # the section model's latent size
    w_dim: int = 128  # phrase latent size
    hidden: int = 1024  # units of each hidden layer of the encoder and decoder MLPs
    layers: int = 2  # hidden layers of each MLP

    def __post_init__(self) -> None:
        for name in ("sections", "code_dim", "w_dim", "hidden", "layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")


def _mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    parts: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        parts += [nn.Linear(width, hidden), nn.LayerNorm(hidden), nn.GELU()]
        width = hidden
    parts.append(nn.Linear(width, n_out))
    return nn.Sequential(*parts)


class PhraseVAE(nn.Module):
    """Section codes (B, sections, code_dim) <-> phrase latent w (B, w_dim).

    The codes are standardised by the section model's code statistics (``code_mean``,
    ``code_std``, buffers set by :meth:`set_code_stats`) so the MLPs see unit-scale inputs.
    """

    code_mean: Tensor
    code_std: Tensor

    def __init__(self, cfg: PhraseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.sections * cfg.code_dim
        self.encoder = _mlp(n, cfg.hidden, cfg.layers, 2 * cfg.w_dim)
        self.decoder = _mlp(cfg.w_dim, cfg.hidden, cfg.layers, n)
        self.register_buffer("code_mean", torch.zeros(cfg.code_dim))
        self.register_buffer("code_std", torch.ones(cfg.code_dim))

    def set_code_stats(self, codes: Tensor) -> None:
        """Standardise by the mean and spread of ``codes`` (N, code_dim) per dimension."""
        flat = codes.reshape(-1, self.cfg.code_dim).float()
        self.code_mean.copy_(flat.mean(0))
        self.code_std.copy_(flat.std(0).clamp_min(1e-3))

    def encode(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """codes (B, sections, code_dim) -> mu, logvar (B, w_dim)."""
        cfg = self.cfg
        if codes.dim() != 3 or codes.shape[1:] != (cfg.sections, cfg.code_dim):
            raise ValueError(f"expected codes of shape (batch, {cfg.sections}, {cfg.code_dim}), "
                             f"got {tuple(codes.shape)}")
        x = ((codes - self.code_mean) / self.code_std).flatten(1)  # (B, sections * code_dim)
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-12.0, 6.0)

    def decode(self, w: Tensor) -> Tensor:
        """w (B, w_dim) -> section codes (B, sections, code_dim)."""
        cfg = self.cfg
        y = self.decoder(w).view(-1, cfg.sections, cfg.code_dim)  # standardised
        return y * self.code_std + self.code_mean

    def forward(self, codes: Tensor, sample_w: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """codes -> (reconstructed codes, mu, logvar)."""
        mu, logvar = self.encode(codes)
        w = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample_w else mu
        return self.decode(w), mu, logvar


def phrase_loss(recon: Tensor, codes: Tensor, mu: Tensor, logvar: Tensor, code_std: Tensor,
                beta: float, free_nats: float) -> dict[str, Tensor]:
    """Squared error of the standardised codes (summed over sections and dims, batch mean)
    plus ``beta`` times the KL above ``free_nats``."""
    err = ((recon - codes) / code_std).pow(2).sum(dim=(1, 2)).mean()
    kl = 0.5 * torch.sum(mu.pow(2) + logvar.exp() - 1.0 - logvar, dim=-1)  # (B,)
    kl_cost = torch.clamp(kl - free_nats, min=0.0).mean()
    return {"loss": err + beta * kl_cost, "err": err, "kl": kl.mean()}
