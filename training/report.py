"""Everything the model card shows for one model, measured in one run.

    python -m melodyvae.training.report MODEL CORPUS --out docs/models/NAME

writes ``report.json`` (the musical measures of the model beside the held-out data and a
Markov-chain baseline, test-split metrics, attribute matrix, feature overlap, interpolation
check, novelty reference), ``card.md`` (the card's tables, the musical measures first, with
the goals they meet and miss) and PNGs (latent map, piano rolls of prior samples and of one
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
from melodyvae.training.evaluate import MUSIC_SAMPLES, evaluate_model, music_measures

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
                 seed: int = 0, music_samples: int = MUSIC_SAMPLES,
                 commands: dict[str, str] | None = None) -> dict[str, Any]:
    """Measure everything the card shows; ``commands`` names the command lines that
    reproduce the figures (``{"report": ..., "evaluate": ...}``), shown on the card."""
    out.mkdir(parents=True, exist_ok=True)
    test = corpus.subset("test")
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {"model": vae.name, "preset": vae.info.get("preset"),
                              "training": vae.info.get("training"),
                              "data": vae.info.get("data"),
                              "commands": commands or {}}
    report["music"] = music_measures(vae, test, corpus.subset("train"), music_samples, seed=seed)
    report["test"] = evaluate_model(vae, test)
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


# The goals a shipped 4-bar model is held to: (label, where in the report, bound).
GOALS: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("note F1 of reconstructions", ("music", "reconstruction", "note_f1"), ">=", 0.80),
    ("sampled token accuracy", ("test", "sampled_accuracy"), ">=", 0.90),
    ("degenerate samples, T 0", ("music", "samples", "0.0", "degenerate_share"), "<=", 0.01),
    ("degenerate samples, T 0.5", ("music", "samples", "0.5", "degenerate_share"), "<=", 0.01),
    ("degenerate samples, T 1.0", ("music", "samples", "1.0", "degenerate_share"), "<=", 0.01),
    ("key fit of samples, T 1.0", ("music", "samples", "1.0", "key_fit"), ">=", 0.97),
)


# The goals of a 16-bar model (the phrase level's): absolute ones, then relative to the data.
GOALS_16: tuple[tuple[str, tuple[str, ...], str, float], ...] = (
    ("note F1 of reconstructions", ("music", "reconstruction", "note_f1"), ">=", 0.60),
    ("degenerate samples, T 0", ("music", "samples", "0.0", "degenerate_share"), "<=", 0.02),
    ("degenerate samples, T 0.5", ("music", "samples", "0.5", "degenerate_share"), "<=", 0.02),
    ("degenerate samples, T 1.0", ("music", "samples", "1.0", "degenerate_share"), "<=", 0.02),
    ("key fit of samples, T 0.5", ("music", "samples", "0.5", "key_fit"), ">=", 0.97),
)


def _lookup(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = report
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def goal_lines(report: dict[str, Any]) -> list[str]:
    """One line per goal: the figure, the bound, met or NOT MET."""
    lines = []
    sixteen = (report.get("steps_per_phrase") or (report.get("test") or {}).get(
        "steps_per_phrase")) == 256
    for label, path, op, bound in GOALS_16 if sixteen else GOALS:
        value = _lookup(report, path)
        if value is None:
            continue
        met = value >= bound if op == ">=" else value <= bound
        lines.append(f"- {label}: {value:.3f} (goal {'≥' if op == '>=' else '≤'} {bound:g})"
                     f" — {'met' if met else '**not met**'}")
    music = report.get("music") or {}
    if sixteen:
        lines += _relative_goal_lines(report)
    model_fit = _lookup(report, ("music", "samples", "1.0", "key_fit"))
    markov_fit = (music.get("markov") or {}).get("key_fit")
    if model_fit is not None and markov_fit is not None:
        lines.append(f"- key fit of samples, T 1.0, above the Markov chain's: {model_fit:.3f} "
                     f"against {markov_fit:.3f} — "
                     + ("met" if model_fit > markov_fit else "**not met**"))
    rho = (report.get("attributes") or {}).get("rho") or {}
    if rho:
        low = {k: v for k, v in rho.items() if v < 0.9}
        lines.append("- attribute sliders monotonic over ±2 (ρ ≥ 0.9): "
                     + ("met" if not low else "**not met** for "
                        + ", ".join(f"{_label(k)} (ρ {v:.2f})" for k, v in low.items())))
    return lines


def _relative_goal_lines(report: dict[str, Any]) -> list[str]:
    """The 16-bar goals set against the held-out data: bar repeats at T 0.5 within 0.15 of
    the data's, leaps larger than a fifth across bar lines within 3 points, and no
    degenerate step in the interpolations."""
    music = report["music"]
    data, half = music["heldout"], music["samples"].get("0.5") or {}
    lines = []
    for label, key, within in (("bar repeats of samples, T 0.5", "bar_repeat_share", 0.15),
                               ("leaps > 5th across bar lines, T 0.5",
                                "leap_share_across_bars", 0.03)):
        if data.get(key) is None or half.get(key) is None:
            continue
        met = abs(half[key] - data[key]) <= within
        lines.append(f"- {label}: {half[key]:.3f} against the data's {data[key]:.3f} (goal "
                     f"within {within:g}) — {'met' if met else '**not met**'}")
    steps = (report.get("interpolation") or {}).get("degenerate_steps")
    if steps is not None:
        lines.append(f"- degenerate interpolation steps: {steps} (goal 0) — "
                     + ("met" if steps == 0 else "**not met**"))
    return lines


def _cell(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def music_markdown(report: dict[str, Any]) -> list[str]:
    """The card's first table: the model against the data against the Markov chain."""
    music = report["music"]
    rec, settings = music["reconstruction"], music["settings"]
    commands = report.get("commands") or {}
    lines = [
        f"**{report['model']}** against the held-out data and a third-order Markov chain on "
        f"note events trained on the same training split ({rec['n']:,} test phrases; "
        f"{settings['samples_per_temperature']:,} prior samples per temperature and "
        f"{settings['samples_per_temperature']:,} Markov samples, seed {settings['seed']}; "
        "definitions in docs/measures.md).",
        "",
        f"Reconstructions (greedy, from the posterior mean): note onset+pitch F1 "
        f"**{rec['note_f1']:.3f}** (precision {rec['note_precision']:.3f}, recall "
        f"{rec['note_recall']:.3f}); token accuracy {rec['token_accuracy']:.3f}, where "
        f"predicting hold at every step scores {rec['hold_baseline_accuracy']:.3f}; "
        f"{rec['repeated_pitch_share']:.1%} repeat one pitch more than 8 times in a row.",
        "",
        "| | key fit | fully diatonic | degenerate | notes / bar | range (semitones) "
        "| leaps > 5th across bars | leaps > 5th inside bars | bar repeats |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = [("held-out data", music["heldout"])]
    if music.get("markov"):
        rows.append(("Markov chain", music["markov"]))
    rows += [(f"{report['model']}, T {t}", m) for t, m in music["samples"].items()]
    for label, m in rows:
        lines.append(
            f"| {label} | {_cell(m['key_fit'])} | {_cell(m['diatonic_share'])} "
            f"| {_cell(m['degenerate_share'])} | {_cell(m['notes_per_bar'], 2)} "
            f"| {_cell(m['pitch_range'], 1)} | {_cell(m['leap_share_across_bars'])} "
            f"| {_cell(m['leap_share_within_bars'])} | {_cell(m['bar_repeat_share'])} |")
    lines.append("")
    if "report" in commands:
        lines.append(f"Every figure on this card: `{commands['report']}`.")
    if "evaluate" in commands:
        lines.append(f"These musical measures alone, the same figures: `{commands['evaluate']}`.")
    lines += [""] if commands else []
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The model card's tables for one report (what ``card.md`` holds)."""
    test = report["test"]
    lines: list[str] = []
    if report.get("music"):
        lines += music_markdown(report)
    goals = goal_lines(report)
    if goals:
        sixteen = test.get("steps_per_phrase") == 256
        lines += [("Goals (those set for a 16-bar model):" if sixteen
                   else "Goals (those set for the shipped hier-4bar):"), *goals, ""]
    lines += [
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
                  + (" (growing step by step)" if interp["monotone"] else
                     " (not growing at every step)")
                  + (f"; {interp['degenerate_steps']} degenerate steps."
                     if "degenerate_steps" in interp else "."), ""]
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
    parser.add_argument("--samples", type=int, default=1000,
                        help="prior samples for the feature overlap (1000)")
    parser.add_argument("--music-samples", type=int, default=MUSIC_SAMPLES,
                        help=f"prior samples per temperature for the musical measures "
                             f"({MUSIC_SAMPLES})")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    vae = MelodyVAE.load(args.model, device="cpu")
    threads = f" --threads {args.threads}" if args.threads else ""
    music = (f" --music-samples {args.music_samples}"
             if args.music_samples != MUSIC_SAMPLES else "")
    commands = {
        "report": f"python -m melodyvae.training.report {args.model} {args.corpus} "
                  f"--out {args.out}{music}{threads}",
        "evaluate": f"melodyvae evaluate {args.model} {args.corpus} --music --json"
                    + (f" --samples {args.music_samples}" if music else "") + threads,
    }
    report = build_report(vae, Corpus.load(args.corpus), Path(args.out), args.samples,
                          music_samples=args.music_samples, commands=commands)
    print(json.dumps({k: report[k] for k in ("music", "test", "feature_overlap")
                      if k in report}))


if __name__ == "__main__":
    main()
