"""Fitting a phrase level (:class:`melodyvae.phrase.PhraseVAE`) over a section model.

The section model (a trained 4-bar VAE) encodes every section of every long phrase once,
to its posterior mean; the phrase VAE then trains on those codes alone, which takes minutes
on a CPU. The same fit, started from a trained phrase level and run briefly on a few files,
adapts a model to a musician's own MIDI.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from melodyvae.errors import UserError
from melodyvae.phrase import PhraseConfig, PhraseVAE, phrase_loss

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE
    from melodyvae.phrase_inference import PhraseMelodyVAE

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
            row = {"step": step + 1, "err": float(losses["err"].detach()),
                   "kl": float(losses["kl"].detach()), "beta": beta}
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


# ------------------------------------------------------------------ a phrase model from a corpus

MAX_AXES_PHRASES = 20000  # phrases whose w the latent axes are computed from
FORM_THRESHOLD = 0.7  # standardised RMS code distance under which a section repeats another
# (docs/phrase.md: at 0.7 the bar repeats of samples come near the data's; exact repeats of
# hier-4bar's test sections lie at 0, distinct sections at 0.36 and above in 99 pairs of 100)
ADAPT_FORM_WEIGHT = 4.0  # the base model's form prior counts as this many of a folder's phrases


def phrase_axes(phrase: PhraseVAE, codes: np.ndarray, tokens: np.ndarray) -> dict[str, Any]:
    """Latent axes over the phrase latent: PCA of the phrase posterior means of ``codes``
    (N, sections, Z) and attribute vectors from their ``tokens`` (N, T)."""
    from melodyvae.training.axes import axes_document

    n = min(len(codes), MAX_AXES_PHRASES)
    pick = np.linspace(0, len(codes) - 1, n).round().astype(int)
    with torch.no_grad():
        mu, _ = phrase.encode_latent(torch.as_tensor(codes[pick], dtype=torch.float32))
    means = mu.numpy()
    means[:, phrase.cfg.w_dim:] = 0.0  # the axes and sliders move w only; the form stays
    return axes_document(means, tokens[pick])


def corpus_codes(section: MelodyVAE, tokens: np.ndarray, sections: int, desc: str,
                 progress: bool = True) -> np.ndarray:
    """The section model's codes of every section of ``tokens`` (N, T), with a progress bar."""
    from tqdm import tqdm

    with tqdm(total=len(tokens) * sections, desc=desc, unit="section",
              disable=not progress) as bar:
        return section_codes(section.encode_means, tokens, sections, progress=bar.update)


def train_phrase_model(section_name: str, data: Path, out: Path, phrase_cfg: dict[str, int],
                       train_cfg: PhraseTrainConfig, codes_cache: Path | None = None,
                       name: str | None = None, seed: int = 0, progress: bool = True,
                       form_threshold: float = FORM_THRESHOLD) -> Path:
    """Fit a phrase level over a section model on a long-phrase corpus and write the phrase
    model file (with latent axes over its phrase latent).

    The section codes of the corpus's train and valid splits are cached in ``codes_cache``
    (arrays ``tr`` and ``va``) when given: encoding is most of the cost."""
    from tqdm import tqdm

    from melodyvae.checkpoint import save_phrase_checkpoint
    from melodyvae.inference import MelodyVAE
    from melodyvae.training.corpus import Corpus

    section = MelodyVAE.load(section_name, device="cpu")
    if type(section) is not MelodyVAE:
        raise UserError(f"{section_name}: a phrase model; the section model must be a plain one")
    corpus = Corpus.load(data)
    if corpus.bars % section.bars:
        raise UserError(f"{data}: phrases of {corpus.bars} bars do not cut into sections of "
                        f"{section.bars} bars")
    sections = corpus.bars // section.bars
    train_tokens, valid_tokens = corpus.subset("train"), corpus.subset("valid")[:500]
    if codes_cache is not None and codes_cache.is_file():
        cached = np.load(codes_cache)
        tr, va = cached["tr"], cached["va"]
        if tr.shape != (len(train_tokens), sections, section.z_dim):
            raise UserError(f"{codes_cache}: codes of shape {tr.shape}, not of this corpus and "
                            "section model")
    else:
        tr = corpus_codes(section, train_tokens, sections, "encode train", progress)
        va = corpus_codes(section, valid_tokens, sections, "encode valid", progress)
        if codes_cache is not None:
            np.savez(codes_cache, tr=tr, va=va)
    cfg = PhraseConfig(sections=sections, code_dim=section.z_dim, **phrase_cfg)
    began = time.monotonic()
    with tqdm(total=train_cfg.steps, desc="fit phrase level", unit="step",
              disable=not progress) as bar:
        def report(step: int, row: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(err=f"{row['err']:.1f}", kl=f"{row['kl']:.1f}")

        phrase, log = fit(tr, cfg, train_cfg, valid=va, seed=seed, progress=report)
    if cfg.forms:
        phrase.set_forms(torch.as_tensor(tr), form_threshold)
    name = name or out.stem
    extra = {
        "data": {"source": str(corpus.meta.get("source", data)), "corpus": data.name,
                 "bars": corpus.bars, "train_phrases": len(tr)},
        "training": {"step": train_cfg.steps, "seconds": round(time.monotonic() - began, 1),
                     "config": dataclasses.asdict(train_cfg), "final": log[-1]},
        "axes": phrase_axes(phrase, tr, train_tokens),
    }
    description = (f"phrase level ({sections} sections) over {section.name}, "
                   f"w {cfg.w_dim}, fit on {len(tr)} phrases")
    save_phrase_checkpoint(out, section.model, _section_preset(section), phrase, name,
                           description, extra)
    return out


def _section_preset(section: MelodyVAE) -> Any:
    from melodyvae.checkpoint import preset_from_info

    return preset_from_info(section.info)


# ------------------------------------------------------------------ adapting to a MIDI folder

ADAPT_SECONDS = 50.0  # default time for adapt: reading, encoding and fitting together
MIN_FILES = 2  # fewest MIDI files a folder must give melodies from


def folder_phrases(folder: Path, bars: int) -> tuple[np.ndarray, int]:
    """The distinct ``bars``-bar windows (hop one bar) of every MIDI file under ``folder``,
    as tokens (N, T), and how many files gave any."""
    from melodyvae.errors import MelodyVAEError
    from melodyvae.melody import to_tokens
    from melodyvae.midi import read_midi
    from melodyvae.training.corpus import find_midi_files, min_notes, on_16_step_bars, windows

    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    files = find_midi_files(folder)
    if not files:
        raise UserError(f"{folder}: no MIDI files (.mid, .midi) in it")
    if len(files) < MIN_FILES:
        raise UserError(f"{folder}: {len(files)} MIDI file; adapting needs at least "
                        f"{MIN_FILES} (ten or more work best)")
    rows: dict[bytes, np.ndarray] = {}
    used = 0
    for path in files:
        try:
            melody = on_16_step_bars(read_midi(path)[0])
        except (MelodyVAEError, OSError, ValueError) as e:
            _LOGGER.info("skipping %s: %s", path, e)
            continue
        if melody is None:
            continue
        found = False
        for window in windows(melody, bars, 1):
            if len(window.notes) >= min_notes(bars):
                tokens = to_tokens(window)[0]
                rows.setdefault(tokens.astype(np.uint8).tobytes(), tokens)
                found = True
        used += found
    if used < MIN_FILES:
        raise UserError(f"{folder}: melodies of {bars} bars or more (in 4/4, 2/4 or 2/2) "
                        f"found in {used} of {len(files)} MIDI files; at least {MIN_FILES} "
                        "needed")
    return np.stack(list(rows.values())), used


def adapt(base: PhraseMelodyVAE, folder: Path, out: Path, seconds: float = ADAPT_SECONDS,
          steps: int = 1000, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Fit ``base``'s phrase level to the melodies of a MIDI folder (MidiMe-style: the section
    model stays) and write the result as a phrase model file; a summary comes back.

    The fit starts from the base phrase level, keeps its code statistics and latent axes, and
    stops after ``steps`` steps or when ``seconds`` have passed since the folder was first
    read, whichever comes first. The phrases are learnt in their own keys: transposed copies
    flattened the pitch-class profile that makes a folder's style (measured in
    docs/phrase.md)."""
    from tqdm import tqdm

    from melodyvae.checkpoint import preset_from_info, save_phrase_checkpoint

    began = time.monotonic()
    tokens, used = folder_phrases(folder, base.bars)
    codes = corpus_codes(base.section, tokens, base.sections, "encode", progress)
    train_cfg = PhraseTrainConfig(steps=steps, batch_size=min(128, len(codes)), lr=1e-3,
                                  warmup=1, max_beta=1.0)
    left = max(1.0, seconds - (time.monotonic() - began))
    with tqdm(total=steps, desc="adapt", unit="step", disable=not progress) as bar:
        def report(step: int, row: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(err=f"{row['err']:.1f}")

        phrase, log = fit(codes, base.phrase.cfg, train_cfg, seed=seed, start=base.phrase,
                          max_seconds=left, progress=report)
        bar.update(int(log[-1]["step"]) - bar.n)
    if phrase.cfg.forms:  # the folder's forms, with the base model's as a few phrases more
        counts = torch.bincount(phrase.form_index(torch.as_tensor(codes)),
                                minlength=len(phrase.form_prior)).float()
        prior = counts + ADAPT_FORM_WEIGHT * base.phrase.form_prior
        phrase.form_prior.copy_(prior / prior.sum())
    summary = {"files": used, "phrases": len(tokens), "steps": int(log[-1]["step"]),
               "seconds": round(time.monotonic() - began, 1)}
    extra: dict[str, Any] = {key: base.info[key] for key in ("axes", "data")
                             if key in base.info}
    extra["training"] = {"step": summary["steps"], "adapted_from": base.name,
                         "adapted_on": summary}
    section = base.info["section"]
    preset = preset_from_info({**section, "preset": section.get("preset", "section")})
    save_phrase_checkpoint(out, base.section.model, preset, phrase, out.stem,
                           f"{base.name} adapted to {used} MIDI files of {folder.name}", extra)
    return summary
