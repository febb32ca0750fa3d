"""Self-describing checkpoints: save -> load -> decode, half storage, and every way a file
can be unusable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, random_tokens
from safetensors import safe_open
from safetensors.torch import save_file

from melodyvae import decode
from melodyvae.checkpoint import (
    FORMAT_VERSION,
    METADATA_KEY,
    CheckpointError,
    load_checkpoint,
    read_info,
    save_checkpoint,
)
from melodyvae.inference import MelodyVAE
from melodyvae.model import VAE
from melodyvae.presets import get_preset

TINY = ["tiny-hier-4bar", "tiny-hier-16bar", "tiny-flat-16bar"]


def _decode_all(model: VAE, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy tokens, seeded sampled tokens and posterior means for a fixed input."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(3, model.cfg.z_dim, generator=gen) * 2
    greedy = decode.sample(model, z, temperature=0.0)
    sampled = decode.sample(model, z, temperature=1.0,
                            generator=torch.Generator().manual_seed(1))
    x = torch.as_tensor(random_tokens(2, model.cfg.steps, seed=seed))
    with torch.no_grad():
        mu, _ = model.encode(x)
    return greedy, sampled, mu


@pytest.mark.parametrize("name", TINY)
def test_save_load_decode(name: str, tmp_path: Path) -> None:
    torch.manual_seed(5)
    preset = get_preset(name)
    model = VAE(preset.model).eval()
    path = tmp_path / f"{name}.safetensors"
    save_checkpoint(path, model, preset, extra={"data": {"source": "unit test"}})
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, no leftovers
    ckpt = load_checkpoint(path)
    assert ckpt.preset == preset
    assert ckpt.info["data"] == {"source": "unit test"}
    assert not ckpt.model.training
    for a, b in zip(_decode_all(model), _decode_all(ckpt.model), strict=True):
        assert torch.equal(a, b)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt.model.state_dict()[key])
    # and through the inference facade
    vae = MelodyVAE.load(path, device="cpu")
    z = np.random.default_rng(0).standard_normal((2, preset.model.z_dim)).astype(np.float32)
    assert torch.equal(vae.decode_tokens(z), decode.sample(model, torch.as_tensor(z)))
    assert vae.bars == preset.model.bars and vae.z_dim == preset.model.z_dim


@pytest.mark.parametrize("name", TINY)
def test_half_storage_loads_and_decodes(name: str, tmp_path: Path) -> None:
    torch.manual_seed(6)
    preset = get_preset(name)
    model = VAE(preset.model).eval()
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_checkpoint(full, model, preset)
    save_checkpoint(half, model, preset, half=True)
    assert half.stat().st_size < 0.7 * full.stat().st_size
    with safe_open(str(half), framework="pt") as f:
        names = f.keys()
        assert {f.get_tensor(k).dtype for k in names} == {torch.float16}
    ckpt = load_checkpoint(half)
    for key, value in model.state_dict().items():
        loaded = ckpt.model.state_dict()[key]
        assert loaded.dtype == torch.float32
        torch.testing.assert_close(loaded, value, atol=2e-3, rtol=1e-3)
    z = torch.randn(2, preset.model.z_dim, generator=torch.Generator().manual_seed(0))
    tokens = decode.sample(ckpt.model, z)
    assert tokens.shape == (2, preset.model.steps)
    assert tokens.min() >= 0 and tokens.max() < preset.model.vocab_size


def test_read_info_without_weights(tiny_checkpoint: Path) -> None:
    info = read_info(tiny_checkpoint)
    assert info["format_version"] == FORMAT_VERSION
    assert info["preset"] == "tiny-hier-4bar"
    assert info["model"]["bars"] == 4
    assert info["representation"]["vocab_size"] == 90


# ---------------------------------------------------------------------------- broken files


def _rewrite_metadata(src: Path, dst: Path, change) -> Path:  # type: ignore[no-untyped-def]
    with safe_open(str(src), framework="pt") as f:
        names = f.keys()
        tensors = {k: f.get_tensor(k) for k in names}
        meta = dict(f.metadata())
    doc = json.loads(meta[METADATA_KEY])
    change(doc, tensors)
    save_file(tensors, str(dst), metadata={METADATA_KEY: json.dumps(doc)})
    return dst


@pytest.mark.parametrize("keep", [4, 8, 100, 0.5, -10])
def test_truncated_file(tiny_checkpoint: Path, tmp_path: Path, keep: float) -> None:
    data = tiny_checkpoint.read_bytes()
    n = int(len(data) * keep) if isinstance(keep, float) else keep
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:n])
    with pytest.raises(CheckpointError):
        load_checkpoint(cut)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    text = tmp_path / "model.safetensors"
    text.write_text("these are not the weights you are looking for\n" * 10)
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint(text)
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError):
        load_checkpoint(empty)
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "missing.safetensors")
    # a plausible header length followed by something that is not JSON
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes((16).to_bytes(8, "little") + b"\xff" * 64)
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)


def test_safetensors_without_melodyvae_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = VAE(get_preset("tiny-hier-4bar").model)
    plain = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    with pytest.raises(CheckpointError, match="not a melodyvae checkpoint"):
        load_checkpoint(plain)
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a melodyvae checkpoint"):
        read_info(other)


def test_wrong_format_version(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def bump(doc, tensors):  # type: ignore[no-untyped-def]
        doc["format_version"] = FORMAT_VERSION + 1

    path = _rewrite_metadata(tiny_checkpoint, tmp_path / "future.safetensors", bump)
    with pytest.raises(CheckpointError, match="format"):
        load_checkpoint(path)


def test_wrong_format_name_and_representation(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def rename(doc, tensors):  # type: ignore[no-untyped-def]
        doc["format"] = "somebody-elses-checkpoint"

    with pytest.raises(CheckpointError):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "a.safetensors", rename))

    def other_grid(doc, tensors):  # type: ignore[no-untyped-def]
        doc["representation"]["steps_per_quarter"] = 3

    with pytest.raises(CheckpointError, match="representation"):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "b.safetensors",
                                          other_grid))


@pytest.mark.parametrize("value", ["{not json", "[1, 2]", "null", '"a string"'])
def test_corrupt_melodyvae_metadata(tiny_checkpoint: Path, tmp_path: Path, value: str) -> None:
    """A melodyvae key whose value is not a JSON object is a broken checkpoint."""
    with safe_open(str(tiny_checkpoint), framework="pt") as f:
        names = f.keys()
        tensors = {k: f.get_tensor(k) for k in names}
    path = tmp_path / "corrupt.safetensors"
    save_file(tensors, str(path), metadata={METADATA_KEY: value})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_incomplete_config(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def drop(doc, tensors):  # type: ignore[no-untyped-def]
        del doc["model"]

    with pytest.raises(CheckpointError, match="config"):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "a.safetensors", drop))

    def unknown_kind(doc, tensors):  # type: ignore[no-untyped-def]
        doc["model"]["kind"] = "transformer"

    with pytest.raises(CheckpointError):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "b.safetensors",
                                          unknown_kind))


def test_mismatched_shapes(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def wider(doc, tensors):  # type: ignore[no-untyped-def]
        doc["model"]["z_dim"] = 12  # the weights are for z_dim 8

    with pytest.raises(CheckpointError, match="shape"):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "z.safetensors", wider))

    def one_tensor(doc, tensors):  # type: ignore[no-untyped-def]
        tensors["decoder.out.bias"] = torch.zeros(91)

    with pytest.raises(CheckpointError, match=r"decoder\.out\.bias"):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "t.safetensors",
                                          one_tensor))


def test_missing_and_unexpected_weights(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def missing(doc, tensors):  # type: ignore[no-untyped-def]
        del tensors["encoder.to_mu.weight"]

    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "m.safetensors", missing))

    def flat_config(doc, tensors):  # type: ignore[no-untyped-def]
        doc["model"]["kind"] = "flat"  # hierarchical weights under a flat config

    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(_rewrite_metadata(tiny_checkpoint, tmp_path / "f.safetensors",
                                          flat_config))


def test_make_checkpoint_fixture_is_deterministic(tmp_path: Path) -> None:
    a = load_checkpoint(make_checkpoint(tmp_path / "a.safetensors", "tiny-flat-16bar", seed=3))
    b = load_checkpoint(make_checkpoint(tmp_path / "b.safetensors", "tiny-flat-16bar", seed=3))
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key])
