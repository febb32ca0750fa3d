"""Shipping a run's checkpoint, and the model-card report, on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint, random_tokens

from melodyvae.checkpoint import load_checkpoint
from melodyvae.inference import MelodyVAE
from melodyvae.training.corpus import CORPUS_FORMAT_VERSION, Corpus
from melodyvae.training.evaluate import evaluate_tokens
from melodyvae.training.report import build_report
from melodyvae.training.ship import ship


@pytest.fixture
def corpus() -> Corpus:
    n = 90
    tokens = random_tokens(n, 64, seed=3).astype(np.uint8)
    split = np.repeat(np.array([0, 1, 2], dtype=np.uint8), n // 3)
    meta = {"format_version": CORPUS_FORMAT_VERSION, "bars": 4, "steps_per_bar": 16,
            "hop_bars": 1, "source": "test", "tunes": [str(i) for i in range(n)]}
    return Corpus(tokens, np.arange(n, dtype=np.int32), split, meta)


def test_ship_writes_a_half_precision_model_with_everything_it_needs(
        tmp_path: Path, corpus: Corpus) -> None:
    run = make_checkpoint(tmp_path / "run.safetensors", extra={"training": {"step": 7}})
    path = ship(run, corpus, "mine", tmp_path / "models")
    assert path == tmp_path / "models" / "mine.safetensors"
    assert path.stat().st_size < 0.75 * run.stat().st_size  # float16 storage
    info = load_checkpoint(path).info
    assert info["name"] == "mine" and info["training"] == {"step": 7}
    vae = MelodyVAE.load(path, device="cpu")
    assert vae.axes["attribute_names"]
    original = MelodyVAE.load(run, device="cpu")
    # the figures it carries are what the model does: on the test split ...
    measured = evaluate_tokens(original.model, corpus.subset("test"))
    for key in ("teacher_forced_accuracy", "sampled_accuracy", "nll_bits_per_step",
                "kl_nats", "active_units"):
        assert info["metrics"][key] == pytest.approx(measured[key], rel=1e-6), key
    assert info["metrics"]["test_phrases"] == 30
    # ... and the novelty scores of the held-out (valid) split, which score's percentile
    # reads, are the shipped model's own, sorted
    bits = np.asarray(info["novelty"]["heldout_bits"])
    np.testing.assert_allclose(bits, np.sort(vae.negative_elbo_bits(corpus.subset("valid"))),
                               atol=0.05)
    assert len(bits) == 30 and np.all(np.diff(bits) >= 0)
    z = original.sample_z(3, seed=1)
    same = (original.decode_tokens(z) == vae.decode_tokens(z)).float().mean()
    assert same > 0.9  # float16 weights decode (nearly) the same melodies


def test_report_measures_the_model_card_figures(tmp_path: Path, corpus: Corpus) -> None:
    path = ship(make_checkpoint(tmp_path / "run.safetensors"), corpus, "mine", tmp_path)
    report = build_report(MelodyVAE.load(path, device="cpu"), corpus, tmp_path / "card",
                          n_samples=40)
    saved = json.loads((tmp_path / "card" / "report.json").read_text())
    assert saved["test"]["n_phrases"] == 30
    assert set(saved["feature_overlap"]) == {"pitch_class", "interval", "ioi", "note_count"}
    assert saved["interpolation"]["valid_fraction"] == 1.0
    assert len(report["attributes"]["matrix"]) == 6
    card = (tmp_path / "card" / "card.md").read_text()
    assert f"| {saved['test']['teacher_forced_accuracy']:.3f} |" in card
    assert card.count("**ρ ") == 6
    for png in ("latent_map.png", "samples.png", "interpolation.png"):
        assert (tmp_path / "card" / png).stat().st_size > 1000
