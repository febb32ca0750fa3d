"""Files opened first and checked after; MIDI and audio limits from headers; audio in blocks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from melodyvae.limits import (
    MAX_MIDI_BYTES,
    FileRefusedError,
    TooLargeError,
    framewise_in_blocks,
    open_checked,
    read_audio_mono,
    read_midi_bytes,
)
from melodyvae.midi import MidiTooLargeError, NotMidiError, read_midi, write_midi


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    inside = tmp_path / "allowed"
    inside.mkdir()
    (inside / "ok.mid").write_bytes(b"MThd inside")
    (tmp_path / "secret.mid").write_bytes(b"MThd SECRET outside")
    return inside


def test_a_regular_file_inside_opens(folder: Path) -> None:
    with open_checked(folder / "ok.mid", root=folder, follow_links=False) as f:
        assert f.read() == b"MThd inside"
    # blocking mode is back on for the reader
    with open_checked(folder / "ok.mid") as f:
        assert os.get_blocking(f.fileno())


def test_links_out_are_refused(folder: Path, tmp_path: Path) -> None:
    (folder / "link.mid").symlink_to(tmp_path / "secret.mid")
    with pytest.raises(FileRefusedError, match="symbolic link"):
        open_checked(folder / "link.mid", root=folder, follow_links=False)
    with pytest.raises(FileRefusedError, match="outside the allowed folder"):
        open_checked(folder / "link.mid", root=folder, follow_links=True)
    # a directory link in the middle of the path: the last component is a plain file
    (folder / "sub").symlink_to(tmp_path)
    with pytest.raises(FileRefusedError, match="outside the allowed folder"):
        open_checked(folder / "sub" / "secret.mid", root=folder, follow_links=False)
    with pytest.raises(FileRefusedError, match="outside"):
        open_checked(folder / ".." / "secret.mid", root=folder)


def test_fifos_and_devices_never_block(folder: Path) -> None:
    os.mkfifo(folder / "pipe.mid")
    result: list[BaseException | None] = []

    def attempt() -> None:
        try:
            open_checked(folder / "pipe.mid", root=folder, follow_links=False)
            result.append(None)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            result.append(e)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(2.0)
    assert not thread.is_alive(), "open_checked blocked on a FIFO"
    assert isinstance(result[0], FileRefusedError) and "not a regular file" in str(result[0])
    with pytest.raises(FileRefusedError, match="not a regular file"):
        open_checked("/dev/null")
    with pytest.raises(FileRefusedError, match="not a regular file"):
        open_checked(folder)
    with pytest.raises(FileRefusedError, match="no such"):
        open_checked(folder / "missing.mid")
    with pytest.raises(FileRefusedError, match="NUL"):
        open_checked(str(folder / "a\x00b.mid"))


def test_a_file_swapped_for_a_link_never_leaks(folder: Path, tmp_path: Path) -> None:
    """A second thread swaps the file for a link out and back as fast as it can; 400 opens
    never read the outside file (they read the inside one or are refused)."""
    target = folder / "swap.mid"
    real, link = folder / "real.tmp", folder / "link.tmp"
    stop = threading.Event()

    def swapper() -> None:
        while not stop.is_set():
            real.write_bytes(b"MThd inside")
            os.replace(real, target)
            if link.is_symlink():
                link.unlink()
            link.symlink_to(tmp_path / "secret.mid")
            os.replace(link, target)

    thread = threading.Thread(target=swapper, daemon=True)
    thread.start()
    outcomes = {"inside": 0, "refused": 0}
    try:
        for i in range(400):
            try:
                with open_checked(target, root=folder, follow_links=i % 2 == 0) as f:
                    data = f.read()
            except FileRefusedError:
                outcomes["refused"] += 1
                continue
            assert b"SECRET" not in data
            outcomes["inside"] += 1
    finally:
        stop.set()
        thread.join()
    assert outcomes["refused"] > 0  # the race did happen


def test_midi_size_is_checked_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "huge.mid"
    with open(big, "wb") as f:  # 1 GB, sparse: claimed, not written
        f.write(b"MThd")
        f.truncate(1 << 30)
    start = time.perf_counter()
    with pytest.raises(TooLargeError, match="1,073,741,824 bytes, the limit is"):
        read_midi_bytes(big)
    with pytest.raises(MidiTooLargeError):
        read_midi(big)
    assert time.perf_counter() - start < 0.5
    assert issubclass(MidiTooLargeError, NotMidiError)  # corpus building skips it like others
    not_midi = tmp_path / "x.mid"
    not_midi.write_bytes(b"RIFF" + b"\0" * 100)
    with pytest.raises(NotMidiError, match="no MThd"):
        read_midi(not_midi)


def test_midi_limit_is_a_parameter(tmp_path: Path) -> None:
    from conftest import scale_melody

    path = tmp_path / "a.mid"
    write_midi(scale_melody(), path)
    size = path.stat().st_size
    assert size < MAX_MIDI_BYTES
    assert read_midi(path)[0].notes
    with pytest.raises(MidiTooLargeError, match=f"the limit is {size - 1:,}"):
        read_midi(path, max_bytes=size - 1)


def _write_sparse_wav(path: Path, data_bytes: int, rate: int = 44_100, channels: int = 2
                      ) -> None:
    """A 16-bit PCM WAV whose header claims ``data_bytes`` of samples (zeros, not written)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(b"")
    header = bytearray(path.read_bytes())
    header[4:8] = (36 + data_bytes).to_bytes(4, "little")
    header[40:44] = data_bytes.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data_bytes)


_RSS_SCRIPT = """
import resource, sys
import numpy, soundfile, soxr
from melodyvae.limits import read_audio_mono, FileRefusedError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    audio = read_audio_mono(sys.argv[1], target_rate=22050, max_seconds=float(sys.argv[2]))
    result = len(audio.samples)
except FileRefusedError as e:
    result = str(e)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
print(result)
"""


def _rss_of_reading(path: Path, max_seconds: float) -> tuple[int, str]:
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(max_seconds)],
                          capture_output=True, text=True, check=True, timeout=300)
    grown, result = done.stdout.split("\n", 1)
    return int(grown), result.strip()


def test_a_1gb_wav_is_refused_from_its_header(tmp_path: Path) -> None:
    wav = tmp_path / "huge.wav"
    _write_sparse_wav(wav, (1 << 30) - 64)
    start = time.perf_counter()
    with pytest.raises(TooLargeError, match=r"6087\.\d s of audio, the limit is 600 s"):
        read_audio_mono(wav)
    assert time.perf_counter() - start < 0.5
    grown_mb, result = _rss_of_reading(wav, 600)
    assert "limit" in result and grown_mb < 100


def test_blocked_reading_costs_the_mono_result_not_the_file(tmp_path: Path) -> None:
    """300 s of 16-bit stereo (53 MB on disk, 106 MB as float32 stereo) read to 22.05 kHz
    mono float32 (26 MB): peak growth stays near the result."""
    wav = tmp_path / "long.wav"
    _write_sparse_wav(wav, 300 * 44_100 * 4)
    grown_mb, frames = _rss_of_reading(wav, 600)
    assert int(frames) == pytest.approx(300 * 22_050, abs=64)
    assert grown_mb < 26 + 20, grown_mb


def test_blocked_reading_matches_reading_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal((100_003, 2)) * 0.1).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, audio, 44_100, subtype="FLOAT")
    got = read_audio_mono(path, block_frames=4096)
    whole = audio.mean(axis=1, dtype=np.float32)
    assert got.sample_rate == 44_100 and got.header.channels == 2
    np.testing.assert_array_equal(got.samples, whole)
    assert got.peak == pytest.approx(float(np.abs(whole).max()))

    import soxr

    down = read_audio_mono(path, target_rate=22_050, block_frames=4096)
    reference = soxr.resample(whole, 44_100, 22_050)
    assert abs(len(down.samples) - len(reference)) <= 1
    n = min(len(down.samples), len(reference))
    np.testing.assert_allclose(down.samples[:n], reference[:n], atol=1e-4)


def test_audio_headers_out_of_bounds(tmp_path: Path) -> None:
    wav = tmp_path / "mono.wav"
    _write_sparse_wav(wav, 44_100 * 2 * 20, channels=1)  # 20 s
    with pytest.raises(TooLargeError, match="20.0 s of audio, the limit is 10 s"):
        read_audio_mono(wav, max_seconds=10)
    assert len(read_audio_mono(wav, max_seconds=30).samples) == 20 * 44_100
    empty = tmp_path / "empty.wav"
    _write_sparse_wav(empty, 0)
    with pytest.raises(FileRefusedError, match="empty"):
        read_audio_mono(empty)
    text = tmp_path / "text.wav"
    text.write_text("not audio at all\n" * 20)
    with pytest.raises(FileRefusedError, match="not a readable audio file"):
        read_audio_mono(text)
    bad = tmp_path / "nan.wav"
    sf.write(bad, np.array([0.0, np.nan, 0.1], np.float32), 8000, subtype="FLOAT")
    with pytest.raises(FileRefusedError, match="NaN"):
        read_audio_mono(bad)


def test_frame_features_in_blocks_match_the_whole_signal() -> None:
    import librosa

    sr, hop = 22_050, 256
    t = np.arange(sr * 12) / sr
    pitch = 220.0 * 2 ** (np.floor(t * 2) % 5 / 12)  # a note every half second
    y = (0.3 * np.sin(2 * np.pi * np.cumsum(pitch) / sr)).astype(np.float32)

    def rms(x: np.ndarray) -> np.ndarray:
        return np.asarray(librosa.feature.rms(y=x, frame_length=1024, hop_length=hop)[0])

    whole = rms(y)
    blocked = framewise_in_blocks(y, hop, rms, block_frames=200, margin_frames=8)
    assert blocked.shape == whole.shape
    np.testing.assert_allclose(blocked, whole, rtol=1e-5, atol=1e-7)

    def f0(x: np.ndarray) -> np.ndarray:
        track, _, _ = librosa.pyin(x, fmin=65.41, fmax=2093.0, sr=sr, frame_length=1024,
                                   hop_length=hop)
        return np.asarray(track)

    whole_f0 = f0(y)
    blocked_f0 = framewise_in_blocks(y, hop, f0, block_frames=300, margin_frames=64)
    assert blocked_f0.shape == whole_f0.shape
    same = np.isclose(blocked_f0, whole_f0, rtol=0.03) | (np.isnan(blocked_f0)
                                                          & np.isnan(whole_f0))
    assert same.mean() > 0.98
