"""Shared by the benchmark scripts (run as ``python bench/NAME.py``, so importable as
``common``)."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

LISTENING = re.compile(r"listening on (\S+):(\d+)")


def _any_cpu() -> None:
    """A server may run on every core, whatever core its benchmark client is pinned to."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))


def start(command: list[str], timeout: float = 180.0) -> tuple[subprocess.Popen[str], int]:
    """Start a server process; wait for its ``listening on HOST:PORT`` line; its port."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=_any_cpu)
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        match = LISTENING.search(line)
        if match:
            return proc, int(match.group(2))
    proc.kill()
    _, err = proc.communicate()
    raise SystemExit(f"{' '.join(command)} did not start:\n{''.join(lines)}{err}")


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
