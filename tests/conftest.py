"""Shared fixtures: tiny models saved as real checkpoints, and small real MIDI files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from melodyvae.checkpoint import save_checkpoint
from melodyvae.inference import MelodyVAE
from melodyvae.melody import Melody, Note
from melodyvae.model import VAE
from melodyvae.presets import get_preset


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Every test's model work on one thread: 2-core CI runs stay predictable."""
    torch.set_num_threads(1)


def make_checkpoint(path: Path, preset_name: str = "tiny-hier-4bar", seed: int = 0,
                    extra: dict | None = None) -> Path:
    """A checkpoint of an untrained tiny model (random weights, fixed seed)."""
    torch.manual_seed(seed)
    preset = get_preset(preset_name)
    save_checkpoint(path, VAE(preset.model), preset, extra)
    return path


def make_phrase_checkpoint(path: Path, section_preset: str = "tiny-hier-4bar", seed: int = 0,
                           w_dim: int = 8, extra: dict | None = None, forms: int = 0) -> Path:
    """A phrase model of four sections over an untrained tiny section model."""
    from melodyvae.checkpoint import save_phrase_checkpoint
    from melodyvae.phrase import PhraseConfig, PhraseVAE

    torch.manual_seed(seed)
    preset = get_preset(section_preset)
    section = VAE(preset.model)
    with torch.no_grad():  # sharper logits, so that greedy decodes differ by z
        for name, weight in section.named_parameters():
            if name.startswith("decoder.") and weight.dim() == 2:
                weight.mul_(8.0)
    phrase = PhraseVAE(PhraseConfig(code_dim=preset.model.z_dim, w_dim=w_dim, hidden=16,
                                    layers=1, forms=forms))
    with torch.no_grad():
        phrase.code_std.fill_(2.0)  # section codes spread enough to give varied notes
    save_phrase_checkpoint(path, section, preset, phrase, "tiny-phrase",
                           "tiny phrase model for tests", extra)
    return path


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A tiny-hier-4bar checkpoint file in tmp_path."""
    return make_checkpoint(tmp_path / "tiny-hier-4bar.safetensors")


@pytest.fixture(scope="module")
def vae(tmp_path_factory: pytest.TempPathFactory) -> MelodyVAE:
    """A tiny untrained 4-bar model, loaded as the server loads one (no latent axes)."""
    path = make_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors")
    return MelodyVAE.load(path, device="cpu")


def osc(address: str, *args: object) -> bytes:
    """One OSC message as a datagram, argument types inferred by python-osc."""
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address)
    for value in args:
        builder.add_arg(value)
    return bytes(builder.build().dgram)


def scale_melody(bars: int = 4, qpm: float = 120.0) -> Melody:
    """A simple on-grid melody: eighth notes up and down a C major scale."""
    pitches = [60, 62, 64, 65, 67, 69, 71, 72]
    notes = []
    for i in range(bars * 8):
        pitch = pitches[i % 8] if (i // 8) % 2 == 0 else pitches[7 - i % 8]
        notes.append(Note(2 * i, 2 * i + 2, pitch))
    return Melody(tuple(notes), bars * 16, 16, qpm)


def random_tokens(n: int, steps: int, seed: int = 0) -> np.ndarray:
    """n random valid phrases as tokens (n, steps)."""
    from melodyvae.melody import to_tokens

    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        t = 0
        notes = []
        while t < steps:
            length = int(rng.choice([1, 2, 2, 4, 4, 8]))
            if rng.random() < 0.85:
                notes.append(Note(t, min(steps, t + length), int(rng.integers(55, 80))))
            t += length
        rows.append(to_tokens(Melody(tuple(notes), steps))[0])
    return np.stack(rows)
