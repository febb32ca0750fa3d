"""Evaluation: the MusicVAE paper's reconstruction accuracies, NLL, KL and active units,
and the musical measures (:mod:`melodyvae.training.measures`) of a model beside the
held-out data and a Markov-chain baseline."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE

ACTIVE_UNIT_VARIANCE = 0.01  # a latent dim is active when Var_x[mu(x)] exceeds this
TEMPERATURES = (0.0, 0.5, 1.0)  # prior samples are measured at each of these
MUSIC_SAMPLES = 1000  # prior samples per temperature, and Markov-chain samples


# one evaluated batch: targets and their teacher-forced logits (same leading shape), the
# posterior's mean and log-variance, and how many greedy-decoded steps hit (None: not decoded)
_Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int | None]


def _summary(batches: Iterator[_Batch], n: int, t: int) -> dict[str, Any]:
    """The metrics of :func:`evaluate_tokens` from evaluated batches of ``n`` phrases of ``t``
    steps."""
    tf_correct = 0
    sampled_correct: int | None = 0
    nll_total = kl_total = 0.0
    mus = []
    for x, logits, mu, logvar, hits in batches:
        tf_correct += int((logits.argmax(-1) == x).sum())
        nll_total += float(reconstruction_nll(logits, x).sum())
        kl_total += float(kl_divergence(mu, logvar).sum())
        if hits is None or sampled_correct is None:
            sampled_correct = None
        else:
            sampled_correct += hits
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
    if sampled_correct is not None:
        out["sampled_accuracy"] = sampled_correct / steps
    return out


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

    def batches() -> Iterator[_Batch]:
        for i in range(0, len(data), batch_size):
            x = data[i : i + batch_size].to(device)
            mu, logvar = model.encode(x)
            hits = int((decode.sample(model, mu) == x).sum()) if sampled else None
            yield x, model.decoder(mu, x), mu, logvar, hits

    return _summary(batches(), *data.shape)


@torch.no_grad()
def evaluate_model(vae: MelodyVAE, tokens: np.ndarray, batch_size: int = 256
                   ) -> dict[str, Any]:
    """:func:`evaluate_tokens` for any model behind the facade. A phrase model is measured
    as it plays: the posterior mean of its latent, the section codes its phrase decoder
    gives for it (repeats copied), the section model teacher-forced and greedy at those
    codes; ``kl_nats`` and ``active_units`` are its phrase latent's."""
    from melodyvae.phrase_inference import PhraseMelodyVAE

    if not isinstance(vae, PhraseMelodyVAE):
        return evaluate_tokens(vae.model, tokens, batch_size)
    data = np.asarray(tokens)
    if data.ndim != 2 or data.shape[0] == 0:
        raise NoPhrasesError("no phrases to evaluate")
    section = vae.section.model.eval()

    def batches() -> Iterator[_Batch]:
        for i in range(0, len(data), batch_size):
            chunk = data[i : i + batch_size]
            mu, logvar = vae.encode_tokens(chunk)
            codes = vae.phrase.decode_latent(mu).reshape(-1, vae.code_dim)  # (b * sections, Z)
            x = torch.as_tensor(chunk.reshape(-1, vae.section.steps), dtype=torch.long,
                                device=vae.device)
            hits = int((vae.decode_tokens(mu, 0.0).cpu().numpy() == chunk).sum())
            yield x, section.decoder(codes, x), mu, logvar, hits

    return _summary(batches(), *data.shape)


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


def train_phrases(data: str | os.PathLike[str], bars: int) -> np.ndarray | None:
    """The train split of a corpus file (what the Markov baseline learns from); None for a
    folder of MIDI files, which has no train split."""
    path = Path(data)
    return None if path.is_dir() else load_eval_data(path, bars, "train")


@torch.no_grad()
def reconstruct(vae: MelodyVAE, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Greedy reconstructions from the posterior mean: (N, T) tokens -> (N, T)."""
    rows = []
    for start in range(0, len(tokens), batch_size):
        mu, _ = vae.encode_tokens(tokens[start : start + batch_size])
        rows.append(vae.decode_tokens(mu, 0.0).cpu().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, vae.steps), dtype=np.int64)


def music_measures(vae: MelodyVAE, test: np.ndarray, train: np.ndarray | None = None,
                   samples: int = MUSIC_SAMPLES, temperatures: tuple[float, ...] = TEMPERATURES,
                   seed: int = 0, batch_size: int = 256) -> dict[str, Any]:
    """The musical measures of a model, the held-out data and the Markov baseline.

    ``test`` (N, T): held-out phrases; ``train``: the phrases the Markov chain learns from
    (None: no baseline). Returns ``{"reconstruction": ..., "samples": {temperature: ...},
    "heldout": ..., "markov": ... or None, "settings": ...}``; the keys of each part are
    those of :func:`~melodyvae.training.measures.reconstruction_measures` and
    :func:`~melodyvae.training.measures.sample_measures` (``docs/measures.md``).
    Temperatures are keyed as ``str(float(t))``: "0.0", "0.5", "1.0".
    """
    from melodyvae.training import measures
    from melodyvae.training.markov import ORDER, MarkovChain
    from melodyvae.training.quality import prior_samples

    test = np.asarray(test, dtype=np.int64)
    if test.ndim != 2 or len(test) == 0:
        raise NoPhrasesError("no phrases to evaluate")
    spb = vae.steps_per_bar
    doc: dict[str, Any] = {
        "reconstruction": measures.reconstruction_measures(
            test, reconstruct(vae, test, batch_size)),
        "samples": {
            str(float(t)): measures.sample_measures(prior_samples(vae, samples, t, seed), spb)
            for t in temperatures
        },
        "heldout": measures.sample_measures(test, spb),
        "markov": None,
    }
    if train is not None:
        chain = MarkovChain.fit(train)
        doc["markov"] = measures.sample_measures(chain.sample(samples, seed), spb)
    doc["settings"] = {
        "samples_per_temperature": samples,
        "temperatures": [float(t) for t in temperatures],
        "seed": seed,
        "markov_order": ORDER,
        "markov_train_phrases": None if train is None else int(len(train)),
    }
    return doc


def _fmt(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def music_lines(doc: dict[str, Any]) -> list[str]:
    """A plain-text table of :func:`music_measures`' document."""
    rec = doc["reconstruction"]
    lines = [
        f"reconstruction ({rec['n']} phrases, greedy from the posterior mean): "
        f"note F1 {_fmt(rec['note_f1'])} (P {_fmt(rec['note_precision'])}, "
        f"R {_fmt(rec['note_recall'])}), token accuracy {_fmt(rec['token_accuracy'])} "
        f"(all-hold {_fmt(rec['hold_baseline_accuracy'])}), one pitch > 8 times "
        f"{_fmt(rec['repeated_pitch_share'])}",
        f"{'':>16} {'n':>6} {'key fit':>8} {'diatonic':>8} {'degen.':>7} {'notes/bar':>9} "
        f"{'range':>6} {'leap|bar':>8} {'leap in':>8} {'bar rep.':>8}",
    ]
    rows = [(f"sample T {t}", m) for t, m in doc["samples"].items()]
    rows.append(("held-out data", doc["heldout"]))
    if doc.get("markov"):
        rows.append(("Markov chain", doc["markov"]))
    for label, m in rows:
        lines.append(
            f"{label:>16} {m['n']:>6} {_fmt(m['key_fit']):>8} {_fmt(m['diatonic_share']):>8} "
            f"{_fmt(m['degenerate_share']):>7} {_fmt(m['notes_per_bar'], 2):>9} "
            f"{_fmt(m['pitch_range'], 1):>6} {_fmt(m['leap_share_across_bars']):>8} "
            f"{_fmt(m['leap_share_within_bars']):>8} {_fmt(m['bar_repeat_share']):>8}")
    return lines
