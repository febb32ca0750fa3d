"""Self-describing checkpoints: safetensors weights with the JSON config in the header.

One ``.safetensors`` file holds the weights and, under the header metadata key
``melodyvae``, a JSON document with the format version, the preset (model and training
configs), the token representation, a summary of the training data and, once computed,
the latent axes. Loading needs nothing else, and no pickle is involved.

A phrase model (:mod:`melodyvae.phrase`: a phrase level over a section model's latent
space) is one file too: its document says ``"kind": "phrase"`` and holds the section
model's preset under ``section`` and the :class:`~melodyvae.phrase.PhraseConfig` under
``phrase``; its tensors are the section model's, prefixed ``section.``, and the phrase
VAE's, prefixed ``phrase.``. Its latent axes live in the phrase latent ``w``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from melodyvae import melody as _melody
from melodyvae.errors import MelodyVAEError
from melodyvae.model import VAE
from melodyvae.phrase import PhraseConfig, PhraseVAE, forms_of
from melodyvae.presets import ModelConfig, Preset, PresetError, TrainConfig

FORMAT = "melodyvae-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "melodyvae"
PHRASE_KIND = "phrase"  # the document's "kind" of a phrase model (absent: a plain VAE)
SECTION_PREFIX = "section."  # a phrase model's tensors of its section model ...
PHRASE_PREFIX = "phrase."  # ... and of its phrase VAE


class CheckpointError(MelodyVAEError, ValueError):
    """A checkpoint that cannot be read or does not fit its config."""


def representation() -> dict[str, Any]:
    """The token representation a checkpoint was trained with."""
    return {
        "steps_per_quarter": _melody.STEPS_PER_QUARTER,
        "min_pitch": _melody.MIN_PITCH,
        "max_pitch": _melody.MAX_PITCH,
        "vocab_size": _melody.VOCAB_SIZE,
        "hold": _melody.HOLD,
        "rest": _melody.REST,
    }


@dataclasses.dataclass
class Checkpoint:
    """A model with the description it was saved with."""

    model: VAE
    preset: Preset
    info: dict[str, Any]  # the whole JSON document (data summary, training, axes, ...)


def save_checkpoint(path: str | os.PathLike[str], model: VAE, preset: Preset,
                    extra: dict[str, Any] | None = None, half: bool = False) -> None:
    """Write ``model`` atomically (a temporary file, then a rename).

    ``extra`` goes into the JSON document (e.g. ``data``, ``training``, ``axes``);
    ``half`` stores the weights as float16 (they load back as float32).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "preset": preset.name,
        "description": preset.description,
        "model": dataclasses.asdict(preset.model),
        "train": dataclasses.asdict(preset.train),
        "representation": representation(),
    }
    doc.update(extra or {})
    tensors = {}
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu")
        tensors[name] = (t.half() if half and t.is_floating_point() else t).contiguous()
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(doc)})
    os.replace(tmp, path)


def _section_doc(preset: Preset) -> dict[str, Any]:
    return {"preset": preset.name, "description": preset.description,
            "model": dataclasses.asdict(preset.model), "train": dataclasses.asdict(preset.train)}


def _write(path: Path, tensors: dict[str, torch.Tensor], doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(doc)})
    os.replace(tmp, path)


def save_phrase_checkpoint(path: str | os.PathLike[str], section: VAE, section_preset: Preset,
                           phrase: PhraseVAE, name: str, description: str = "",
                           extra: dict[str, Any] | None = None) -> None:
    """Write a phrase model: the section model and the phrase VAE in one file (atomically).

    ``name`` and ``description`` name the phrase model; ``extra`` goes into the document
    (``data``, ``training``, ``axes`` over the phrase latent, ...). The section model's
    weights are stored as float16 when that loses nothing (a shipped model's are)."""
    doc: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": PHRASE_KIND,
        "preset": name,
        "description": description,
        "section": _section_doc(section_preset),
        "phrase": dataclasses.asdict(phrase.cfg),
        "representation": representation(),
    }
    doc.update(extra or {})
    tensors = {SECTION_PREFIX + k: v.detach().to("cpu").contiguous()
               for k, v in section.state_dict().items()}
    if all(torch.equal(t.half().float(), t.float()) for t in tensors.values()
           if t.is_floating_point()):  # a section model loaded from float16 stays float16
        tensors = {k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}
    tensors.update({PHRASE_PREFIX + k: v.detach().to("cpu").float().contiguous()
                    for k, v in phrase.state_dict().items()})
    _write(Path(path), tensors, doc)


# ------------------------------------------------------------------ reading, every field checked
#
# A checkpoint can come from anywhere, so nothing in its header is trusted: the header's size,
# the nesting depth of both JSON documents, every field's type and range, and every tensor's
# shape (against the shapes the config implies) are checked before a model is built or a
# weight is read. A malformed file costs a few milliseconds and one CheckpointError.

MAX_HEADER_BYTES = 16 * 1024 * 1024  # safetensors header (tensor table + our JSON document)
MAX_JSON_DEPTH = 16  # the shipped documents nest 5 deep
MAX_TENSORS = 512  # a VAE with 8-layer stacks has under 150
MAX_PARAMETERS = 256 * 1024 * 1024  # 1 GiB of float32 weights
TENSOR_DTYPES = ("F32", "F16", "BF16")
MAX_LIST = 1 << 16  # longest list of numbers in an optional section

# (low, high) inclusive bounds on every ModelConfig integer (MusicVAE's largest model:
# 2048-unit encoder, 1024-unit decoders, z 512, 16 bars of 16 steps).
MODEL_BOUNDS: dict[str, tuple[int, int]] = {
    "bars": (1, 64),
    "steps_per_bar": (1, 96),
    "vocab_size": (_melody.VOCAB_SIZE, _melody.VOCAB_SIZE),
    "embed_dim": (1, 2048),
    "z_dim": (1, 2048),
    "enc_hidden": (1, 4096),
    "enc_layers": (1, 8),
    "cond_hidden": (1, 4096),
    "cond_layers": (1, 8),
    "dec_hidden": (1, 4096),
    "dec_layers": (1, 8),
}
# (low, high) inclusive bounds on every TrainConfig number.
TRAIN_BOUNDS: dict[str, tuple[float, float]] = {
    "batch_size": (1, 1 << 20),
    "lr": (0.0, 10.0),
    "lr_min": (0.0, 10.0),
    "lr_decay": (0.0, 1.0),
    "grad_clip": (0.0, 1e6),
    "max_beta": (0.0, 1e3),
    "beta_rate": (0.0, 1.0),
    "free_bits": (0.0, 1e7),
    "transpose": (0, 24),
    "max_steps": (1, 1 << 40),
}
# (low, high) inclusive bounds on every PhraseConfig integer.
PHRASE_BOUNDS: dict[str, tuple[int, int]] = {
    "sections": (1, 16),
    "code_dim": (1, 2048),
    "w_dim": (1, 2048),
    "hidden": (1, 8192),
    "layers": (1, 8),
    "forms": (0, 1),
}
MAX_PHRASE_BARS = 64  # sections x the section model's bars
_STRING_FIELDS = {"format": 64, "preset": 200, "description": 4000, "name": 200}
_OPTIONAL_SECTIONS = ("data", "training", "axes", "metrics", "novelty")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


def json_depth(text: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest (strings skipped); linear time,
    no recursion, so a hostile text 200,000 levels deep is measured, not parsed."""
    bare = np.frombuffer(_JSON_STRING.sub(b'""', text), np.uint8)
    if not bare.size:
        return 0
    steps = (np.isin(bare, (ord("["), ord("{"))).astype(np.int64)
             - np.isin(bare, (ord("]"), ord("}"))))
    return int(np.cumsum(steps).max(initial=0))


def _load_json(text: bytes, what: str) -> Any:
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise CheckpointError(f"{what} nests {depth} levels deep, more than {MAX_JSON_DEPTH}")
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{what} is not JSON ({e})") from e


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _check_numbers(value: Any, where: str, shape: tuple[int, ...]) -> None:
    """``value`` is a nested list of finite numbers with this shape (-1: any length up to
    ``MAX_LIST``)."""
    if not shape:
        if not _is_number(value):
            raise CheckpointError(f"{where} must be a finite number, not {_short(value)}")
        return
    if not isinstance(value, list) or (shape[0] >= 0 and len(value) != shape[0]) \
            or len(value) > MAX_LIST:
        want = "a list" if shape[0] < 0 else f"a list of {shape[0]}"
        got = f"{len(value)} items" if isinstance(value, list) else _short(value)
        raise CheckpointError(f"{where} must be {want} numbers, not {got}")
    for i, item in enumerate(value):
        _check_numbers(item, f"{where}[{i}]", shape[1:])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_model_config(model: Any) -> ModelConfig:
    """A ModelConfig from a checkpoint's ``model`` section, every field checked first."""
    if not isinstance(model, dict):
        raise CheckpointError(f"model config must be an object, not {_short(model)}")
    names = [f.name for f in dataclasses.fields(ModelConfig)]
    unknown = sorted(set(model) - set(names))
    missing = [n for n in names if n not in model]
    if unknown or missing:
        raise CheckpointError(f"model config has unknown fields {unknown[:3]} or lacks "
                              f"{missing[:3]}")
    if model["kind"] not in ("hier", "flat"):
        raise CheckpointError(f"model.kind must be 'hier' or 'flat', not {_short(model['kind'])}")
    for name, (low, high) in MODEL_BOUNDS.items():
        value = model[name]
        if not _is_int(value):
            raise CheckpointError(f"model.{name} must be an integer, not {_short(value)}")
        if not low <= value <= high:
            raise CheckpointError(f"model.{name} is {value}, outside [{low}, {high}]")
    cfg = ModelConfig(**model)
    params = sum(math.prod(shape) for shape in expected_shapes(cfg).values())
    if params > MAX_PARAMETERS:
        raise CheckpointError(f"model config asks for {params:,} weights, more than "
                              f"{MAX_PARAMETERS:,}")
    return cfg


def check_train_config(train: Any) -> TrainConfig:
    """A TrainConfig from a checkpoint's ``train`` section, every field checked first."""
    if not isinstance(train, dict):
        raise CheckpointError(f"train config must be an object, not {_short(train)}")
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(train) - set(fields))
    missing = [n for n in fields if n not in train]
    if unknown or missing:
        raise CheckpointError(f"train config has unknown fields {unknown[:3]} or lacks "
                              f"{missing[:3]}")
    values: dict[str, Any] = {}
    for name, (low, high) in TRAIN_BOUNDS.items():
        value = train[name]
        wants_int = fields[name].type in (int, "int")
        if not (_is_int(value) if wants_int else _is_number(value)):
            kind = "an integer" if wants_int else "a finite number"
            raise CheckpointError(f"train.{name} must be {kind}, not {_short(value)}")
        if not low <= value <= high:
            raise CheckpointError(f"train.{name} is {value}, outside [{low}, {high}]")
        values[name] = value if wants_int else float(value)
    return TrainConfig(**values)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every weight's shape in a :class:`~melodyvae.model.VAE` of this config, computed
    without building it (a test keeps this equal to the real module's ``state_dict``)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def lstm(prefix: str, inputs: int, hidden: int, layers: int, directions: int) -> None:
        for layer in range(layers):
            width = inputs if layer == 0 else hidden * directions
            for suffix in ("", "_reverse")[:directions]:
                shapes[f"{prefix}.weight_ih_l{layer}{suffix}"] = (4 * hidden, width)
                shapes[f"{prefix}.weight_hh_l{layer}{suffix}"] = (4 * hidden, hidden)
                shapes[f"{prefix}.bias_ih_l{layer}{suffix}"] = (4 * hidden,)
                shapes[f"{prefix}.bias_hh_l{layer}{suffix}"] = (4 * hidden,)

    def linear(prefix: str, inputs: int, outputs: int) -> None:
        shapes[f"{prefix}.weight"] = (outputs, inputs)
        shapes[f"{prefix}.bias"] = (outputs,)

    shapes["encoder.embed.weight"] = (cfg.vocab_size, cfg.embed_dim)
    lstm("encoder.rnn", cfg.embed_dim, cfg.enc_hidden, cfg.enc_layers, 2)
    linear("encoder.to_mu", 2 * cfg.enc_hidden, cfg.z_dim)
    linear("encoder.to_logvar", 2 * cfg.enc_hidden, cfg.z_dim)
    if cfg.kind == "hier":
        linear("decoder.cond_init.proj", cfg.z_dim, 2 * cfg.cond_layers * cfg.cond_hidden)
        lstm("decoder.conductor", 1, cfg.cond_hidden, cfg.cond_layers, 1)
        linear("decoder.bar_init.proj", cfg.cond_hidden, 2 * cfg.dec_layers * cfg.dec_hidden)
        shapes["decoder.embed.weight"] = (cfg.vocab_size + 1, cfg.embed_dim)
        lstm("decoder.rnn", cfg.embed_dim + cfg.cond_hidden, cfg.dec_hidden, cfg.dec_layers, 1)
    else:
        linear("decoder.init.proj", cfg.z_dim, 2 * cfg.dec_layers * cfg.dec_hidden)
        shapes["decoder.embed.weight"] = (cfg.vocab_size + 1, cfg.embed_dim)
        lstm("decoder.rnn", cfg.embed_dim + cfg.z_dim, cfg.dec_hidden, cfg.dec_layers, 1)
    linear("decoder.out", cfg.dec_hidden, cfg.vocab_size)
    return shapes


def check_phrase_config(phrase: Any, section: ModelConfig) -> PhraseConfig:
    """A PhraseConfig from a phrase model's ``phrase`` section, every field checked first
    (its code size must be the section model's latent size)."""
    if not isinstance(phrase, dict):
        raise CheckpointError(f"phrase config must be an object, not {_short(phrase)}")
    names = [f.name for f in dataclasses.fields(PhraseConfig)]
    unknown = sorted(set(phrase) - set(names))
    missing = [n for n in names if n not in phrase and n != "forms"]  # forms: 0 if absent
    phrase = {"forms": 0, **phrase}
    if unknown or missing:
        raise CheckpointError(f"phrase config has unknown fields {unknown[:3]} or lacks "
                              f"{missing[:3]}")
    for name, (low, high) in PHRASE_BOUNDS.items():
        value = phrase[name]
        if not _is_int(value):
            raise CheckpointError(f"phrase.{name} must be an integer, not {_short(value)}")
        if not low <= value <= high:
            raise CheckpointError(f"phrase.{name} is {value}, outside [{low}, {high}]")
    if phrase["code_dim"] != section.z_dim:
        raise CheckpointError(f"phrase.code_dim is {phrase['code_dim']}, the section model's "
                              f"latent has {section.z_dim}")
    if phrase["sections"] * section.bars > MAX_PHRASE_BARS:
        raise CheckpointError(f"{phrase['sections']} sections of {section.bars} bars are more "
                              f"than {MAX_PHRASE_BARS} bars")
    cfg = PhraseConfig(**phrase)
    params = sum(math.prod(shape) for shape in phrase_shapes(cfg).values())
    if params > MAX_PARAMETERS:
        raise CheckpointError(f"phrase config asks for {params:,} weights, more than "
                              f"{MAX_PARAMETERS:,}")
    return cfg


def phrase_shapes(cfg: PhraseConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape in a :class:`~melodyvae.phrase.PhraseVAE` of this config,
    computed without building it (a test keeps this equal to the module's ``state_dict``)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def mlp(prefix: str, n_in: int, n_out: int) -> None:
        width = n_in
        for layer in range(cfg.layers):
            shapes[f"{prefix}.{3 * layer}.weight"] = (cfg.hidden, width)
            shapes[f"{prefix}.{3 * layer}.bias"] = (cfg.hidden,)
            shapes[f"{prefix}.{3 * layer + 1}.weight"] = (cfg.hidden,)  # LayerNorm
            shapes[f"{prefix}.{3 * layer + 1}.bias"] = (cfg.hidden,)
            width = cfg.hidden
        shapes[f"{prefix}.{3 * cfg.layers}.weight"] = (n_out, width)
        shapes[f"{prefix}.{3 * cfg.layers}.bias"] = (n_out,)

    mlp("encoder", cfg.sections * cfg.code_dim, 2 * cfg.w_dim)
    mlp("decoder", cfg.w_dim, cfg.sections * cfg.code_dim)
    shapes["code_mean"] = (cfg.code_dim,)
    shapes["code_std"] = (cfg.code_dim,)
    if cfg.forms:
        shapes["form_prior"] = (len(forms_of(cfg.sections)),)
        shapes["form_threshold"] = ()
    return shapes


def _check_optional(doc: dict[str, Any], z_dim: int) -> None:
    """Types and sizes of the sections other code reads (data, training, axes, metrics,
    novelty); the values inside axes are judged where they are used."""
    if not isinstance(doc.get("preset"), str):
        raise CheckpointError(f"preset must be the preset's name, not {_short(doc.get('preset'))}")
    for name, limit in _STRING_FIELDS.items():
        if name in doc and (not isinstance(doc[name], str) or len(doc[name]) > limit):
            raise CheckpointError(f"{name} must be a string of at most {limit} characters, "
                                  f"not {_short(doc[name])}")
    for name in _OPTIONAL_SECTIONS:
        if name in doc and not isinstance(doc[name], dict):
            raise CheckpointError(f"{name} must be an object, not {_short(doc[name])}")
    training = doc.get("training") or {}
    if "step" in training and not (_is_int(training["step"]) and training["step"] >= 0):
        raise CheckpointError(f"training.step must be a count, not {_short(training['step'])}")
    heldout = (doc.get("novelty") or {}).get("heldout_bits")
    if heldout is not None:
        _check_numbers(heldout, "novelty.heldout_bits", (-1,))
    axes = doc.get("axes")
    if axes:
        pca = axes.get("pca")
        if not isinstance(pca, dict):
            raise CheckpointError("axes.pca must be an object")
        _check_numbers(pca.get("mean"), "axes.pca.mean", (z_dim,))
        std = pca.get("std")
        _check_numbers(std, "axes.pca.std", (-1,))
        k = len(std) if isinstance(std, list) else 0
        _check_numbers(pca.get("directions"), "axes.pca.directions", (k, z_dim))
        attributes = axes.get("attributes") or {}
        if not isinstance(attributes, dict) or len(attributes) > 64:
            raise CheckpointError("axes.attributes must be an object of at most 64 vectors")
        for key, vector in attributes.items():
            if len(key) > 64:
                raise CheckpointError(f"axes.attributes has a name of {len(key)} characters")
            if not (isinstance(vector, list) and len(vector) == z_dim
                    and all(_is_int(v) or isinstance(v, float) for v in vector)):
                raise CheckpointError(f"axes.attributes.{key} must be {z_dim} numbers")


def _check_tensors(path: Path, header: dict[str, Any], data_bytes: int) -> dict[str, tuple]:
    """The tensor table of a safetensors header: name -> shape, each entry checked."""
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        raise CheckpointError(f"{path}: {len(entries)} tensors, more than {MAX_TENSORS}")
    shapes: dict[str, tuple] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: tensor {_short(name)} is not described")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if entry.get("dtype") not in TENSOR_DTYPES:
            raise CheckpointError(f"{path}: tensor {name} has dtype {_short(entry.get('dtype'))}"
                                  f", not one of {', '.join(TENSOR_DTYPES)}")
        if not (isinstance(shape, list) and len(shape) <= 4
                and all(_is_int(d) and 0 <= d <= 1 << 32 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name} has shape {_short(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]
                <= data_bytes):
            raise CheckpointError(f"{path}: tensor {name} lies outside the file "
                                  f"({_short(offsets)}); the file may be truncated")
        shapes[name] = tuple(shape)
    return shapes


def _read_header(path: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, tuple]]:
    """The checked JSON document and tensor table of a checkpoint (nothing else is read)."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open ({e.strerror})") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path}: no such checkpoint (not a regular file)")
        try:
            size = int.from_bytes(f.read(8), "little")
            if size <= 0 or size > min(MAX_HEADER_BYTES, info.st_size - 8):
                raise CheckpointError(
                    f"{path}: not a model checkpoint (not a safetensors file, or a truncated "
                    f"one): header of {size} bytes in a file of {info.st_size}, at most "
                    f"{MAX_HEADER_BYTES} allowed")
            raw = f.read(size)
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read ({e})") from e
    header = _load_json(raw, f"{path}: the safetensors header")
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{path}: not a model checkpoint (its safetensors header is not an object)")
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or not isinstance(meta.get(METADATA_KEY), str):
        raise CheckpointError(f"{path}: a safetensors file, but not a melodyvae checkpoint")
    doc = _load_json(meta[METADATA_KEY].encode(), f"{path}: its melodyvae description")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a melodyvae checkpoint")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {_short(doc.get('format_version'))}, this melodyvae "
            f"reads {FORMAT_VERSION}"
        )
    if doc.get("representation") != representation():
        raise CheckpointError(f"{path}: trained on another token representation")
    try:
        if "kind" in doc and doc["kind"] != PHRASE_KIND:
            raise CheckpointError(f"kind must be {PHRASE_KIND!r} or absent, not "
                                  f"{_short(doc['kind'])}")
        if doc.get("kind") == PHRASE_KIND:
            section = doc.get("section")
            if not isinstance(section, dict):
                raise CheckpointError(f"section must be an object, not {_short(section)}")
            for name in ("preset", "description"):
                if not isinstance(section.get(name, ""), str) or len(section.get(name, "")) \
                        > _STRING_FIELDS[name]:
                    raise CheckpointError(f"section.{name} must be a string of at most "
                                          f"{_STRING_FIELDS[name]} characters")
            cfg = check_model_config(section.get("model"))
            check_train_config(section.get("train"))
            latent = check_phrase_config(doc.get("phrase"), cfg).latent_dim
        else:
            cfg = check_model_config(doc.get("model"))
            check_train_config(doc.get("train"))
            latent = cfg.z_dim
        _check_optional(doc, latent)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    tensors = _check_tensors(path, header, info.st_size - 8 - size)
    return doc, tensors


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document of a checkpoint, every field checked, without loading the weights."""
    return _read_header(path)[0]


def preset_from_info(doc: dict[str, Any]) -> Preset:
    try:
        return Preset(doc["preset"], check_model_config(doc["model"]),
                      check_train_config(doc["train"]), doc.get("description", ""))
    except (KeyError, TypeError, PresetError) as e:
        raise CheckpointError(f"checkpoint config is incomplete or unknown ({e})") from e


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                    ) -> Checkpoint:
    """Build the model a checkpoint describes and load its weights.

    The header is checked whole (:func:`read_info`) and every tensor's shape compared with
    the shapes the config implies before the model is built, so a file cannot make this
    allocate more than its own weights need.
    """
    doc, shapes = _read_header(path)
    if doc.get("kind") == PHRASE_KIND:
        raise CheckpointError(f"{path}: a phrase model (load it with load_phrase_checkpoint "
                              "or MelodyVAE.load)")
    preset = preset_from_info(doc)
    _check_shapes(path, shapes, expected_shapes(preset.model), preset.name)
    model = VAE(preset.model)
    _load_weights(path, {"": model})
    model.to(device).eval()
    return Checkpoint(model, preset, doc)


def _check_shapes(path: str | os.PathLike[str], shapes: dict[str, tuple],
                  expected: dict[str, tuple[int, ...]], what: str) -> None:
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the {what} config "
            f"(missing {missing[:3]}, unexpected {[_short(u) for u in unexpected[:3]]})"
        )
    for name, shape in shapes.items():
        if shape != expected[name]:
            raise CheckpointError(
                f"{path}: {name} has shape {shape}, the config wants {expected[name]}"
            )


def _load_weights(path: str | os.PathLike[str], modules: dict[str, torch.nn.Module]) -> None:
    """Read the file's tensors into ``modules`` (prefix -> module), every name and shape
    checked again: the file may have changed since its header was read."""
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: weights unreadable, the file may be truncated ({e})"
                              ) from e
    state = {prefix + k: v for prefix, module in modules.items()
             for k, v in module.state_dict().items()}
    for name, tensor in tensors.items():
        if name not in state or tensor.shape != state[name].shape:
            raise CheckpointError(f"{path}: {_short(name)} changed while it was read")
    if set(tensors) != set(state):
        raise CheckpointError(f"{path}: weights changed while they were read")
    for prefix, module in modules.items():
        own = module.state_dict()
        module.load_state_dict({k: tensors[prefix + k].to(v.dtype) for k, v in own.items()})


@dataclasses.dataclass
class PhraseCheckpoint:
    """A phrase model: its section model, its phrase VAE and the document they came with."""

    section: VAE
    section_preset: Preset
    phrase: PhraseVAE
    info: dict[str, Any]


def is_phrase_info(doc: dict[str, Any]) -> bool:
    """Whether a checkpoint's document describes a phrase model."""
    return doc.get("kind") == PHRASE_KIND


def load_phrase_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                           ) -> PhraseCheckpoint:
    """Build the section model and phrase VAE a phrase model file describes and load them,
    with the same checks as :func:`load_checkpoint` (header whole, every shape first)."""
    doc, shapes = _read_header(path)
    if doc.get("kind") != PHRASE_KIND:
        raise CheckpointError(f"{path}: not a phrase model")
    section = doc["section"]
    preset = preset_from_info({**section, "preset": section.get("preset", "section")})
    cfg = check_phrase_config(doc["phrase"], preset.model)
    expected = {SECTION_PREFIX + k: v for k, v in expected_shapes(preset.model).items()}
    expected.update({PHRASE_PREFIX + k: v for k, v in phrase_shapes(cfg).items()})
    _check_shapes(path, shapes, expected, f"{doc['preset']} phrase")
    model = VAE(preset.model)
    phrase = PhraseVAE(cfg)
    _load_weights(path, {SECTION_PREFIX: model, PHRASE_PREFIX: phrase})
    if cfg.forms:
        prior, threshold = phrase.form_prior, float(phrase.form_threshold)
        if not (bool(torch.isfinite(prior).all()) and bool((prior >= 0).all())
                and abs(float(prior.sum()) - 1.0) < 1e-3):
            raise CheckpointError(f"{path}: the form prior is not a distribution")
        if not 0.0 <= threshold <= 100.0:
            raise CheckpointError(f"{path}: form threshold {threshold} outside [0, 100]")
    return PhraseCheckpoint(model.to(device).eval(), preset, phrase.to(device).eval(), doc)


def write_info(path: str | os.PathLike[str], doc: dict[str, Any],
               out: str | os.PathLike[str] | None = None) -> None:
    """Rewrite a checkpoint's JSON document (to ``out``, or in place), weights unchanged."""
    read_info(path)  # the source must be a valid checkpoint
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: weights unreadable ({e})") from e
    _write(Path(out) if out is not None else Path(path), tensors, doc)
