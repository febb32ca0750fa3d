"""Inputs with limits: files opened first and checked after, sizes read from headers, audio
read in blocks.

Every file melodyvae reads on someone else's behalf goes through :func:`open_checked`: the
file is opened without blocking (a FIFO or a device cannot stall the reader) and, when asked,
without following a symbolic link; then what was actually opened is checked (a regular file,
under a size limit, and inside the allowed folder by the path the open landed on), so a file
swapped for a link or a FIFO between a check and the open cannot get through.

MIDI files are refused above :data:`MAX_MIDI_BYTES` before a byte is parsed (pretty_midi
holds ~110 MB and spends ~3 s per MB of dense MIDI here). Audio is refused from its header
when it is longer than the limit in seconds, and otherwise read in blocks of
:data:`BLOCK_FRAMES` frames, mixed to mono and resampled block by block
(:class:`soxr.ResampleStream`), so memory grows with the mono result, never with the file's
channels, sample format or lies about its length.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from melodyvae.errors import MelodyVAEError

MAX_MIDI_BYTES = 1 << 20  # 1 MiB: a long orchestral file is a few hundred KB
MAX_AUDIO_SECONDS = 600.0  # ten minutes of sound
SAMPLE_RATE_RANGE = (1_000, 384_000)  # Hz an audio header may claim
MAX_CHANNELS = 64
BLOCK_FRAMES = 1 << 16  # audio frames read at once (1.5 s at 44.1 kHz)


class FileRefusedError(MelodyVAEError, ValueError):
    """A path that will not be read: missing, a link, not a regular file, outside the
    allowed folder, or over a size limit."""


class TooLargeError(FileRefusedError):
    """A file over its size or length limit."""


class AudioTooLongError(TooLargeError):
    """Audio longer than its limit in seconds (from its header, or as it is read)."""


# ------------------------------------------------------------------ opening


def _opened_path(fd: int) -> Path | None:
    """Where an open descriptor landed, from the kernel (None where it cannot say)."""
    proc = f"/proc/self/fd/{fd}"
    if os.path.islink(proc):
        return Path(os.readlink(proc))
    getpath = getattr(fcntl, "F_GETPATH", None)  # macOS
    if getpath is not None:
        raw = fcntl.fcntl(fd, getpath, b"\0" * 1024)
        return Path(os.fsdecode(raw.split(b"\0", 1)[0]))
    return None


def open_checked(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                 follow_links: bool = True, max_bytes: int | None = None,
                 what: str = "file") -> BinaryIO:
    """Open ``path`` for reading, then check what was opened.

    Never blocks on a FIFO or a device (the open is non-blocking and anything but a regular
    file is refused). With ``follow_links=False`` a symbolic link as the last component is
    refused. With ``root``, the file the descriptor refers to must lie inside ``root`` (by
    the kernel's path of the descriptor, so a link in any component that points out is
    caught). ``max_bytes`` refuses larger files before anything is read.
    """
    name = os.fspath(path)
    if "\x00" in name:
        raise FileRefusedError("a path cannot hold a NUL character")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(name, flags)
    except FileNotFoundError:
        raise FileRefusedError(f"{name}: no such {what}") from None
    except OSError as e:
        if e.errno == errno.ELOOP and not follow_links:
            raise FileRefusedError(f"{name}: a symbolic link; links are not followed") from None
        raise FileRefusedError(f"{name}: cannot open ({e.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefusedError(f"{name}: not a regular file")
        if root is not None:
            _check_inside(fd, info, name, Path(root))
        if max_bytes is not None and info.st_size > max_bytes:
            raise TooLargeError(f"{name}: {info.st_size:,} bytes, the limit is {max_bytes:,}")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _check_inside(fd: int, info: os.stat_result, name: str, root: Path) -> None:
    top = root.resolve()
    landed = _opened_path(fd)
    if landed is None:  # no kernel path: the resolved name must be this very file
        landed = Path(name).resolve()
        try:
            now = os.stat(landed)
        except OSError:
            raise FileRefusedError(f"{name}: changed while it was opened") from None
        if (now.st_dev, now.st_ino) != (info.st_dev, info.st_ino):
            raise FileRefusedError(f"{name}: changed while it was opened")
    if not landed.is_relative_to(top):
        raise FileRefusedError(f"{name}: outside the allowed folder {top}")


def read_midi_bytes(path: str | os.PathLike[str], *, root: str | os.PathLike[str] | None = None,
                    follow_links: bool = True, max_bytes: int = MAX_MIDI_BYTES) -> bytes:
    """The bytes of a Standard MIDI File: size limit from the file system, then the 4-byte
    ``MThd`` header, and only then the rest is read."""
    with open_checked(path, root=root, follow_links=follow_links, max_bytes=max_bytes,
                      what="MIDI file") as f:
        head = f.read(4)
        if head != b"MThd":
            raise FileRefusedError(f"{os.fspath(path)}: not a MIDI file (no MThd header)")
        return head + f.read(max_bytes)  # the size was checked; a file grown since is cut


# ------------------------------------------------------------------ audio


@dataclass(frozen=True)
class AudioHeader:
    """What an audio file's header claims, before its samples are read."""

    frames: int  # samples per channel
    sample_rate: int  # Hz
    channels: int
    format: str  # soundfile's name, e.g. "WAV"

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


@dataclass(frozen=True)
class MonoAudio:
    """Audio read in blocks and mixed to one channel."""

    samples: np.ndarray  # (n,) float32 at ``sample_rate``
    sample_rate: int  # Hz, after resampling
    header: AudioHeader  # the file's own rate, channels and claimed length
    peak: float  # largest absolute sample of the mono mix, before resampling


def check_audio_header(header: AudioHeader, name: str, max_seconds: float) -> None:
    """Refuse a header whose rate, channels or length is out of bounds."""
    low, high = SAMPLE_RATE_RANGE
    if not low <= header.sample_rate <= high:
        raise FileRefusedError(f"{name}: sample rate {header.sample_rate} Hz, outside "
                               f"[{low}, {high}]")
    if not 1 <= header.channels <= MAX_CHANNELS:
        raise FileRefusedError(f"{name}: {header.channels} channels, outside [1, {MAX_CHANNELS}]")
    if header.seconds > max_seconds:
        raise AudioTooLongError(f"{name}: {header.seconds:.1f} s of audio, the limit is "
                            f"{max_seconds:g} s")


def read_audio_header(path: str | os.PathLike[str], *, max_seconds: float = MAX_AUDIO_SECONDS,
                      root: str | os.PathLike[str] | None = None,
                      follow_links: bool = True) -> AudioHeader:
    """Open an audio file, check its header (:func:`check_audio_header`) and return it; no
    samples are read. The early check a command makes before it loads anything."""
    import soundfile as sf

    name = os.fspath(path)
    with open_checked(path, root=root, follow_links=follow_links, what="audio file") as f:
        try:
            with sf.SoundFile(f) as snd:
                header = AudioHeader(int(snd.frames), int(snd.samplerate), int(snd.channels),
                                     str(snd.format))
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise FileRefusedError(f"{name}: not a readable audio file ({e})") from e
    check_audio_header(header, name, max_seconds)
    return header


def read_audio_mono(path: str | os.PathLike[str], *, target_rate: int | None = None,
                    max_seconds: float = MAX_AUDIO_SECONDS,
                    root: str | os.PathLike[str] | None = None, follow_links: bool = True,
                    block_frames: int = BLOCK_FRAMES) -> MonoAudio:
    """Read an audio file (WAV, FLAC, Ogg, AIFF) as float32 mono, in blocks.

    The header is checked first (:func:`check_audio_header`); then at most ``max_seconds``
    of sound is read, ``block_frames`` frames at a time, each block mixed to mono and (with
    ``target_rate``) resampled by one streaming resampler. A file that holds more sound than
    its header said is refused once it passes the limit. Peak memory: the mono result plus
    one block.
    """
    import soundfile as sf
    import soxr

    name = os.fspath(path)
    with open_checked(path, root=root, follow_links=follow_links, what="audio file") as f:
        try:
            snd = sf.SoundFile(f)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
            raise FileRefusedError(f"{name}: not a readable audio file ({e})") from e
        with snd:
            header = AudioHeader(int(snd.frames), int(snd.samplerate), int(snd.channels),
                                 str(snd.format))
            check_audio_header(header, name, max_seconds)
            rate = target_rate or header.sample_rate
            limit = int(math.floor(max_seconds * header.sample_rate))
            expected = min(header.frames, limit)
            out = np.empty(int(math.ceil(expected * rate / header.sample_rate)) + 64,
                           np.float32)
            stream = (soxr.ResampleStream(header.sample_rate, rate, 1, dtype="float32")
                      if rate != header.sample_rate else None)
            filled = read = 0
            peak = 0.0
            try:
                blocks: Iterator[np.ndarray] = snd.blocks(block_frames, dtype="float32",
                                                          always_2d=True)
                for block in blocks:
                    read += len(block)
                    if read > limit:
                        raise AudioTooLongError(f"{name}: more than {max_seconds:g} s of audio "
                                            f"(its header said {header.seconds:.1f} s)")
                    mono = block.mean(axis=1, dtype=np.float32)  # (frames,)
                    if not np.all(np.isfinite(mono)):
                        raise FileRefusedError(f"{name}: the audio holds NaN or infinite "
                                               "samples")
                    peak = max(peak, float(np.max(np.abs(mono), initial=0.0)))
                    chunk = mono if stream is None else stream.resample_chunk(mono)
                    out, filled = _append(out, filled, chunk)
                if stream is not None:
                    out, filled = _append(out, filled, stream.resample_chunk(
                        np.zeros(0, np.float32), last=True))
            except (sf.LibsndfileError, RuntimeError) as e:
                raise FileRefusedError(f"{name}: audio unreadable after {read} frames "
                                       f"({e})") from e
    if read == 0:
        raise FileRefusedError(f"{name}: the audio file is empty (no samples)")
    return MonoAudio(out[:filled], rate, header, peak)  # pages past ``filled`` never touched


def _append(out: np.ndarray, filled: int, chunk: np.ndarray) -> tuple[np.ndarray, int]:
    """Copy ``chunk`` into ``out`` at ``filled``; grow by half when the header undersold the
    length (the read limit still bounds it)."""
    end = filled + len(chunk)
    if end > len(out):
        grown = np.empty(max(end, len(out) + len(out) // 2), np.float32)
        grown[:filled] = out[:filled]
        out = grown
    out[filled:end] = chunk
    return out, end


# ------------------------------------------------------------------ frame features in blocks


def framewise_in_blocks(y: np.ndarray, hop: int, feature: Callable[[np.ndarray], np.ndarray],
                        block_frames: int = 2048, margin_frames: int = 64) -> np.ndarray:
    """A centred frame feature (``feature(y) -> (..., frames)``, one frame per ``hop``
    samples, frame ``t`` centred on sample ``t * hop``) computed over blocks of
    ``block_frames`` frames with ``margin_frames`` frames of context on each side, so the
    work memory of ``feature`` is that of one block, not of ``y``.

    Frames whose window lies inside a block's context are the same as over the whole signal;
    a feature with state across frames (a Viterbi path, a global normalisation) sees only
    its block and margins.
    """
    n_frames = 1 + len(y) // hop
    if n_frames <= block_frames + 2 * margin_frames:
        return feature(y)
    parts = []
    for first in range(0, n_frames, block_frames):
        last = min(n_frames, first + block_frames)
        lo = max(0, first - margin_frames)
        hi = min(n_frames, last + margin_frames)
        end = len(y) if hi == n_frames else (hi - 1) * hop + 1
        out = feature(y[lo * hop:end])  # frames lo..hi-1, centred as over the whole of y
        parts.append(out[..., first - lo:first - lo + (last - first)])
    return np.concatenate(parts, axis=-1)
