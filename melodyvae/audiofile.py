"""Audio files: read and write them with soundfile, tell them from MIDI files, and the
errors every audio step shares. Rendering lives in :mod:`melodyvae.render`, transcription in
:mod:`melodyvae.transcribe`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from melodyvae.errors import MelodyVAEError

PEAK_DBFS = -1.0  # rendered files are normalised to this peak level
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc")
_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS")


class AudioError(MelodyVAEError, ValueError):
    """An audio file that cannot be read, written, rendered or transcribed."""


class NotAudioError(AudioError):
    """The file is missing, unreadable or in no format soundfile knows."""


class SilentAudioError(AudioError):
    """The file holds only silence."""


def looks_like_audio(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has an audio suffix or starts like a WAV/AIFF/FLAC/Ogg file."""
    path = Path(path)
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in _AUDIO_MAGIC


def normalise(audio: np.ndarray, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    """``audio`` scaled so its peak sits at ``peak_dbfs`` (silence is left as it is)."""
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 0.0:
        return audio.astype(np.float32)
    return (audio * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def write_audio(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int) -> None:
    """Write (n,) or (n, channels) float audio as 16-bit PCM (the format follows the suffix;
    WAV when the suffix names none)."""
    import soundfile as sf

    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        fmt = "WAV"
    subtype = "PCM_16" if sf.check_format(fmt, "PCM_16") else sf.default_subtype(fmt)
    try:
        sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, format=fmt,
                 subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot write audio ({e})") from e


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """A file's samples as float32 (n, channels) and its sample rate."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise NotAudioError(f"{path}: no such file")
    try:
        audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise NotAudioError(f"{path}: not a readable audio file ({e})") from e
    if audio.shape[0] == 0:
        raise SilentAudioError(f"{path}: the audio file is empty (no samples)")
    if not np.all(np.isfinite(audio)):
        raise NotAudioError(f"{path}: the audio holds NaN or infinite samples")
    return audio, int(sample_rate)
