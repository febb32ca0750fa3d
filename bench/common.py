"""Shared by the benchmark scripts (run as ``python bench/NAME.py``, so importable as
``common``)."""

from __future__ import annotations

from pathlib import Path


def resolve(model: str, tmp: Path) -> tuple[str, bool]:
    """A checkpoint for ``model`` and whether it is an untrained stand-in: a shipped name or
    a path as is; a preset name that is not shipped yet gets untrained weights of that
    preset, written to ``tmp`` (latency and throughput do not depend on weight values)."""
    from melodyvae.inference import ModelNotFoundError, resolve_model

    try:
        return str(resolve_model(model)), False
    except ModelNotFoundError:
        pass
    from melodyvae.checkpoint import save_checkpoint
    from melodyvae.model import VAE
    from melodyvae.presets import get_preset

    preset = get_preset(model)  # an unknown name fails here, with the preset list
    path = tmp / f"{model}-untrained.safetensors"
    save_checkpoint(path, VAE(preset.model), preset)
    return str(path), True
