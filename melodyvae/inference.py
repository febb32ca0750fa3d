"""The inference facade: one object with encode / decode / sample / interpolate on melodies.

``MelodyVAE.load("hier-4bar")`` takes a shipped model by name, ``MelodyVAE.load(path)`` a
checkpoint file (``from melodyvae import MelodyVAE``). The command line, the OSC server,
training's reports and the benchmarks stand on this module for everything they share:
loading and device choice (:func:`pick_device`), seeded batches (:meth:`MelodyVAE.decode_batches`,
:func:`chunk_seed`), noise on z (:func:`vary`), interpolation (:func:`slerp`,
:meth:`MelodyVAE.interpolation`), reading a melody from any supported file
(:func:`read_melody`) and the latent axes (:attr:`MelodyVAE.latent_axes`). Code that needs
speed uses the token and tensor layers (``encode_tokens``, ``decode_tokens``, ``rolling``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melodyvae import decode
from melodyvae.axes import LatentAxes
from melodyvae.checkpoint import CheckpointError, is_phrase_info, load_checkpoint, read_info
from melodyvae.decode import Cancel, Rolling
from melodyvae.errors import MelodyVAEError
from melodyvae.melody import Melody, from_tokens, to_tokens
from melodyvae.midi import MIDI_SUFFIXES
from melodyvae.presets import CPU_BATCH, DEFAULT_MODEL, GPU_BATCH

__all__ = ["CPU_BATCH", "DEFAULT_MODEL", "GPU_BATCH", "MODELS_DIR", "DeviceError",
           "InterpolationError", "LatentSizeError", "MelodyVAE", "ModelNotFoundError",
           "chunk_seed", "melody_suffixes", "model_info",
           "pick_device", "read_melody", "resolve_model", "shipped_models", "slerp", "vary"]

_LOGGER = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"
ENCODE_BATCH = 512  # phrases encoded together by encode_means


class ModelNotFoundError(CheckpointError):
    """Neither a shipped model name nor a checkpoint file."""


class DeviceError(MelodyVAEError, ValueError):
    """A device name that is unknown, or a device this machine does not have."""


class LatentSizeError(MelodyVAEError, ValueError):
    """A latent vector whose size is not the model's."""


class InterpolationError(MelodyVAEError, ValueError):
    """An interpolation asked for with fewer than two steps or an unknown method."""


def shipped_models() -> dict[str, Path]:
    """Shipped model names and their files."""
    return {p.stem: p for p in sorted(MODELS_DIR.glob("*.safetensors"))}


def resolve_model(model: str | os.PathLike[str]) -> Path:
    """A checkpoint path for a shipped model name or a path."""
    path = Path(model)
    if path.is_file():
        return path
    shipped = shipped_models()
    if str(model) in shipped:
        return shipped[str(model)]
    names = ", ".join(shipped) or "none installed"
    raise ModelNotFoundError(f"{model}: not a checkpoint file nor a shipped model ({names})")


def model_info(model: str | os.PathLike[str]) -> dict[str, Any]:
    """A checkpoint's JSON document, without loading its weights."""
    return read_info(resolve_model(model))


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and bool(mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA, then MPS, then the CPU; a named device must exist here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {name!r} (auto, cpu, cuda or mps)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {name}: no CUDA device is available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise DeviceError(f"device {name}: this machine has {torch.cuda.device_count()} "
                          "CUDA devices (cuda:0 is the first)")
    if device.type == "mps" and not _mps_available():
        raise DeviceError(f"device {name}: no MPS device is available")
    if device.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {name}: melodyvae runs on cpu, cuda or mps")
    return device


def chunk_seed(seed: int, chunk: int) -> int:
    """The sampling seed of chunk ``chunk`` of a run seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, chunk]).generate_state(1)[0])


def vary(z: np.ndarray, amount: float, seed: int, n: int | None = None) -> np.ndarray:
    """``z`` (Z,) moved by ``amount`` times N(0, I) noise drawn from ``seed``: (Z,), or
    (n, Z) for n draws (the first of which is the (Z,) one), in float64."""
    z = np.asarray(z, np.float64)
    rng = np.random.default_rng(seed)
    if n is None:
        return z + amount * rng.standard_normal(len(z))
    return z[None, :] + amount * rng.standard_normal((n, len(z)))


def melody_suffixes() -> tuple[str, ...]:
    """File name endings :func:`read_melody` reads: MIDI, then audio (transcribed)."""
    from melodyvae.audio import AUDIO_SUFFIXES

    return MIDI_SUFFIXES + AUDIO_SUFFIXES


def read_melody(path: str | os.PathLike[str], qpm: float | None = None, *,
                root: str | os.PathLike[str] | None = None,
                max_audio_seconds: float | None = None,
                max_midi_bytes: int | None = None) -> tuple[Melody, str]:
    """The melody of a MIDI file, or of an audio file through the transcriber (at ``qpm``,
    estimated when None), and a few words on where it came from.

    With ``root`` (files named over the network) the file opened must lie inside that
    folder, is not reached through a link, and is told apart by its name alone. Files
    larger than the limits (:mod:`melodyvae.limits` by default) are refused from their
    size or header, before they are read.
    """
    from melodyvae import limits
    from melodyvae.audiofile import AUDIO_SUFFIXES, looks_like_audio

    follow = root is None
    audio = (Path(path).suffix.lower() in AUDIO_SUFFIXES if root is not None
             else looks_like_audio(path))
    if audio:
        from melodyvae.transcribe import transcribe_file

        result = transcribe_file(path, qpm, root=root, follow_links=follow,
                                 max_seconds=max_audio_seconds or limits.MAX_AUDIO_SECONDS)
        how = "estimated" if result.tempo_estimated else "given"
        return result.melody, (f"transcribed {len(result.melody.notes)} notes at "
                               f"{result.qpm:.1f} qpm ({how})")
    from melodyvae.midi import read_midi

    melody, info = read_midi(path, root=root, follow_links=follow,
                             max_bytes=max_midi_bytes or limits.MAX_MIDI_BYTES)
    return melody, f"{len(melody.notes)} notes from track {info.track}"


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation between two vectors (linear when they are parallel)."""
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return (1 - t) * a + t * b
    cos = float(np.clip(np.dot(a / na, b / nb), -1.0, 1.0))
    omega = np.arccos(cos)
    if omega < 1e-6:
        return (1 - t) * a + t * b
    so = np.sin(omega)
    return np.sin((1 - t) * omega) / so * a + np.sin(t * omega) / so * b


class MelodyVAE:
    """A trained melody VAE ready to play."""

    def __init__(self, model: Any, info: dict[str, Any], name: str,
                 device: torch.device) -> None:
        self.model = model
        self.info = info
        self.name = name
        self.device = device
        self.config = model.cfg

    @classmethod
    def load(cls, model: str | os.PathLike[str] = DEFAULT_MODEL,
             device: str = "auto") -> MelodyVAE:
        """A shipped model by name or a checkpoint file; a phrase model file gives a
        :class:`melodyvae.phrase_inference.PhraseMelodyVAE` (same interface)."""
        path = resolve_model(model)
        dev = pick_device(device)
        name = str(model) if str(model) in shipped_models() else path.stem
        if is_phrase_info(read_info(path)):
            from melodyvae.phrase_inference import load_phrase_model

            _LOGGER.info("loaded phrase model %s on %s", name, dev)
            return load_phrase_model(path, name, dev)
        ckpt = load_checkpoint(path, dev)
        _LOGGER.info("loaded %s (%s) on %s", name, ckpt.preset.name, dev)
        return cls(ckpt.model, ckpt.info, name, dev)

    # ---------------------------------------------------------------- properties
    @property
    def bars(self) -> int:
        return int(self.config.bars)

    @property
    def steps(self) -> int:
        return int(self.config.steps)

    @property
    def steps_per_bar(self) -> int:
        return int(self.config.steps_per_bar)

    @property
    def z_dim(self) -> int:
        return int(self.config.z_dim)

    @property
    def axes(self) -> dict[str, Any]:
        """The latent-axes document shipped with the model (empty when none was computed);
        :attr:`latent_axes` reads it."""
        return dict(self.info.get("axes") or {})

    @property
    def latent_axes(self) -> LatentAxes:
        """The model's latent axes, read from its document (see :mod:`melodyvae.axes`)."""
        return LatentAxes(self.z_dim, self.axes)

    @property
    def default_batch(self) -> int:
        """Melodies to decode at once on the model's device.

        On a CPU the step-by-step decode spends much of its time in elementwise LSTM-cell
        arithmetic; with 64 melodies (1,024 bars in flight) those tensors stay in cache
        while the matrix products are still large (measured for hier-16bar: ~140
        melodies/s at 32-128 against ~115-130 at 256-512, one thread).
        """
        return CPU_BATCH if self.device.type == "cpu" else GPU_BATCH

    # ---------------------------------------------------------------- tokens layer
    def fit(self, melody: Melody) -> np.ndarray:
        """The melody's tokens cut or padded with silence to the model's length (T,)."""
        window = melody.window(0, self.steps) if melody.total_steps != self.steps else melody
        return to_tokens(window)[0]

    @torch.no_grad()
    def encode_tokens(self, tokens: np.ndarray | torch.Tensor) -> tuple[torch.Tensor,
                                                                         torch.Tensor]:
        """(B, T) tokens -> posterior mean and log-variance, each (B, Z)."""
        x = torch.as_tensor(np.asarray(tokens), dtype=torch.long, device=self.device)
        return self.model.encode(x)

    @torch.no_grad()
    def decode_tokens(self, z: np.ndarray | torch.Tensor, temperature: float = 0.0,
                      seed: int | None = None, cancel: Cancel | None = None) -> torch.Tensor:
        """(B, Z) latent vectors -> (B, T) tokens. The same seed gives the same tokens.

        ``cancel`` is asked before every decode step; True stops the decode with
        :class:`melodyvae.decode.DecodeCancelled` (a server drops a decode gone stale)."""
        zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=self.device)
        if zt.ndim == 1:
            zt = zt.unsqueeze(0)
        if zt.shape[1] != self.z_dim:
            raise LatentSizeError(f"z has {zt.shape[1]} dimensions, the model {self.z_dim}")
        return decode.sample(self.model, zt, temperature, self.generator(temperature, seed),
                             cancel=cancel)

    def decode_batches(self, z: np.ndarray, temperature: float, seed: int,
                       batch_size: int | None = None) -> Iterator[np.ndarray]:
        """Decode (N, Z) latent vectors chunk by chunk: (b, T) tokens per chunk.

        Chunk ``k`` samples with :func:`chunk_seed` (seed, k), so a run is fixed by its
        seed and batch size (:attr:`default_batch` when None).
        """
        batch_size = batch_size or self.default_batch
        for k, start in enumerate(range(0, len(z), batch_size)):
            tokens = self.decode_tokens(z[start:start + batch_size], temperature,
                                        chunk_seed(seed, k))
            yield tokens.cpu().numpy()

    def encode_means(self, tokens: np.ndarray, batch_size: int = ENCODE_BATCH) -> np.ndarray:
        """Posterior means of (N, T) tokens, ``batch_size`` phrases at a time: (N, Z)."""
        return np.concatenate(
            [self.encode_tokens(tokens[i : i + batch_size])[0].float().cpu().numpy()
             for i in range(0, len(tokens), batch_size)]
            or [np.zeros((0, self.z_dim), np.float32)])

    def rolling(self) -> Rolling | None:
        """A decode that requests join and leave between steps (a server's decoder), or
        None where the model does not decode in NumPy (on a GPU): then use
        :meth:`decode_tokens`. Its phrases are the tokens decode_tokens gives each z alone
        with the same temperature and seed (see :meth:`generator`)."""
        return decode.rolling(self.model)

    def generator(self, temperature: float, seed: int | None) -> torch.Generator | None:
        """The sampling generator :meth:`decode_tokens` uses (None for greedy decodes)."""
        if temperature <= 0:
            return None
        generator = torch.Generator(device=self.device)
        generator.manual_seed(0 if seed is None else int(seed))
        return generator

    @torch.no_grad()
    def negative_elbo_bits(self, tokens: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Negative ELBO of each phrase in bits: (N, T) tokens -> (N,).

        (reconstruction NLL + KL(q(z|x) || N(0, I))) / ln 2, the NLL taken with the decoder
        teacher-forced at the posterior mean (not a posterior sample), so a phrase always
        gets the same score. Higher means the model finds the phrase more unusual.
        """
        from melodyvae.model import kl_divergence, reconstruction_nll

        self.model.eval()
        out = []
        for start in range(0, len(tokens), batch_size):
            x = torch.as_tensor(np.asarray(tokens[start : start + batch_size]),
                                dtype=torch.long, device=self.device)
            mu, logvar = self.model.encode(x)
            nll = reconstruction_nll(self.model.decoder(mu, x), x)
            bits = (nll + kl_divergence(mu, logvar)) / math.log(2.0)
            out.append(bits.float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)

    def melody_from_tokens(self, tokens: Sequence[int] | np.ndarray, qpm: float = 120.0
                           ) -> Melody:
        return from_tokens(np.asarray(tokens), self.steps_per_bar, qpm)

    # ---------------------------------------------------------------- melody layer
    def encode(self, melodies: Melody | Sequence[Melody]) -> np.ndarray:
        """Posterior means: one melody -> (Z,), a list -> (B, Z)."""
        single = isinstance(melodies, Melody)
        items = [melodies] if isinstance(melodies, Melody) else list(melodies)
        mu, _ = self.encode_tokens(np.stack([self.fit(m) for m in items]))
        out = mu.float().cpu().numpy()
        return out[0] if single else out

    def decode(self, z: np.ndarray, temperature: float = 0.0, seed: int | None = None,
               qpm: float = 120.0) -> list[Melody]:
        """(B, Z) or (Z,) latent vectors -> melodies."""
        tokens = self.decode_tokens(z, temperature, seed).cpu().numpy()
        return [self.melody_from_tokens(row, qpm) for row in tokens]

    def sample_z(self, n: int, seed: int | None = None) -> np.ndarray:
        """n draws from the prior N(0, I), (n, Z)."""
        return np.random.default_rng(seed).standard_normal((n, self.z_dim)).astype(np.float32)

    def sample(self, n: int = 1, temperature: float = 1.0, seed: int | None = None,
               qpm: float = 120.0) -> list[Melody]:
        """n melodies from the prior."""
        return self.decode(self.sample_z(n, seed), temperature, seed, qpm)

    def interpolation(self, a: Melody, b: Melody, steps: int = 9, method: str = "slerp"
                      ) -> np.ndarray:
        """``steps`` latent vectors from ``a``'s to ``b``'s (ends included), (steps, Z)
        float32: along a great circle (``slerp``) or a straight line (``lerp``)."""
        if steps < 2:
            raise InterpolationError("an interpolation needs at least 2 steps")
        if method not in ("slerp", "lerp"):
            raise InterpolationError(f"method must be slerp or lerp, not {method!r}")
        za, zb = self.encode([a, b])
        ts = np.linspace(0.0, 1.0, steps)
        if method == "slerp":
            zs = np.stack([slerp(za, zb, t) for t in ts])
        else:
            zs = np.stack([(1 - t) * za + t * zb for t in ts])
        return zs.astype(np.float32)

    def interpolate(self, a: Melody, b: Melody, steps: int = 9, method: str = "slerp",
                    temperature: float = 0.0, qpm: float = 120.0) -> list[Melody]:
        """``steps`` melodies from ``a`` to ``b`` through the latent space (ends included)."""
        return self.decode(self.interpolation(a, b, steps, method), temperature, qpm=qpm)
