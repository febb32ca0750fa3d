"""Audio out and in: render with FluidSynth and the built-in synth, transcribe back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import make_checkpoint, scale_melody

from melodyvae import audio, render, transcribe
from melodyvae.cli import main
from melodyvae.melody import Melody, Note
from melodyvae.midi import read_midi, write_midi

torch.set_num_threads(1)

HAVE_FLUIDSYNTH = audio.fluidsynth_path() is not None and audio.find_soundfont() is not None
SYNTHS = [
    pytest.param("fluidsynth", marks=pytest.mark.skipif(
        not HAVE_FLUIDSYNTH, reason="fluidsynth or a General MIDI soundfont not installed")),
    "builtin",
]


def leaping_melody() -> Melody:
    """Four bars with 16ths, rests, repeated notes and leaps of up to two octaves."""
    rng = np.random.default_rng(2)
    notes, t = [], 0
    while t < 64:
        length = int(rng.choice([1, 2, 2, 4, 4, 8]))
        if rng.random() < 0.85 or not notes:
            notes.append(Note(t, min(64, t + length), int(rng.integers(55, 84))))
        t += length
    return Melody(tuple(notes), 64, 16, 110.0)


def matched(reference: Melody, got: Melody) -> float:
    """Share of reference notes found with the exact pitch and an onset within one 16th
    (the transcription starts at the first note, so the reference is counted from it)."""
    offset = reference.notes[0].start
    free = list(got.notes)
    hits = 0
    for note in reference.notes:
        for candidate in free:
            if candidate.pitch == note.pitch and abs(candidate.start - (note.start - offset)) <= 1:
                free.remove(candidate)
                hits += 1
                break
    return hits / len(reference.notes)


@pytest.mark.parametrize("synth", SYNTHS)
@pytest.mark.parametrize("melody", [scale_melody(), leaping_melody()], ids=["scale", "leaps"])
def test_round_trip(synth: str, melody: Melody, tmp_path: Path) -> None:
    wav = tmp_path / "take.wav"
    result = audio.render_melody(melody, wav, synth=synth)
    assert result.synth == synth
    assert result.sample_rate == 44_100 and result.seconds > 7
    got = audio.transcribe(wav, qpm=melody.qpm)
    assert matched(melody, got) >= 0.9
    assert got.qpm == melody.qpm and got.steps_per_bar == 16


def test_tempo_is_estimated(tmp_path: Path) -> None:
    melody = scale_melody(qpm=96)
    wav = tmp_path / "scale.wav"
    audio.render_melody(melody, wav, synth="builtin")
    result = audio.transcribe_file(wav)
    assert result.tempo_estimated
    assert result.qpm == pytest.approx(96, rel=0.04)
    assert matched(melody, result.melody) >= 0.9


@pytest.mark.parametrize(("rate", "channels"), [(48_000, 2), (16_000, 1), (8_000, 1)])
def test_any_rate_mono_or_stereo(rate: int, channels: int, tmp_path: Path) -> None:
    melody = scale_melody(2)
    notes = [(n.start * melody.seconds_per_step, n.end * melody.seconds_per_step, n.pitch, 100)
             for n in melody.notes]
    mono = audio.synthesize(notes, rate)
    data = np.stack([mono, 0.5 * mono], axis=1) if channels == 2 else mono
    wav = tmp_path / "take.wav"
    sf.write(str(wav), 0.5 * data / np.abs(data).max(), rate)
    result = audio.transcribe_file(wav, qpm=120)
    assert (result.sample_rate, result.channels) == (rate, channels)
    assert matched(melody, result.melody) >= 0.9


def test_builtin_synth_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    audio.render_melody(scale_melody(1), a, synth="builtin")
    audio.render_melody(scale_melody(1), b, synth="builtin")
    assert a.read_bytes() == b.read_bytes()
    data, rate = sf.read(str(a))
    assert rate == 44_100 and data.ndim == 1
    assert np.abs(data).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)  # -1 dBFS


# ------------------------------------------------------------------ through the command line


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("melodyvae: error: ")
    return lines[0]


def test_render_then_transcribe_commands(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    melody = scale_melody()
    mid, wav, back = tmp_path / "in.mid", tmp_path / "out.wav", tmp_path / "back.mid"
    write_midi(melody, mid)
    assert main(["render", str(mid), str(wav)]) == 0
    out = capsys.readouterr().out
    expected = "FluidSynth with" if HAVE_FLUIDSYNTH else "the built-in synth"
    assert out.count("\n") == 1 and expected in out
    assert main(["transcribe", str(wav), str(back), "--qpm", "120", "--png"]) == 0
    out = capsys.readouterr().out
    assert "notes" in out and "120.0 qpm (given)" in out
    got, _ = read_midi(back)
    assert matched(melody, got) >= 0.9
    assert back.with_suffix(".png").is_file()


def test_fallback_to_builtin_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(render, "fluidsynth_path", lambda: None)
    mid = tmp_path / "in.mid"
    write_midi(scale_melody(1), mid)
    assert main(["render", str(mid), str(tmp_path / "o.wav")]) == 0
    assert "the built-in synth" in capsys.readouterr().out
    code = main(["render", str(mid), str(tmp_path / "o.wav"), "--synth", "fluidsynth"])
    assert code == 2
    assert "fluidsynth" in one_error_line(capsys.readouterr().err)


def test_vary_and_encode_take_a_recording(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    wav = tmp_path / "hum.wav"
    audio.render_melody(scale_melody(), wav, synth="builtin")
    assert main(["vary", str(wav), "-n", "2", "--out", str(tmp_path / "v"), "--model",
                 str(ckpt), "--qpm", "120"]) == 0
    out = capsys.readouterr().out
    assert "transcribed 32 notes at 120.0 qpm" in out
    assert len(list((tmp_path / "v").glob("*.mid"))) == 2
    assert main(["encode", str(wav), "--json", "--model", str(ckpt), "--qpm", "120"]) == 0
    assert '"z": [' in capsys.readouterr().out


def test_bad_audio_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    silent = tmp_path / "silent.wav"
    sf.write(str(silent), np.zeros(44_100, dtype=np.float32), 44_100)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage" + bytes(64))
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.float32), 44_100)
    out_mid = str(tmp_path / "o.mid")
    cases = [(silent, "silent"), (corrupt, "not a readable audio file"), (empty, "empty"),
             (tmp_path / "missing.wav", "no such file")]
    for path, words in cases:
        assert main(["transcribe", str(path), out_mid]) == 2
        assert words in one_error_line(capsys.readouterr().err)
    with pytest.raises(audio.SilentAudioError):
        audio.transcribe(silent)

    not_midi = tmp_path / "song.mid"
    not_midi.write_text("hello")
    assert main(["render", str(not_midi), str(tmp_path / "o.wav")]) == 2
    assert "not a MIDI file" in one_error_line(capsys.readouterr().err)
    assert main(["render", str(tmp_path / "gone.mid"), str(tmp_path / "o.wav")]) == 2
    assert "no such file" in one_error_line(capsys.readouterr().err)
    assert main(["render", str(not_midi), str(tmp_path / "o.wav"), "--soundfont",
                 str(tmp_path / "none.sf2")]) == 2
    one_error_line(capsys.readouterr().err)


def test_segmentation_helpers() -> None:
    seg = transcribe._Segment
    # a 2-frame glide into a note goes to that note; equal neighbours merge
    runs = transcribe._runs(np.array([60, 60, 60, 60, 60, 61, 62, 62, 62, 62, 62, -1]))
    assert transcribe._absorb_blips(runs, 3) == [seg(0, 5, 60), seg(5, 11, 62),
                                                 seg(11, 12, -1)]
    # a short run an octave below the next note is that note's attack
    runs = [seg(0, 10, 60), seg(10, 12, 55), seg(12, 30, 67)]
    assert transcribe._absorb_octave_errors(runs, 5) == [seg(0, 10, 60), seg(10, 30, 67)]
    assert transcribe.fold_tempo(240.0) == 120.0 and transcribe.fold_tempo(45.0) == 90.0
