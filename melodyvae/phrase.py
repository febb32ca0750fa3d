"""A phrase level over a section model's latent space (MidiMe-style, with form).

A long phrase is a few sections (four 4-bar sections make 16 bars), each of which the
section model (a trained 4-bar VAE) encodes to a latent code. :class:`PhraseVAE` is a small
VAE over those codes: an encoder reads the section codes, a phrase latent ``w`` carries the
whole phrase, and a decoder gives the section codes back. Decoding a phrase is ``w`` ->
section codes -> one batch of section decodes; sections that are equal in a phrase get equal
codes, so repeats and AABA forms are within reach of one latent point.

Form: a phrase model may also carry a *form coordinate* ``u`` beside ``w`` (``forms`` = 1):
which sections repeat an earlier one (ABAC, AABA, ABCB, ...). The latent vector is then
``z = [w, u]``, all of it standard normal under the prior: ``u``'s normal CDF picks a form
by the forms' frequencies in the training phrases, and decoding copies each repeating
section's code from the section it repeats, so a repeat in the form is a repeat in the notes.
Encoding reads a phrase's form from its section codes (sections whose standardised codes lie
within ``form_threshold`` of each other).

Training it costs minutes on a CPU, since the section model stays as trained.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cache

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
    forms: int = 0  # 1: a form coordinate u beside w (which sections repeat which)

    def __post_init__(self) -> None:
        for name in ("sections", "code_dim", "w_dim", "hidden", "layers", "forms"):
            value = getattr(self, name)
            low = 0 if name == "forms" else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, not {value!r}")
        if self.forms > 1:
            raise ValueError(f"forms must be 0 or 1, not {self.forms}")

    @property
    def latent_dim(self) -> int:
        """Size of the latent vector z = [w, u]."""
        return self.w_dim + self.forms


@cache
def forms_of(sections: int) -> tuple[tuple[int, ...], ...]:
    """Every form of ``sections`` sections as labels in order of first appearance
    ((0, 1, 0, 2) is ABAC), the form without repeats first: 15 forms of 4 sections."""
    found = []
    for labels in itertools.product(range(sections), repeat=sections):
        if all(labels[i] <= max(labels[:i], default=-1) + 1 for i in range(sections)):
            found.append(labels)
    found.sort(key=lambda f: (-len(set(f)), f))
    return tuple(found)


def form_name(labels: tuple[int, ...]) -> str:
    """(0, 1, 0, 2) -> "ABAC"."""
    return "".join(chr(ord("A") + label) for label in labels)


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
    form_prior: Tensor  # with cfg.forms only
    form_threshold: Tensor

    def __init__(self, cfg: PhraseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n = cfg.sections * cfg.code_dim
        self.encoder = _mlp(n, cfg.hidden, cfg.layers, 2 * cfg.w_dim)
        self.decoder = _mlp(cfg.w_dim, cfg.hidden, cfg.layers, n)
        self.register_buffer("code_mean", torch.zeros(cfg.code_dim))
        self.register_buffer("code_std", torch.ones(cfg.code_dim))
        if cfg.forms:
            n_forms = len(forms_of(cfg.sections))
            # how often each form occurs (sums to 1), and the largest standardised RMS
            # distance between two section codes that still counts as a repeat
            self.register_buffer("form_prior", torch.full((n_forms,), 1.0 / n_forms))
            self.register_buffer("form_threshold", torch.tensor(0.35))

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

    # ---------------------------------------------------------------- form
    def set_forms(self, codes: Tensor, threshold: float, smoothing: float = 0.5) -> None:
        """Count the forms of ``codes`` (N, sections, code_dim) under ``threshold`` into the
        form prior (``smoothing`` added to every count, so no form is impossible)."""
        self.form_threshold.fill_(threshold)
        counts = torch.bincount(self.form_index(codes), minlength=len(self.form_prior))
        prior = counts.double() + smoothing
        self.form_prior.copy_((prior / prior.sum()).float())

    def form_index(self, codes: Tensor) -> Tensor:
        """The form of each phrase's section codes: (B, sections, code_dim) -> (B,) indices
        into :func:`forms_of`. A section repeats the first earlier section, among those
        that open a label, whose code lies within the threshold of its own."""
        sections = self.cfg.sections
        x = (codes - self.code_mean) / self.code_std
        dist = (x[:, :, None] - x[:, None, :]).pow(2).mean(-1).sqrt()  # (B, s, s)
        close = (dist <= self.form_threshold).cpu().numpy()
        index = {form: i for i, form in enumerate(forms_of(sections))}
        out = []
        for row in close:
            labels: list[int] = []
            openers: list[int] = []  # the section that opens each label
            for j in range(sections):
                match = next((k for k, i in enumerate(openers) if row[i, j]), None)
                if match is None:
                    match = len(openers)
                    openers.append(j)
                labels.append(match)
            out.append(index[tuple(labels)])
        return torch.tensor(out, dtype=torch.long, device=codes.device)

    def _form_edges(self) -> Tensor:
        return torch.cat([self.form_prior.new_zeros(1), self.form_prior.cumsum(0)])

    def form_from_u(self, u: Tensor) -> Tensor:
        """(B,) form coordinates -> (B,) form indices (the normal CDF of u against the
        forms' cumulative frequencies)."""
        edges = self._form_edges()[1:-1].contiguous()
        return torch.searchsorted(edges, torch.special.ndtr(u.float()).contiguous(),
                                  right=True).clamp_(max=len(self.form_prior) - 1)

    def u_of_form(self, index: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) form indices -> the form coordinate at the middle of each form's interval,
        and a log-variance that keeps a draw inside it: (B,), (B,)."""
        edges = self._form_edges().to(index.device)
        lo, hi = edges[index], edges[index + 1]
        mid = ((lo + hi) / 2).clamp(1e-6, 1 - 1e-6)
        u = torch.special.ndtri(mid.double()).float()
        # the interval's width in u near its middle, over 4: a draw stays inside it
        density = torch.exp(-0.5 * u.double() ** 2) / math.sqrt(2 * math.pi)
        width = ((hi - lo).double() / density.clamp_min(1e-12)).float()
        return u, (2 * torch.log((width / 4).clamp(1e-4, 1.0)))

    def apply_form(self, codes: Tensor, index: Tensor) -> Tensor:
        """Each section that repeats an earlier one in its phrase's form gets that
        section's code: (B, sections, code_dim), (B,) -> (B, sections, code_dim)."""
        forms = torch.tensor(forms_of(self.cfg.sections), device=codes.device)[index]  # (B, s)
        first = torch.stack([(forms == forms[:, j : j + 1]).int().argmax(1)
                             for j in range(self.cfg.sections)], dim=1)  # (B, s)
        return torch.gather(codes, 1, first[:, :, None].expand_as(codes))

    # ---------------------------------------------------------------- latent z = [w, u]
    def encode_latent(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """codes (B, sections, code_dim) -> mu, logvar of z (B, latent_dim)."""
        mu, logvar = self.encode(codes)
        if not self.cfg.forms:
            return mu, logvar
        u, u_logvar = self.u_of_form(self.form_index(codes))
        return torch.cat([mu, u[:, None]], 1), torch.cat([logvar, u_logvar[:, None]], 1)

    def decode_latent(self, z: Tensor) -> Tensor:
        """z (B, latent_dim) -> section codes (B, sections, code_dim), repeats copied."""
        codes = self.decode(z[:, : self.cfg.w_dim])
        if not self.cfg.forms:
            return codes
        return self.apply_form(codes, self.form_from_u(z[:, self.cfg.w_dim]))

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
