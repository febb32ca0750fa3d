"""Everything the model card shows for one model, measured in one run.

    python -m melodyvae.training.report MODEL CORPUS --out docs/models/NAME

writes ``report.json`` (test-split metrics, attribute matrix, feature overlap, interpolation
check, novelty reference) and PNGs (latent map, piano rolls of prior samples and of one
interpolation) into the folder.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from melodyvae.inference import MelodyVAE
from melodyvae.training import quality
from melodyvae.training.axes import attribute_table
from melodyvae.training.corpus import Corpus
from melodyvae.training.evaluate import evaluate_tokens

_LOGGER = logging.getLogger(__name__)


def latent_map(vae: MelodyVAE, tokens: np.ndarray, attribute: str, path: Path) -> None:
    """Held-out phrases on the first two PCA axes, coloured by an attribute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pca = vae.axes["pca"]
    mu = vae.encode_tokens(tokens)[0].float().cpu().numpy()
    coords = (mu - np.asarray(pca["mean"])) @ np.asarray(pca["directions"][:2]).T
    coords /= np.asarray(pca["std"][:2])
    values = attribute_table(tokens, [attribute])[:, 0]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    points = ax.scatter(coords[:, 0], coords[:, 1], c=values, s=6, cmap="viridis")
    fig.colorbar(points, ax=ax, label=attribute.replace("_", " "))
    ax.set_xlabel("pc1 (σ)")
    ax.set_ylabel("pc2 (σ)")
    ax.set_title(f"{vae.name}: held-out phrases in the latent space")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def build_report(vae: MelodyVAE, corpus: Corpus, out: Path, n_samples: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    test = corpus.subset("test")
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"model": vae.name, "preset": vae.info.get("preset"),
                              "training": vae.info.get("training"),
                              "data": vae.info.get("data")}
    report["test"] = evaluate_tokens(vae.model, test)
    _LOGGER.info("test metrics: %s", report["test"])
    samples = quality.prior_samples(vae, n_samples, 1.0, seed)
    report["feature_overlap"] = quality.feature_overlap(samples, test)
    report["interpolation"] = quality.interpolation_check(vae, test, seed=seed)
    if vae.axes:
        starts = test[rng.choice(len(test), 64, replace=len(test) < 64)]
        start_z = vae.encode_tokens(starts)[0].float().cpu().numpy()
        report["attributes"] = quality.attribute_matrix(vae, start_z)
        latent_map(vae, test[:2000], "note_density", out / "latent_map.png")
    heldout = np.sort(vae.negative_elbo_bits(corpus.subset("valid")))
    report["novelty_reference_bits"] = {
        "n": int(len(heldout)),
        "median": float(np.median(heldout)),
    }
    try:
        from melodyvae import pianoroll

        pianoroll.plot_melodies(
            vae.decode(vae.sample_z(4, seed), 1.0, seed), out / "samples.png",
            titles=[pianoroll.roll_title(f"sample {i + 1}", vae.name, 1.0, seed)
                    for i in range(4)])
        a, b = (vae.melody_from_tokens(t) for t in test[rng.choice(len(test), 2)])
        steps = vae.interpolate(a, b, 5)
        pianoroll.plot_melodies(
            steps, out / "interpolation.png",
            titles=[pianoroll.roll_title(f"step {i + 1}/5", vae.name,
                                         source="between two held-out phrases")
                    for i in range(5)])
    except ImportError:
        _LOGGER.warning("no piano-roll module; skipping piano rolls")
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "card.md").write_text(markdown(report))
    return report


def _label(name: str) -> str:
    return name.replace("_", " ")


def markdown(report: dict[str, Any]) -> str:
    """The model card's tables for one report (what ``card.md`` holds)."""
    test = report["test"]
    lines = [
        f"**{report['model']}**, held-out test split ({test['n_phrases']:,} phrases):",
        "",
        "| teacher-forced accuracy | sampled accuracy | NLL (bits/step) | KL (nats) "
        "| active units |",
        "|---|---|---|---|---|",
        f"| {test['teacher_forced_accuracy']:.3f} | {test['sampled_accuracy']:.3f} "
        f"| {test['nll_bits_per_step']:.2f} | {test['kl_nats']:.1f} | {test['active_units']} |",
        "",
    ]
    overlap = report.get("feature_overlap") or {}
    if overlap:
        lines += ["Prior samples against held-out phrases, overlapping area (goal ≥ 0.8): "
                  + ", ".join(f"{_label(k)} {v:.2f}" for k, v in overlap.items()) + ".", ""]
    interp = report.get("interpolation") or {}
    if interp:
        lines += [f"Interpolation ({interp['pairs']} pairs, {interp['steps']} steps): valid "
                  f"{interp['valid_fraction']:.0%}; distance to the first endpoint "
                  + ", ".join(f"{d:.2f}" for d in interp["mean_distance_to_first"])
                  + (" (growing step by step)." if interp["monotone"] else
                     " (not growing at every step)."), ""]
    attributes = report.get("attributes")
    if attributes:
        names = attributes["names"]
        lines += ["| moved along ↓ / measured → | " + " | ".join(map(_label, names)) + " |",
                  "|---" * (len(names) + 1) + "|"]
        for i, (name, row) in enumerate(zip(names, attributes["matrix"], strict=True)):
            cells = [f"**ρ {v:.2f}**" if j == i else f"{v:.2f}" for j, v in enumerate(row)]
            lines.append(f"| {_label(name)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Measure a model for its model card.")
    parser.add_argument("model")
    parser.add_argument("corpus")
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    vae = MelodyVAE.load(args.model, device="cpu")
    report = build_report(vae, Corpus.load(args.corpus), Path(args.out), args.samples)
    print(json.dumps({k: report[k] for k in ("test", "feature_overlap") if k in report}))


if __name__ == "__main__":
    main()
