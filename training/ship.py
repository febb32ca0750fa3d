"""Turn a training run's checkpoint into a shipped model file.

    python -m melodyvae.training.ship RUN/model.safetensors CORPUS --name hier-4bar \
        [--out melodyvae/models]

computes the latent axes on the corpus's train split, the test-split metrics and the
novelty reference (negative ELBO of the valid split, for ``melodyvae score``), and writes
``OUT/NAME.safetensors`` with float16 weights and all of that in its JSON. A phrase model
(from ``melodyvae train-phrase``, axes already computed) gets its metrics, novelty
reference and name; its weights stay as they are.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from melodyvae.checkpoint import (
    PHRASE_KIND,
    load_checkpoint,
    read_info,
    save_checkpoint,
    write_info,
)
from melodyvae.inference import MODELS_DIR, MelodyVAE
from melodyvae.training.axes import compute_axes
from melodyvae.training.corpus import Corpus
from melodyvae.training.evaluate import evaluate_model, evaluate_tokens

_LOGGER = logging.getLogger(__name__)


def _metrics(metrics: dict) -> dict:
    keys = ("teacher_forced_accuracy", "sampled_accuracy", "nll_bits_per_step", "kl_nats",
            "active_units")
    return {**{k: metrics[k] for k in keys}, "test_phrases": metrics["n_phrases"]}


def ship_phrase(checkpoint: Path, corpus: Corpus, name: str, out_dir: Path) -> Path:
    """A phrase model file with its test metrics, novelty reference and name."""
    vae = MelodyVAE.load(checkpoint, device="cpu")
    metrics = evaluate_model(vae, corpus.subset("test"))
    _LOGGER.info("test metrics %s", metrics)
    heldout = np.sort(vae.negative_elbo_bits(corpus.subset("valid")))
    info = dict(read_info(checkpoint))
    info.update({"preset": name, "metrics": _metrics(metrics),
                 "novelty": {"heldout_bits": [round(float(b), 3) for b in heldout],
                             "split": "valid"}})
    out = out_dir / f"{name}.safetensors"
    write_info(checkpoint, info, out)
    out.chmod(0o644)
    return out


def ship(checkpoint: Path, corpus: Corpus, name: str, out_dir: Path,
         axes_phrases: int = 20000) -> Path:
    if read_info(checkpoint).get("kind") == PHRASE_KIND:
        return ship_phrase(checkpoint, corpus, name, out_dir)
    ckpt = load_checkpoint(checkpoint)
    vae = MelodyVAE(ckpt.model, ckpt.info, name, ckpt.model.encoder.to_mu.weight.device)
    axes, used = compute_axes(vae, corpus.subset("train"), axes_phrases)
    _LOGGER.info("axes from %d phrases", used)
    metrics = evaluate_tokens(ckpt.model, corpus.subset("test"))
    _LOGGER.info("test metrics %s", metrics)
    heldout = np.sort(vae.negative_elbo_bits(corpus.subset("valid")))
    extra = {k: v for k, v in ckpt.info.items()
             if k not in ("format", "format_version", "preset", "description", "model",
                          "train", "representation")}
    extra.update({
        "name": name,
        "axes": axes,
        "metrics": _metrics(metrics),
        "novelty": {"heldout_bits": [round(float(b), 3) for b in heldout],
                    "split": "valid"},
    })
    out = out_dir / f"{name}.safetensors"
    save_checkpoint(out, ckpt.model, ckpt.preset, extra, half=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a shipped model file from a run.")
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, default=MODELS_DIR)
    parser.add_argument("--axes-phrases", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    path = ship(args.checkpoint, Corpus.load(args.corpus), args.name, args.out,
                args.axes_phrases)
    print(json.dumps({"path": str(path), "metrics": read_info(path)["metrics"]}))


if __name__ == "__main__":
    main()
