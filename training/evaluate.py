"""Evaluation: the MusicVAE paper's reconstruction accuracies, NLL, KL and active units."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melodyvae import decode
from melodyvae.melody import to_tokens
from melodyvae.model import VAE, kl_divergence, reconstruction_nll
from melodyvae.training.corpus import (
    Corpus,
    CorpusError,
    NoPhrasesError,
    melodies_from_midi_folder,
    min_notes,
    on_16_step_bars,
    windows,
)

ACTIVE_UNIT_VARIANCE = 0.01  # a latent dim is active when Var_x[mu(x)] exceeds this


@torch.no_grad()
def evaluate_tokens(model: VAE, tokens: np.ndarray | torch.Tensor, batch_size: int = 256,
                    sampled: bool = True) -> dict[str, Any]:
    """Metrics over phrases ``tokens`` (N, T).

    * ``teacher_forced_accuracy``: argmax of the teacher-forced logits with z = the
      posterior mean, over every step;
    * ``sampled_accuracy``: free-running greedy decode from the posterior mean, over every
      step (the paper's "sampling" accuracy);
    * ``nll_bits_per_step``: reconstruction NLL at the posterior mean, bits per step;
    * ``kl_nats``: KL(q(z|x) || p(z)) per phrase;
    * ``active_units``: dims whose posterior-mean variance over the phrases exceeds 0.01.
    """
    model.eval()
    device = next(model.parameters()).device
    data = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    if data.ndim != 2 or data.shape[0] == 0:
        raise NoPhrasesError("no phrases to evaluate")
    n, t = data.shape
    tf_correct = sampled_correct = 0
    nll_total = kl_total = 0.0
    mus = []
    for i in range(0, n, batch_size):
        x = data[i : i + batch_size].to(device)
        mu, logvar = model.encode(x)
        logits = model.decoder(mu, x)
        tf_correct += int((logits.argmax(-1) == x).sum())
        nll_total += float(reconstruction_nll(logits, x).sum())
        kl_total += float(kl_divergence(mu, logvar).sum())
        if sampled:
            sampled_correct += int((decode.sample(model, mu) == x).sum())
        mus.append(mu.float().cpu())
    mu_all = torch.cat(mus)
    variance = mu_all.var(dim=0, unbiased=False) if n > 1 else torch.zeros(mu_all.shape[1])
    steps = n * t
    out: dict[str, Any] = {
        "n_phrases": n,
        "steps_per_phrase": t,
        "teacher_forced_accuracy": tf_correct / steps,
        "nll_bits_per_step": nll_total / steps / math.log(2.0),
        "kl_nats": kl_total / n,
        "active_units": int((variance > ACTIVE_UNIT_VARIANCE).sum()),
    }
    if sampled:
        out["sampled_accuracy"] = sampled_correct / steps
    return out


def phrases_from_midi_folder(folder: str | os.PathLike[str], bars: int) -> np.ndarray:
    """Non-overlapping phrases of ``bars`` bars from every MIDI file under ``folder``."""
    rows = []
    for melody in melodies_from_midi_folder(folder):
        rebarred = on_16_step_bars(melody)
        if rebarred is None:  # other meters: the 16th stream laid on 16-step bars as is
            rebarred = melody.__class__(melody.notes, -(-melody.total_steps // 16) * 16, 16,
                                        melody.qpm, melody.time_signature)
        for phrase in windows(rebarred, bars, bars):
            if len(phrase.notes) >= min_notes(bars):
                rows.append(to_tokens(phrase)[0])
    if not rows:
        raise NoPhrasesError(f"{folder}: no {bars}-bar phrases with notes in its MIDI files")
    return np.stack(rows)


def load_eval_data(data: str | os.PathLike[str], bars: int, split: str = "test") -> np.ndarray:
    """Phrases from a corpus file (one split) or a folder of MIDI files."""
    path = Path(data)
    if path.is_dir():
        return phrases_from_midi_folder(path, bars)
    corpus = Corpus.load(path)
    if corpus.bars != bars:
        raise CorpusError(f"{path}: phrases of {corpus.bars} bars, the model takes {bars}")
    tokens = corpus.subset(split)
    if len(tokens) == 0:
        raise NoPhrasesError(f"{path}: the {split} split is empty")
    return tokens
