"""Phrase models: the file format (save -> load, every field checked) and the facade
(encode, decode, rolling decodes, section operations)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, make_phrase_checkpoint, random_tokens, scale_melody
from safetensors.torch import load_file, save_file

from melodyvae.checkpoint import (
    METADATA_KEY,
    CheckpointError,
    load_checkpoint,
    load_phrase_checkpoint,
    phrase_shapes,
    read_info,
)
from melodyvae.decode import numpy_context
from melodyvae.inference import LatentSizeError, MelodyVAE
from melodyvae.phrase import PhraseConfig, PhraseVAE
from melodyvae.phrase_inference import PhraseMelodyVAE, SectionError


@pytest.fixture(scope="module")
def phrase_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phrase_checkpoint(tmp_path_factory.mktemp("phrase") / "tiny-phrase.safetensors")


@pytest.fixture(scope="module")
def pvae(phrase_path: Path) -> PhraseMelodyVAE:
    vae = MelodyVAE.load(phrase_path, device="cpu")
    assert isinstance(vae, PhraseMelodyVAE)
    return vae


@pytest.mark.parametrize("cfg", [PhraseConfig(code_dim=8, w_dim=4, hidden=16, layers=1),
                                 PhraseConfig(sections=2, code_dim=8, w_dim=4, hidden=8,
                                              layers=3)])
def test_phrase_shapes_match_module(cfg: PhraseConfig) -> None:
    state = PhraseVAE(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == phrase_shapes(cfg)


def test_save_load_round_trip(tmp_path: Path) -> None:
    path = make_phrase_checkpoint(tmp_path / "p.safetensors", extra={"data": {"n": 3}})
    ckpt = load_phrase_checkpoint(path)
    torch.manual_seed(0)
    again = make_phrase_checkpoint(tmp_path / "q.safetensors")  # same seed, same weights
    other = load_phrase_checkpoint(again)
    for a, b in zip(ckpt.phrase.state_dict().values(), other.phrase.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    for a, b in zip(ckpt.section.state_dict().values(), other.section.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    assert ckpt.info["kind"] == "phrase" and ckpt.info["data"] == {"n": 3}
    assert ckpt.section_preset.name == "tiny-hier-4bar"
    assert float(ckpt.phrase.code_std[0]) == 2.0  # buffers travel too
    w = torch.randn(2, ckpt.phrase.cfg.w_dim)
    with torch.no_grad():
        assert torch.equal(ckpt.phrase.decode(w), other.phrase.decode(w))


def test_plain_loader_refuses_phrase_file(phrase_path: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="phrase model"):
        load_checkpoint(phrase_path)
    plain = make_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not a phrase model"):
        load_phrase_checkpoint(plain)


def _rewrite(src: Path, dst: Path, change) -> Path:  # type: ignore[no-untyped-def]
    tensors = load_file(str(src))
    doc = read_info(src)
    change(doc, tensors)
    save_file(tensors, str(dst), metadata={METADATA_KEY: json.dumps(doc)})
    return dst


BAD_DOCS = {
    "kind": (lambda d, t: d.update(kind="other"), "kind must be"),
    "no section": (lambda d, t: d.pop("section"), "section must be an object"),
    "phrase type": (lambda d, t: d["phrase"].update(w_dim="8"), "phrase.w_dim must be an int"),
    "phrase bool": (lambda d, t: d["phrase"].update(layers=True), "phrase.layers must be"),
    "phrase range": (lambda d, t: d["phrase"].update(hidden=10**9), "outside"),
    "code dim": (lambda d, t: d["phrase"].update(code_dim=3), "section model's latent"),
    "bars": (lambda d, t: d["phrase"].update(sections=16, hidden=16) or
             d["section"]["model"].update(bars=8), "more than 64 bars"),
    "unknown field": (lambda d, t: d["phrase"].update(extra=1), "unknown fields"),
    "section model": (lambda d, t: d["section"]["model"].update(z_dim=-1), "model.z_dim"),
    "axes size": (lambda d, t: d.update(axes={"pca": {"mean": [0.0] * 3, "std": [],
                                                      "directions": []}}),
                  "axes.pca.mean"),
    "shape": (lambda d, t: t.update({"phrase.code_mean": torch.zeros(3)}), "has shape"),
    "missing": (lambda d, t: t.pop("phrase.code_std"), "missing"),
    "unprefixed": (lambda d, t: t.update({"code_std": torch.zeros(3)}), "unexpected"),
}


@pytest.mark.parametrize("case", sorted(BAD_DOCS))
def test_bad_phrase_files_one_error(case: str, phrase_path: Path, tmp_path: Path) -> None:
    change, message = BAD_DOCS[case]
    bad = _rewrite(phrase_path, tmp_path / "bad.safetensors", change)
    with pytest.raises(CheckpointError, match=message):
        load_phrase_checkpoint(bad)


def test_facade_shapes(pvae: PhraseMelodyVAE) -> None:
    assert (pvae.bars, pvae.steps, pvae.steps_per_bar, pvae.z_dim) == (16, 256, 16, 8)
    tokens = random_tokens(3, 256, seed=1)
    mu, logvar = pvae.encode_tokens(tokens)
    assert mu.shape == logvar.shape == (3, 8)
    out = pvae.decode_tokens(mu)
    assert out.shape == (3, 256)
    bits = pvae.negative_elbo_bits(tokens)
    assert bits.shape == (3,) and np.all(np.isfinite(bits)) and np.all(bits > 0)
    with pytest.raises(LatentSizeError):
        pvae.decode_tokens(np.zeros((1, 5), np.float32))


def test_decode_is_four_section_decodes(pvae: PhraseMelodyVAE) -> None:
    w = pvae.sample_z(3, seed=2)
    codes = pvae.codes(w)  # (3, 4, Z)
    assert codes.shape == (3, 4, pvae.code_dim)
    tokens = pvae.decode_tokens(w).numpy()
    for i in range(3):
        for s in range(4):
            alone = pvae.section.decode_tokens(codes[i, s]).numpy()[0]
            assert np.array_equal(tokens[i, 64 * s:64 * (s + 1)], alone)


def test_seeded_decodes_reproducible(pvae: PhraseMelodyVAE) -> None:
    w = pvae.sample_z(4, seed=3)
    a = pvae.decode_tokens(w, 1.0, seed=7)
    assert torch.equal(a, pvae.decode_tokens(w, 1.0, seed=7))
    assert not torch.equal(a, pvae.decode_tokens(w, 1.0, seed=8))


def _roll(pvae: PhraseMelodyVAE, items: list[tuple[int, np.ndarray, float, int | None]],
          stagger: bool) -> dict[int, np.ndarray]:
    rolling = pvae.rolling()
    assert rolling is not None
    out: dict[int, np.ndarray] = {}
    pending = list(items)
    with numpy_context():
        while pending or len(rolling):
            if pending:
                take = pending[:1] if stagger else pending
                rolling.add([(k, w, t, pvae.generator(t, s)) for k, w, t, s in take])
                pending = pending[len(take):]
            out.update(rolling.step())
    return out


@pytest.mark.parametrize("stagger", [False, True])
def test_rolling_greedy_equals_decode_tokens(pvae: PhraseMelodyVAE, stagger: bool) -> None:
    w = pvae.sample_z(5, seed=4)
    expected = pvae.decode_tokens(w).numpy()
    got = _roll(pvae, [(10 + i, w[i], 0.0, None) for i in range(5)], stagger)
    assert sorted(got) == [10, 11, 12, 13, 14]
    for i in range(5):
        assert np.array_equal(got[10 + i], expected[i])


def test_rolling_sampled_is_seeded(pvae: PhraseMelodyVAE) -> None:
    w = pvae.sample_z(3, seed=5)
    items = [(i, w[i], 1.0, 100 + i) for i in range(3)]
    a, b = _roll(pvae, items, False), _roll(pvae, items, True)
    assert all(np.array_equal(a[i], b[i]) for i in range(3))
    c = _roll(pvae, [(i, w[i], 1.0, 200 + i) for i in range(3)], False)
    assert any(not np.array_equal(a[i], c[i]) for i in range(3))


def test_rolling_drop(pvae: PhraseMelodyVAE) -> None:
    rolling = pvae.rolling()
    assert rolling is not None
    w = pvae.sample_z(2, seed=6)
    with numpy_context():
        rolling.add([(1, w[0], 0.0, None), (2, w[1], 0.0, None)])
        rolling.step()
        rolling.drop(1)
        assert len(rolling) == 1
        out = {}
        while len(rolling):
            out.update(rolling.step())
    assert list(out) == [2]
    assert np.array_equal(out[2], pvae.decode_tokens(w[1]).numpy()[0])


def test_melody_layer(pvae: PhraseMelodyVAE) -> None:
    melody = scale_melody(16)
    w = pvae.encode(melody)
    assert w.shape == (8,)
    (out,) = pvae.decode(w)
    assert out.n_bars == 16
    steps = pvae.interpolate(melody, scale_melody(16, qpm=90.0), steps=3)
    assert len(steps) == 3 and all(m.n_bars == 16 for m in steps)
    assert len(pvae.sample(2, temperature=0.5, seed=1)) == 2


def test_replace_and_vary_one_section(pvae: PhraseMelodyVAE) -> None:
    w = pvae.sample_z(1, seed=8)[0]
    base = pvae.decode_tokens(w).numpy()[0]
    code = pvae.section.encode(scale_melody(4))
    codes = pvae.replace_section(w, 2, code)
    changed = pvae.decode_codes(codes).numpy()[0]
    keep = np.r_[0:128, 192:256]
    assert np.array_equal(changed[keep], base[keep])
    assert np.array_equal(changed[128:192], pvae.section.decode_tokens(code).numpy()[0])
    varied = pvae.vary_section(w, 1, 1.0, seed=3, n=4)
    assert varied.shape == (4, 4, pvae.code_dim)
    assert np.allclose(varied[:, [0, 2, 3]], pvae.codes(w)[:, [0, 2, 3]])
    assert not np.allclose(varied[:, 1], pvae.codes(w)[:, 1])
    with pytest.raises(SectionError):
        pvae.replace_section(w, 4, code)
    with pytest.raises(SectionError):
        pvae.replace_section(w, 0, code[:3])


def test_plain_models_unchanged(tiny_checkpoint: Path) -> None:
    vae = MelodyVAE.load(tiny_checkpoint, device="cpu")
    assert type(vae) is MelodyVAE
