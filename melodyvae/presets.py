"""Named model and training configurations.

Each preset is a small override of :data:`BASE` with ``dataclasses.replace``. The sizes of
the shipped presets were chosen for decoding in real time on one CPU core (see
``bench/decode.py``); MusicVAE's own hierdec-mel_16bar used a 2x2048 encoder and 2x1024
decoders with z = 512.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass

from melodyvae.errors import MelodyVAEError
from melodyvae.melody import VOCAB_SIZE


class PresetError(MelodyVAEError, ValueError):
    """An unknown preset or a bad override."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a melody VAE."""

    kind: str = "hier"  # "hier" (conductor + bar decoder) or "flat" (one decoder RNN)
    bars: int = 4  # phrase length in bars
    steps_per_bar: int = 16  # grid steps per bar (16ths of a 4/4 bar)
    vocab_size: int = VOCAB_SIZE  # token classes: hold, rest, 88 note-ons
    embed_dim: int = 64  # token embedding width (encoder and decoder inputs)
    z_dim: int = 128  # latent size
    enc_hidden: int = 256  # encoder LSTM units per direction
    enc_layers: int = 2  # encoder layers (bidirectional)
    cond_hidden: int = 256  # conductor LSTM units; also the per-bar embedding width
    cond_layers: int = 2  # conductor layers
    dec_hidden: int = 256  # bar (or flat) decoder LSTM units
    dec_layers: int = 2  # bar (or flat) decoder layers

    @property
    def steps(self) -> int:
        """Tokens in one phrase."""
        return self.bars * self.steps_per_bar

    def __post_init__(self) -> None:
        if self.kind not in ("hier", "flat"):
            raise PresetError(f"kind must be 'hier' or 'flat', not {self.kind!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, int) and value <= 0:
                raise PresetError(f"{f.name} must be positive, not {value}")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and KL schedule (MusicVAE's, rescaled to fewer steps)."""

    batch_size: int = 64  # phrases per step (over all processes)
    lr: float = 1e-3  # initial learning rate
    lr_min: float = 1e-5  # learning-rate floor
    lr_decay: float = 0.9999  # per-step exponential decay factor
    grad_clip: float = 1.0  # global gradient-norm clip
    max_beta: float = 0.2  # final KL weight
    beta_rate: float = 0.9995  # beta = max_beta * (1 - beta_rate ** step)
    free_bits: float = 64.0  # total KL budget in bits left unpenalised
    transpose: int = 5  # random transposition range in semitones (+-), 0 disables
    max_steps: int = 20000  # training steps


@dataclass(frozen=True)
class Preset:
    name: str
    model: ModelConfig
    train: TrainConfig
    description: str


BASE = Preset("base", ModelConfig(), TrainConfig(), "")

# What the inference facade (melodyvae.inference) takes when not told; here, so that
# command-line help can show them without importing torch.
DEFAULT_MODEL = "hier-4bar"  # the shipped model (named after its preset) used when none is named
CPU_BATCH = 64  # melodies decoded together on a CPU: small enough for the cache
GPU_BATCH = 1024  # melodies decoded together on a GPU

# Tiny models for tests: two-layer conductor and decoder, as the shipped 16-bar models have,
# so the decoders' upper layers are exercised.
_TINY_MODEL = dict(embed_dim=8, z_dim=8, enc_hidden=16, enc_layers=1, cond_hidden=16,
                   cond_layers=2, dec_hidden=16, dec_layers=2)
_TINY_TRAIN = dict(batch_size=8, max_steps=50)


def _preset(name: str, description: str, model: dict[str, typing.Any],
            train: dict[str, typing.Any] | None = None) -> Preset:
    return Preset(
        name,
        dataclasses.replace(BASE.model, **model),
        dataclasses.replace(BASE.train, **(train or {})),
        description,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        # The live default decodes bars with one LSTM layer of 256 units: a third less
        # weight to stream per step than two layers of 192, so a decode takes ~2/3 the time
        # on a CPU core.
        _preset("hier-4bar", "4-bar hierarchical melody VAE (the live default)",
                dict(bars=4, z_dim=128, cond_hidden=192, dec_hidden=256, dec_layers=1),
                dict(free_bits=128.0)),
        # The 16-bar models read 256 steps with a one-layer encoder (a second layer triples
        # the cost of a training step on a CPU) as wide as hier-4bar's, so that its encoder
        # weights can start them (``--init-from``).
        _preset("hier-16bar", "16-bar hierarchical melody VAE (conductor over 16 bars)",
                dict(bars=16, z_dim=256, enc_layers=1, cond_hidden=192, dec_hidden=192),
                dict(free_bits=256.0)),
        _preset("flat-16bar", "16-bar flat baseline: one decoder RNN over 256 steps",
                dict(kind="flat", bars=16, z_dim=256, enc_layers=1), dict(free_bits=256.0)),
        _preset("tiny-hier-4bar", "tiny 4-bar hierarchical model for tests",
                dict(bars=4, **_TINY_MODEL), _TINY_TRAIN),
        _preset("tiny-hier-16bar", "tiny 16-bar hierarchical model for tests",
                dict(bars=16, **_TINY_MODEL), _TINY_TRAIN),
        _preset("tiny-flat-16bar", "tiny 16-bar flat model for tests",
                dict(kind="flat", bars=16, **_TINY_MODEL), _TINY_TRAIN),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PresetError(
            f"unknown preset {name!r}; one of: {', '.join(PRESETS)}"
        ) from None


def is_tiny(name: str) -> bool:
    return name.startswith("tiny-")


def _coerce(field_type: typing.Any, text: str, name: str) -> typing.Any:
    if field_type in (int, "int"):
        try:
            return int(text)
        except ValueError:
            raise PresetError(f"{name} wants an integer, not {text!r}") from None
    if field_type in (float, "float"):
        try:
            return float(text)
        except ValueError:
            raise PresetError(f"{name} wants a number, not {text!r}") from None
    return text


def with_overrides(preset: Preset, overrides: list[str]) -> Preset:
    """Apply ``section.field=value`` overrides (``model.z_dim=64``, ``train.lr=3e-4``),
    each converted to the field's declared type."""
    model, train = preset.model, preset.train
    for item in overrides:
        key, sep, value = item.partition("=")
        section, dot, field_name = key.partition(".")
        if not sep or not dot or section not in ("model", "train"):
            raise PresetError(f"override {item!r}: write model.FIELD=VALUE or train.FIELD=VALUE")
        target = model if section == "model" else train
        fields = {f.name: f for f in dataclasses.fields(target)}
        if field_name not in fields:
            raise PresetError(
                f"override {item!r}: no field {field_name!r} in {section} "
                f"({', '.join(fields)})"
            )
        converted = _coerce(fields[field_name].type, value, key)
        if section == "model":
            model = dataclasses.replace(model, **{field_name: converted})
        else:
            train = dataclasses.replace(train, **{field_name: converted})
    return dataclasses.replace(preset, model=model, train=train)
