"""Latent axes and the latent-space checks: attributes, PCA, attribute vectors, overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, random_tokens

from melodyvae.axes import AxesError, LatentAxes
from melodyvae.cli import main
from melodyvae.inference import MelodyVAE
from melodyvae.melody import NOTE_OFFSET, Melody, Note, to_tokens
from melodyvae.training import axes, quality
from melodyvae.training.corpus import CORPUS_FORMAT_VERSION, Corpus


def tokens_of(notes: list[tuple[int, int, int]], steps: int = 64) -> np.ndarray:
    return to_tokens(Melody(tuple(Note(s, e, p) for s, e, p in notes), steps))[0]


def test_attributes_of_a_known_phrase() -> None:
    # four quarter notes in bar 1 (C E G C'), one off-beat eighth in bar 2, then silence
    t = tokens_of([(0, 4, 60), (4, 8, 64), (8, 12, 67), (12, 16, 72), (18, 20, 71)])
    assert axes.note_density(t) == pytest.approx(5 / 4)
    assert axes.mean_pitch(t) == pytest.approx((60 + 64 + 67 + 72 + 71) / 5)
    assert axes.pitch_range(t) == 12
    assert axes.mean_interval(t) == pytest.approx((4 + 3 + 5 + 1) / 4)
    assert axes.syncopation(t) == pytest.approx(1 / 5)
    assert axes.rest_ratio(t) == pytest.approx((64 - 18) / 64)


def test_attributes_of_silence_are_undefined_not_zero() -> None:
    silent = tokens_of([])
    assert np.isnan(axes.mean_pitch(silent)) and np.isnan(axes.mean_interval(silent))
    assert axes.rest_ratio(silent) == 1.0 and axes.note_density(silent) == 0.0


def test_pca_finds_the_direction_of_largest_spread() -> None:
    rng = np.random.default_rng(0)
    direction = np.zeros(16)
    direction[3] = 1.0
    mu = rng.normal(0, 0.1, (500, 16)) + rng.normal(0, 3.0, (500, 1)) * direction
    mean, std, directions = axes.pca(mu, k=4)
    assert abs(np.dot(directions[0], direction)) > 0.99
    assert std[0] == pytest.approx(3.0, rel=0.15)
    assert list(std) == sorted(std, reverse=True)
    np.testing.assert_allclose(directions @ directions.T, np.eye(4), atol=1e-9)


def test_the_axes_document_reads_back_as_it_was_written() -> None:
    """What training writes is what the server reads: one PCA step along pc1 lands one
    standard deviation along the first direction, and a vector's coordinates rebuild it."""
    mu = np.random.default_rng(3).normal(0, 1, (300, 8)) * np.arange(1, 9)
    tokens = random_tokens(300, 64, seed=3)
    doc = json.loads(json.dumps(axes.axes_document(mu, tokens)))  # as a checkpoint stores it
    read = LatentAxes(8, doc)
    assert read.problem is None
    assert read.names == [f"pc{k + 1}" for k in range(8)] + list(axes.ATTRIBUTES)
    one_up = read.compose(np.eye(8)[0], {})
    assert np.dot(one_up - read.mean, read.dirs[0]) == pytest.approx(read.std[0])
    z = mu[0]
    np.testing.assert_allclose(read.compose(read.project(z), {}), z)  # 8 axes span Z = 8
    np.testing.assert_allclose(read.attributes["mean_pitch"], doc["attributes"]["mean_pitch"])
    assert doc["n_phrases"] == 300
    doc["pca"]["std"] = doc["pca"]["std"][:3]  # does not fit the directions
    broken = LatentAxes(8, doc)
    assert broken.problem is not None and "malformed" in broken.problem
    with pytest.raises(AxesError):
        broken.require()


def test_attribute_vector_points_from_low_to_high() -> None:
    rng = np.random.default_rng(1)
    values = rng.uniform(0, 1, 400)
    mu = rng.normal(0, 0.2, (400, 8))
    mu[:, 2] += 4 * values  # dimension 2 carries the attribute
    table = values[:, None]
    vector = np.asarray(axes.attribute_vectors(mu, table, ["x"])["x"])
    assert np.argmax(np.abs(vector)) == 2 and vector[2] > 2.0  # top quartile minus bottom


def test_feature_overlap_is_one_for_the_same_phrases_and_less_for_others() -> None:
    a = random_tokens(200, 64, seed=0)
    same = quality.feature_overlap(a, a)
    assert all(v == pytest.approx(1.0) for v in same.values())
    c_major = np.array([60, 62, 64, 65, 67, 69, 71]) + NOTE_OFFSET  # as note-on tokens
    notes = a >= 2
    in_c = a.copy()
    in_c[notes] = c_major[a[notes] % 7]  # every note moved into C major
    in_f_sharp = in_c.copy()
    in_f_sharp[notes] += 6  # a tritone away: mostly other pitch classes
    moved = quality.feature_overlap(in_f_sharp, in_c)
    assert moved["pitch_class"] < 0.5
    assert moved["ioi"] == pytest.approx(1.0)  # the rhythm did not change


def test_axes_command_writes_sliders_into_a_checkpoint(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    tokens = random_tokens(120, 64, seed=2)
    split = np.zeros(120, dtype=np.uint8)
    meta = {"format_version": CORPUS_FORMAT_VERSION, "bars": 4, "steps_per_bar": 16,
            "hop_bars": 1, "source": "test", "tunes": [str(i) for i in range(120)]}
    Corpus(tokens.astype(np.uint8), np.arange(120, dtype=np.int32), split, meta).save(
        tmp_path / "c.npz")
    out = tmp_path / "with-axes.safetensors"
    assert main(["axes", str(ckpt), str(tmp_path / "c.npz"), "--out", str(out)]) == 0
    vae = MelodyVAE.load(out, device="cpu")
    assert set(vae.axes["attribute_names"]) == set(axes.ATTRIBUTES)
    assert len(vae.axes["pca"]["directions"]) == axes.PCA_AXES
    assert all(len(v) == vae.z_dim for v in vae.axes["attributes"].values())
    # the weights are untouched
    before = MelodyVAE.load(ckpt, device="cpu")
    z = before.sample_z(2, seed=0)
    assert torch.equal(before.decode_tokens(z), vae.decode_tokens(z))
    # and the checks run on it
    report = quality.attribute_matrix(vae, z.astype(np.float32), np.linspace(-2, 2, 5))
    assert len(report["matrix"]) == len(axes.ATTRIBUTES)
    check = quality.interpolation_check(vae, tokens, pairs=4, steps=5)
    assert check["mean_distance_to_first"][0] == 0.0
