"""Input limits through the installed ``melodyvae`` program: a MIDI file larger than
``--max-midi-bytes`` or a recording longer than ``--max-audio-seconds`` is refused from its
size or header, in one line and before the model loads; the options raise the limits; and
transcribing a recording costs far less than 0.5 MB of memory per second of sound."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
from conftest import make_checkpoint, scale_melody

from melodyvae.midi import write_midi


def melodyvae_program() -> str:
    beside = Path(sys.executable).parent / "melodyvae"
    found = str(beside) if beside.is_file() else shutil.which("melodyvae")
    if found is None:
        pytest.skip("the melodyvae program is not installed")
    return found


def run_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([melodyvae_program(), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """The one line a refused input prints (exit 2, nothing on stdout, no traceback)."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("melodyvae: error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def sparse_wav(path: Path, seconds: float, rate: int = 44_100, channels: int = 2) -> Path:
    """A 16-bit WAV whose header claims ``seconds`` of silence (the samples are not
    written: the file is sparse)."""
    data_bytes = int(seconds * rate) * 2 * channels
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
    header = bytearray(path.read_bytes())
    header[4:8] = (36 + data_bytes).to_bytes(4, "little")
    header[40:44] = data_bytes.to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(header)
        f.truncate(len(header) + data_bytes)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny-hier-4bar.safetensors")


@pytest.fixture
def midi(tmp_path: Path) -> Path:
    path = tmp_path / "tune.mid"
    write_midi(scale_melody(), path)
    return path


def test_a_recording_over_the_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    out = tmp_path / "out.mid"
    huge = sparse_wav(tmp_path / "huge.wav", 6000)  # 1 GB on paper
    refused(run_cli("transcribe", huge, out), "6000.0 s of audio, the limit is 600 s; "
                                              "--max-audio-seconds raises the limit")
    twenty = sparse_wav(tmp_path / "twenty.wav", 20)
    refused(run_cli("transcribe", twenty, out, "--max-audio-seconds", 10),
            "20.0 s of audio, the limit is 10 s")
    # raised above its length, the file is read (and found to hold nothing but silence)
    refused(run_cli("transcribe", twenty, out, "--max-audio-seconds", 30),
            "silent, nothing to transcribe")
    assert not out.exists()


def test_wrong_formats_are_one_line(tmp_path: Path, midi: Path) -> None:
    text = tmp_path / "take.wav"
    text.write_text("not audio at all\n" * 20)
    refused(run_cli("transcribe", text, tmp_path / "o.mid"), "not a readable audio file")
    refused(run_cli("encode", text, "--model", tmp_path / "no-such-model"),
            "not a readable audio file")
    not_midi = tmp_path / "song.mid"
    not_midi.write_text("hello")
    refused(run_cli("render", not_midi, tmp_path / "o.wav"), "not a MIDI file")
    refused(run_cli("transcribe", midi, tmp_path / "o.mid"), "not a readable audio file")


@pytest.mark.parametrize("command", [
    ["encode", "{input}"],
    ["vary", "{input}", "--out", "{tmp}/v"],
    ["interpolate", "{input}", "{input}", "--out", "{tmp}/i"],
    ["score", "{input}"],
])
def test_commands_that_read_a_melody_check_limits_before_loading_the_model(
        command: list[str], midi: Path, tmp_path: Path) -> None:
    """The model named does not exist: the input limits are checked before it is looked for."""
    size = midi.stat().st_size
    nowhere = ["--model", str(tmp_path / "no-such-model")]
    args = [c.format(input=midi, tmp=tmp_path) for c in command]
    refused(run_cli(*args, "--max-midi-bytes", size - 1, *nowhere),
            f"{size:,} bytes, the limit is {size - 1:,}; --max-midi-bytes raises the limit")
    wav = sparse_wav(tmp_path / "take.wav", 20)
    args = [c.format(input=wav, tmp=tmp_path) for c in command]
    refused(run_cli(*args, "--max-audio-seconds", 10, *nowhere),
            "20.0 s of audio, the limit is 10 s; --max-audio-seconds raises the limit")
    # within the limits, the next thing checked is the model
    args = [c.format(input=midi, tmp=tmp_path) for c in command]
    refused(run_cli(*args, "--max-midi-bytes", "1k", *nowhere), "no-such-model")


def test_a_raised_midi_limit_reads_the_file(midi: Path, ckpt: Path) -> None:
    size = midi.stat().st_size
    result = run_cli("encode", midi, "--max-midi-bytes", size, "--model", ckpt)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 8  # the tiny model's latent size


def test_render_refuses_a_small_file_that_plays_for_hours(tmp_path: Path, midi: Path) -> None:
    pm = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(0)
    piano.notes.append(pretty_midi.Note(100, 60, 7200.0, 7201.0))  # one note, two hours in
    pm.instruments.append(piano)
    long = tmp_path / "long.mid"
    pm.write(str(long))
    assert long.stat().st_size < 200
    out = tmp_path / "o.wav"
    refused(run_cli("render", long, out, "--synth", "builtin"),
            "plays for 7201.0 s, the limit is 600 s; --max-audio-seconds raises the limit")
    assert not out.exists()
    size = midi.stat().st_size
    refused(run_cli("render", midi, out, "--max-midi-bytes", size - 1),
            "--max-midi-bytes raises the limit")
    refused(run_cli("extract", midi, tmp_path / "x.mid", "--max-midi-bytes", size - 1),
            f"the limit is {size - 1:,}")


def test_corpus_skips_larger_files_unread(tmp_path: Path) -> None:
    folder = tmp_path / "midi"
    folder.mkdir()
    write_midi(scale_melody(4), folder / "a.mid")
    write_midi(scale_melody(6), folder / "b.mid")
    write_midi(scale_melody(40), folder / "large.mid")
    limit = (folder / "b.mid").stat().st_size
    assert (folder / "large.mid").stat().st_size > limit
    result = run_cli("corpus", "--midi", folder, "--out", tmp_path / "c.npz", "--workers", 1,
                     "--max-midi-bytes", limit)
    assert result.returncode == 0, result.stderr
    assert "skipped 1: MidiTooLargeError" in result.stdout
    from melodyvae.training.corpus import Corpus

    assert sorted(Corpus.load(tmp_path / "c.npz").meta["tunes"]) == ["a.mid", "b.mid"]


def test_help_documents_the_limits() -> None:
    for command, options in (("transcribe", ["--max-audio-seconds"]),
                             ("encode", ["--max-midi-bytes", "--max-audio-seconds"]),
                             ("vary", ["--max-midi-bytes", "--max-audio-seconds"]),
                             ("render", ["--max-midi-bytes", "--max-audio-seconds"]),
                             ("extract", ["--max-midi-bytes"]),
                             ("corpus", ["--max-midi-bytes"])):
        result = run_cli(command, "--help")
        assert result.returncode == 0
        for option in options:
            assert option in result.stdout, (command, option)
    assert "default 600" in run_cli("transcribe", "--help").stdout


# ------------------------------------------------------------------ memory per second


def played_line(path: Path, seconds: float, rate: int = 44_100) -> Path:
    """``seconds`` of 8th notes up and down a scale at 120 qpm, a tone with harmonics, as
    a stereo WAV."""
    t = np.arange(int(0.25 * rate)) / rate
    notes = []
    for pitch in (60, 62, 64, 65, 67, 69, 71, 72):
        f = 440.0 * 2 ** ((pitch - 69) / 12)
        tone = sum(np.sin(2 * np.pi * k * f * t) / k for k in (1, 2, 3))
        notes.append(0.3 * tone * np.minimum(1.0, t / 0.01) * np.exp(-3.0 * t))
    mono = np.concatenate([notes[i % 8] for i in range(int(seconds / 0.25))])
    sf.write(str(path), np.stack([mono, 0.8 * mono], axis=1), rate, subtype="PCM_16")
    return path


_PEAK_RSS = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
if done.returncode:
    sys.exit(done.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(*args: object) -> float:
    """Run the program; the peak resident memory of that one process, in MB. It runs as
    the child of a small fresh Python: a child's peak counts the memory of the process it
    was forked from (here pytest's, with torch loaded)."""
    done = subprocess.run([sys.executable, "-c", _PEAK_RSS, melodyvae_program(),
                           *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return int(done.stdout) / 1024  # KB on Linux


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss is in KB on Linux")
def test_transcription_memory_grows_slowly_with_the_recording(tmp_path: Path) -> None:
    """One and three minutes of a played line through ``melodyvae transcribe`` (both longer
    than two 24 s analysis blocks, whose work memory is a fixed cost): the longer peaks at
    most 0.5 MB higher per second of sound. The blocked analysis measured 0.1-0.2 MB/s
    (25 MB more here, give or take 10 MB from run to run); pYIN over the whole signal took
    ~3 MB/s (360 MB more)."""
    short = peak_rss_mb("transcribe", played_line(tmp_path / "a.wav", 60), tmp_path / "a.mid")
    long = peak_rss_mb("transcribe", played_line(tmp_path / "b.wav", 180), tmp_path / "b.mid")
    assert long - short <= 0.5 * 120, (short, long)
