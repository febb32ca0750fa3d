"""Self-describing checkpoints: safetensors weights with the JSON config in the header.

One ``.safetensors`` file holds the weights and, under the header metadata key
``melodyvae``, a JSON document with the format version, the preset (model and training
configs), the token representation, a summary of the training data and, once computed,
the latent axes. Loading needs nothing else, and no pickle is involved.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from melodyvae import melody as _melody
from melodyvae.errors import MelodyVAEError
from melodyvae.model import VAE
from melodyvae.presets import ModelConfig, Preset, PresetError, TrainConfig

FORMAT = "melodyvae-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "melodyvae"


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


def read_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON document of a checkpoint, without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            fits = 0 < size <= min(100_000_000, path.stat().st_size - 8)
            raw = f.read(size) if fits else b""
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read it ({e.strerror or e})") from e
    if not fits:
        raise CheckpointError(f"{path}: not a model checkpoint (not a safetensors file, or "
                              "a truncated one)")
    try:
        header = json.loads(raw)
    except ValueError as e:
        raise CheckpointError(f"{path}: not a model checkpoint (a safetensors header that "
                              "is not JSON)") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or METADATA_KEY not in meta:
        raise CheckpointError(f"{path}: a safetensors file, but not a melodyvae checkpoint")
    try:
        doc = json.loads(meta[METADATA_KEY])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its melodyvae description is not JSON ({e})") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a melodyvae checkpoint")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {doc.get('format_version')}, this melodyvae reads "
            f"{FORMAT_VERSION}"
        )
    if doc.get("representation") != representation():
        raise CheckpointError(f"{path}: trained on another token representation")
    return doc


def preset_from_info(doc: dict[str, Any]) -> Preset:
    try:
        return Preset(doc["preset"], ModelConfig(**doc["model"]), TrainConfig(**doc["train"]),
                      doc.get("description", ""))
    except (KeyError, TypeError, PresetError) as e:
        raise CheckpointError(f"checkpoint config is incomplete or unknown ({e})") from e


def load_checkpoint(path: str | os.PathLike[str], device: str | torch.device = "cpu"
                    ) -> Checkpoint:
    """Build the model a checkpoint describes and load its weights, checking every shape."""
    doc = read_info(path)
    preset = preset_from_info(doc)
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: weights unreadable, the file may be truncated ({e})"
                              ) from e
    model = VAE(preset.model)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the {preset.name} config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(
                f"{path}: {name} has shape {tuple(tensor.shape)}, the config wants "
                f"{tuple(expected[name].shape)}"
            )
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
    model.to(device).eval()
    return Checkpoint(model, preset, doc)


def write_info(path: str | os.PathLike[str], doc: dict[str, Any],
               out: str | os.PathLike[str] | None = None) -> None:
    """Rewrite a checkpoint's JSON document (to ``out``, or in place), weights unchanged."""
    read_info(path)  # the source must be a valid checkpoint
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: weights unreadable ({e})") from e
    target = Path(out) if out is not None else Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(doc)})
    os.replace(tmp, target)
