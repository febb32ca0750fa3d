"""Fitting a phrase level (:class:`melodyvae.phrase.PhraseVAE`) over a section model.

The section model (a trained 4-bar VAE) encodes every section of every long phrase once,
to its posterior mean; the phrase VAE then trains on those codes alone, which takes minutes
on a CPU. The same fit, started from a trained phrase level and run briefly on a few files,
adapts a model to a musician's own MIDI.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from melodyvae.phrase import PhraseConfig, PhraseVAE, phrase_loss

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class PhraseTrainConfig:
    """Optimisation of the phrase level."""

    steps: int = 4000  # optimizer steps
    batch_size: int = 256  # phrases per step
    lr: float = 1e-3  # initial learning rate (cosine decay to lr / 20)
    max_beta: float = 1.0  # final KL weight
    warmup: int = 1000  # steps over which beta rises linearly from 0
    free_bits: float = 0.0  # KL budget in bits left unpenalised
    weight_decay: float = 1e-4  # AdamW decoupled weight decay


def learning_rate(step: int, cfg: PhraseTrainConfig) -> float:
    """Cosine decay from ``lr`` to ``lr / 20`` over ``steps``."""
    t = min(step / max(cfg.steps, 1), 1.0)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * t)))


def kl_weight(step: int, cfg: PhraseTrainConfig) -> float:
    """beta rising linearly from 0 to ``max_beta`` over ``warmup`` steps."""
    return cfg.max_beta * min(1.0, step / max(cfg.warmup, 1))


@torch.no_grad()
def section_codes(encode: Callable[[np.ndarray], np.ndarray], tokens: np.ndarray,
                  sections: int, batch: int = 512,
                  progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Posterior means of every section: tokens (N, sections * S) -> (N, sections, Z).

    ``encode`` maps section tokens (n, S) to posterior means (n, Z)."""
    n, t = tokens.shape
    flat = tokens.reshape(n * sections, t // sections)  # (N * sections, S)
    out = []
    for i in range(0, len(flat), batch):
        out.append(encode(flat[i : i + batch]))
        if progress is not None:
            progress(min(batch, len(flat) - i))
    codes = np.concatenate(out).astype(np.float32)
    return codes.reshape(n, sections, -1)


def fit(codes: np.ndarray, cfg: PhraseConfig, train_cfg: PhraseTrainConfig,
        valid: np.ndarray | None = None, seed: int = 0, start: PhraseVAE | None = None,
        max_seconds: float | None = None,
        progress: Callable[[int, dict[str, float]], None] | None = None,
        ) -> tuple[PhraseVAE, list[dict[str, float]]]:
    """Train a phrase VAE on section codes (N, sections, Z); returns it and its log.

    ``start`` continues from a trained phrase level (its code statistics are kept);
    ``max_seconds`` ends the fit early, at a whole step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = torch.as_tensor(codes, dtype=torch.float32)
    if start is not None:
        model = PhraseVAE(start.cfg)
        model.load_state_dict(start.state_dict())
    else:
        model = PhraseVAE(cfg)
        model.set_code_stats(data)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr,
                                  weight_decay=train_cfg.weight_decay)
    free_nats = train_cfg.free_bits * math.log(2.0)
    log: list[dict[str, float]] = []
    began = time.monotonic()
    for step in range(train_cfg.steps):
        rows = torch.as_tensor(rng.integers(0, len(data), train_cfg.batch_size))
        x = data[rows]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, train_cfg)
        beta = kl_weight(step, train_cfg)
        recon, mu, logvar = model(x)
        losses = phrase_loss(recon, x, mu, logvar, model.code_std, beta, free_nats)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        last = step + 1 == train_cfg.steps
        timed_out = max_seconds is not None and time.monotonic() - began >= max_seconds
        if step % 100 == 0 or last or timed_out:
            row = {"step": step + 1, "err": float(losses["err"]), "kl": float(losses["kl"]),
                   "beta": beta}
            if valid is not None and len(valid):
                row["valid_err"] = reconstruction_error(model, valid)
                model.train()
            log.append(row)
            if progress is not None:
                progress(step + 1, row)
        if timed_out:
            break
    model.eval()
    return model, log


@torch.no_grad()
def reconstruction_error(model: PhraseVAE, codes: np.ndarray) -> float:
    """Mean squared error per standardised code dimension, through the posterior mean."""
    model.eval()
    x = torch.as_tensor(codes, dtype=torch.float32)
    recon, _, _ = model(x, sample_w=False)
    return float((((recon - x) / model.code_std) ** 2).mean())
