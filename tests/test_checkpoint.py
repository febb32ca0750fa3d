"""Self-describing checkpoints: save -> load -> decode, half storage, and every way a file
can be unusable."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, random_tokens
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from melodyvae import decode
from melodyvae.checkpoint import (
    FORMAT_VERSION,
    MAX_HEADER_BYTES,
    METADATA_KEY,
    CheckpointError,
    check_model_config,
    expected_shapes,
    json_depth,
    load_checkpoint,
    read_info,
    save_checkpoint,
)
from melodyvae.inference import MelodyVAE
from melodyvae.model import VAE
from melodyvae.presets import PRESETS, ModelConfig, get_preset

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


# ------------------------------------------------------------------- hostile headers
#
# Files written byte by byte, as an attacker would: each must be refused with a
# CheckpointError within a second, before any model is built.


def _raw_checkpoint(path: Path, doc: object | str, tensors: dict | None = None,
                    payload: bytes = b"") -> Path:
    """A safetensors file with this melodyvae document (JSON text when a str) and tensor
    table, written without the safetensors library."""
    text = doc if isinstance(doc, str) else json.dumps(doc)
    header = {"__metadata__": {METADATA_KEY: text}, **(tensors or {})}
    raw = json.dumps(header).encode()
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + payload)
    return path


def _tiny_header(tiny: Path) -> tuple[dict, dict, bytes]:
    data = tiny.read_bytes()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    doc = json.loads(header.pop("__metadata__")[METADATA_KEY])
    return doc, header, data[8 + size:]


def _refused_fast(path: Path, match: str) -> None:
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)
    assert time.perf_counter() - start < 1.0


def test_deeply_nested_json_is_refused_without_recursion(tiny_checkpoint: Path,
                                                          tmp_path: Path) -> None:
    deep = "[" * 200_000 + "]" * 200_000
    _refused_fast(_raw_checkpoint(tmp_path / "a.safetensors", deep), "nests 200000 levels")
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc["data"] = json.loads("[" * 500 + "]" * 500)
    _refused_fast(_raw_checkpoint(tmp_path / "b.safetensors", doc, tensors, payload), "nests")
    # the safetensors header itself, nested deep
    raw = b'{"__metadata__": {"x": "y"}, "t": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    outer = tmp_path / "c.safetensors"
    outer.write_bytes(len(raw).to_bytes(8, "little") + raw)
    _refused_fast(outer, "nests")
    # brackets inside strings are text, not nesting
    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"[[[[[[[[[[[["}') == 1


@pytest.mark.parametrize("value", [1.5, "128", True, None, [8], -3, 0, 10**6, 10**30, 2048 + 1])
def test_z_dim_of_the_wrong_type_or_size(tiny_checkpoint: Path, tmp_path: Path,
                                         value: object) -> None:
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc["model"]["z_dim"] = value
    path = _raw_checkpoint(tmp_path / "z.safetensors", doc, tensors, payload)
    _refused_fast(path, "model.z_dim")
    with pytest.raises(CheckpointError, match="model.z_dim"):
        read_info(path)


@pytest.mark.parametrize("field", ["enc_hidden", "dec_hidden", "cond_hidden", "embed_dim",
                                   "bars", "steps_per_bar", "enc_layers", "dec_layers"])
def test_layer_sizes_of_a_million(tiny_checkpoint: Path, tmp_path: Path, field: str) -> None:
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc["model"][field] = 10**6
    _refused_fast(_raw_checkpoint(tmp_path / "m.safetensors", doc, tensors, payload),
                  f"model.{field} is 1000000, outside")


@pytest.mark.parametrize("field, value", [("lr", "fast"), ("lr", float("nan")),
                                          ("batch_size", 2.5), ("max_steps", -1),
                                          ("transpose", 10**9), ("free_bits", float("inf"))])
def test_train_fields_checked(tiny_checkpoint: Path, tmp_path: Path, field: str,
                              value: object) -> None:
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc["train"][field] = value
    _refused_fast(_raw_checkpoint(tmp_path / "t.safetensors", doc, tensors, payload),
                  f"train.{field}")


def test_large_header_claiming_a_large_model_is_refused_before_allocating(
        tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A ~91 KB header that claims enc_hidden 11000 (4 GB of weights) and a header inside
    every bound whose tensors are not there: both refused in well under a second, and the
    in-bounds one without building the 600 MB model (measured in a fresh process)."""
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc["model"]["enc_hidden"] = 11000
    doc["padding"] = "x" * 90_000
    big = _raw_checkpoint(tmp_path / "big.safetensors", doc, tensors, payload)
    assert 90_000 < int.from_bytes(big.read_bytes()[:8], "little") < 100_000
    _refused_fast(big, "model.enc_hidden is 11000, outside")

    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc["model"].update(enc_hidden=4096, enc_layers=1)
    assert sum(np.prod(s) for s in expected_shapes(
        check_model_config(doc["model"])).values()) > 100_000_000
    fits = _raw_checkpoint(tmp_path / "fits.safetensors", doc, tensors, payload)
    _refused_fast(fits, r"encoder\.rnn\.\w+ has shape")
    script = (
        "import resource, sys\n"
        "from melodyvae.checkpoint import CheckpointError, load_checkpoint\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    load_checkpoint(sys.argv[1])\n"
        "except CheckpointError:\n"
        "    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    grown_kb = int(subprocess.run([sys.executable, "-c", script, str(fits)], check=True,
                                  capture_output=True, text=True).stdout)
    assert grown_kb < 50_000


def test_header_size_is_bounded(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    with open(path, "wb") as f:
        f.write((MAX_HEADER_BYTES + 1).to_bytes(8, "little"))
        f.truncate(MAX_HEADER_BYTES + 100)  # sparse: the size is claimed, not written
    _refused_fast(path, f"at most {MAX_HEADER_BYTES}")


@pytest.mark.parametrize("entry, match", [
    ({"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}, "dtype"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 16]}, "shape"),
    ({"dtype": "F32", "shape": "big", "data_offsets": [0, 16]}, "shape"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 10**12]}, "outside the file"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "outside the file"),
    ("not an entry", "not described"),
])
def test_tensor_table_entries_checked(tiny_checkpoint: Path, tmp_path: Path, entry: object,
                                      match: str) -> None:
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    tensors["decoder.out.bias"] = entry
    _refused_fast(_raw_checkpoint(tmp_path / "e.safetensors", doc, tensors, payload), match)


@pytest.mark.parametrize("section, value, match", [
    ("axes", {"pca": {"mean": [0.0] * 3, "std": [1.0], "directions": [[0.0] * 8]}},
     "axes.pca.mean"),
    ("axes", {"pca": {"mean": [0.0] * 8, "std": [1.0], "directions": [[0.0] * 7]}},
     "axes.pca.directions"),
    ("axes", "sideways", "axes must be an object"),
    ("novelty", {"heldout_bits": ["a", 1]}, "novelty.heldout_bits"),
    ("training", {"step": -4}, "training.step"),
    ("description", ["x"], "description"),
    ("preset", 5, "preset"),
])
def test_optional_sections_checked(tiny_checkpoint: Path, tmp_path: Path, section: str,
                                   value: object, match: str) -> None:
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc[section] = value
    _refused_fast(_raw_checkpoint(tmp_path / "o.safetensors", doc, tensors, payload), match)


def test_a_fifo_is_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    _refused_fast(fifo, "not a regular file")


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c,
                                                                        max_size=3),
                     max_leaves=8)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # files are rewritten
@given(section=st.sampled_from(["model", "train", "axes", "novelty", "training", "data"]),
       key=st.sampled_from(["z_dim", "kind", "bars", "lr", "pca", "heldout_bits", "step", "x"]),
       value=_JSON)
def test_any_json_value_anywhere_loads_or_is_refused(tiny_checkpoint: Path, tmp_path: Path,
                                                     section: str, key: str,
                                                     value: object) -> None:
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    if not isinstance(doc.get(section), dict):
        doc[section] = {}
    doc[section][key] = value
    path = _raw_checkpoint(tmp_path / "h.safetensors", doc, tensors, payload)
    with contextlib.suppress(CheckpointError):  # refused is fine; any other error is a bug
        load_checkpoint(path)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_expected_shapes_match_the_model(name: str) -> None:
    cfg = get_preset(name).model
    assert expected_shapes(cfg) == {k: tuple(v.shape) for k, v in VAE(cfg).state_dict().items()}


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["hier", "flat"]), sizes=st.lists(st.integers(1, 12), min_size=5,
                                                              max_size=5),
       layers=st.lists(st.integers(1, 3), min_size=3, max_size=3))
def test_expected_shapes_match_any_config(kind: str, sizes: list[int], layers: list[int]
                                          ) -> None:
    cfg = ModelConfig(kind=kind, embed_dim=sizes[0], z_dim=sizes[1], enc_hidden=sizes[2],
                      cond_hidden=sizes[3], dec_hidden=sizes[4], enc_layers=layers[0],
                      cond_layers=layers[1], dec_layers=layers[2])
    assert expected_shapes(cfg) == {k: tuple(v.shape) for k, v in VAE(cfg).state_dict().items()}


def test_cli_prints_one_line_and_exits_2(tiny_checkpoint: Path, tmp_path: Path) -> None:
    doc, tensors, payload = _tiny_header(tiny_checkpoint)
    doc["model"]["z_dim"] = "128"
    path = _raw_checkpoint(tmp_path / "s.safetensors", doc, tensors, payload)
    z = tmp_path / "z.json"
    z.write_text("[0.5]")
    done = subprocess.run([sys.executable, "-m", "melodyvae.cli", "decode", "--z-json", str(z),
                           "--out", str(tmp_path / "o.mid"), "--model", str(path)],
                          capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "model.z_dim must be an integer" in done.stderr
