"""The batch commands: generate, interpolate, vary, encode, decode, score.

They run through ``melodyvae.cli.main`` on a tiny random-weight checkpoint; one error case
goes through a real ``melodyvae`` process.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import mido
import numpy as np
import pretty_midi
import pytest
import torch
from conftest import make_checkpoint, scale_melody

from melodyvae.cli import main
from melodyvae.midi import read_midi, write_midi

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny-hier-4bar.safetensors")


@pytest.fixture(scope="module")
def midi_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("midi")
    a, b = folder / "scale.mid", folder / "long.mid"
    write_midi(scale_melody(4), a)
    write_midi(scale_melody(8, qpm=100).transpose(5), b)
    return a, b


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def notes_of(path: Path) -> list[tuple[int, int, int]]:
    melody, _ = read_midi(path)
    return [(n.start, n.end, n.pitch) for n in melody.notes]


def assert_monophonic_midi(path: Path) -> None:
    pm = pretty_midi.PrettyMIDI(str(path))
    assert len(pm.instruments) == 1
    notes = sorted(pm.instruments[0].notes, key=lambda n: n.start)
    assert notes, f"{path} has no notes"
    for before, after in zip(notes, notes[1:], strict=False):
        assert after.start >= before.end - 1e-6, f"{path}: overlapping notes"
    sounding = 0
    for msg in mido.MidiFile(str(path)):
        if msg.type == "note_on" and msg.velocity > 0:
            sounding += 1
        elif msg.type == "note_off" or (msg.type == "note_on" and msg.velocity == 0):
            sounding -= 1
        assert sounding <= 1, f"{path}: two notes at once in mido's reading"
    assert sounding == 0


# ------------------------------------------------------------------ generate


def test_generate_writes_readable_monophonic_midi(ckpt: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["generate", "-n", "5", "--out", str(tmp_path / "g"), "--model",
                          str(ckpt), "--seed", "7", "--temperature", "1", "--batch-size", "2",
                          "--png"], capsys)
    assert code == 0, err
    assert out.count("\n") == 1 and "5 MIDI files" in out and "seed 7" in out
    files = sorted((tmp_path / "g").glob("*.mid"))
    assert [f.name for f in files] == [f"melody_{i:03d}.mid" for i in range(5)]
    for f in files:
        assert_monophonic_midi(f)
        assert f.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert len({f.read_bytes() for f in files}) > 1  # different melodies


def test_generate_same_seed_same_bytes(ckpt: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    def generate(folder: str, seed: str) -> list[bytes]:
        code, _, err = run(["generate", "-n", "6", "--out", str(tmp_path / folder), "--model",
                            str(ckpt), "--seed", seed, "--temperature", "1.0", "--batch-size",
                            "4", "--wav", "--synth", "builtin"], capsys)
        assert code == 0, err
        return [p.read_bytes() for p in sorted((tmp_path / folder).iterdir())]

    first, again, other = generate("a", "11"), generate("b", "11"), generate("c", "12")
    assert len(first) == 12  # 6 MIDI + 6 WAV
    assert first == again
    assert first != other


def test_batched_decode_equals_one_by_one(ckpt: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # At temperature 0 nothing is sampled, so the batch size cannot change the notes.
    for folder, batch in (("big", "8"), ("single", "1")):
        code, _, err = run(["generate", "-n", "5", "--out", str(tmp_path / folder), "--model",
                            str(ckpt), "--seed", "3", "--temperature", "0", "--batch-size",
                            batch], capsys)
        assert code == 0, err
    for f in sorted((tmp_path / "big").glob("*.mid")):
        assert notes_of(f) == notes_of(tmp_path / "single" / f.name)


# ------------------------------------------------------------ encode, decode, vary, interpolate


def test_encode_json_decodes_to_the_reconstruction(ckpt: Path, midi_files: tuple[Path, Path],
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a, _ = midi_files
    code, out, err = run(["encode", str(a), "--json", "--model", str(ckpt)], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["model"] == "tiny-hier-4bar" and len(doc["z"]) == 8
    (tmp_path / "z.json").write_text(out)
    (tmp_path / "bare.json").write_text(json.dumps(doc["z"]))
    for name in ("z.json", "bare.json"):
        code, out, err = run(["decode", "--z-json", str(tmp_path / name), "--out",
                              str(tmp_path / f"{name}.mid"), "--model", str(ckpt)], capsys)
        assert code == 0, err
    assert notes_of(tmp_path / "z.json.mid") == notes_of(tmp_path / "bare.json.mid")

    # interpolation and vary --amount 0 start from the same point: the input's mean
    code, _, err = run(["interpolate", str(a), str(midi_files[1]), "--steps", "3", "--out",
                        str(tmp_path / "i"), "--model", str(ckpt), "--qpm", "120"], capsys)
    assert code == 0, err
    assert notes_of(tmp_path / "i" / "interp_000.mid") == notes_of(tmp_path / "z.json.mid")
    code, _, err = run(["vary", str(a), "-n", "2", "--amount", "0", "--out",
                        str(tmp_path / "v"), "--model", str(ckpt)], capsys)
    assert code == 0, err
    assert notes_of(tmp_path / "v" / "var_001.mid") == notes_of(tmp_path / "z.json.mid")

    # plain encode prints the same numbers
    code, out, err = run(["encode", str(a), "--model", str(ckpt)], capsys)
    assert code == 0, err
    assert np.allclose([float(v) for v in out.split()], doc["z"], atol=1e-5)


def test_interpolate_lerp_and_slerp_share_the_ends(ckpt: Path, midi_files: tuple[Path, Path],
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    a, b = midi_files
    for folder, extra in (("s", []), ("l", ["--lerp"])):
        code, out, err = run(["interpolate", str(a), str(b), "--steps", "4", "--out",
                              str(tmp_path / folder), "--model", str(ckpt), *extra], capsys)
        assert code == 0, err
        assert "4 MIDI files" in out
    for end in ("interp_000.mid", "interp_003.mid"):
        assert notes_of(tmp_path / "s" / end) == notes_of(tmp_path / "l" / end)
    assert read_midi(tmp_path / "s" / "interp_001.mid")[0].qpm == pytest.approx(120.0)


def test_vary_is_seeded_and_spreads(ckpt: Path, midi_files: tuple[Path, Path], tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    a, b = midi_files
    for folder in ("x", "y"):
        code, out, err = run(["vary", str(b), "-n", "4", "--amount", "3", "--seed", "5",
                              "--out", str(tmp_path / folder), "--model", str(ckpt)], capsys)
        assert code == 0, err
    assert "first 4 of 8 bars" in out  # a long input: its first phrase
    xs = [p.read_bytes() for p in sorted((tmp_path / "x").glob("*.mid"))]
    assert xs == [p.read_bytes() for p in sorted((tmp_path / "y").glob("*.mid"))]
    assert len(set(xs)) > 1


# ------------------------------------------------------------------ score


def test_score_bits_and_percentile(tmp_path: Path, midi_files: tuple[Path, Path],
                                   capsys: pytest.CaptureFixture[str]) -> None:
    a, b = midi_files
    plain = make_checkpoint(tmp_path / "plain.safetensors")
    code, out, err = run(["score", str(a), str(b), "--json", "--model", str(plain)], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["heldout_phrases"] is None
    rows = doc["phrases"]
    assert [(r["file"], r["bars"]) for r in rows] == [(str(a), [1, 4]), (str(b), [1, 4]),
                                                      (str(b), [5, 8])]
    assert all(r["percentile"] is None and r["bits"] > 0 for r in rows)
    # a random-weight decoder spreads about log2(90) bits over each of the 64 steps
    assert 64 * math.log2(90) * 0.5 < rows[0]["bits"] < 64 * math.log2(90) * 2

    bits = rows[0]["bits"]
    heldout = sorted([bits - 50, bits - 10, bits + 10, bits + 20])
    ref = make_checkpoint(tmp_path / "ref.safetensors",
                          extra={"novelty": {"heldout_bits": heldout}})
    code, out, err = run(["score", str(a), "--json", "--model", str(ref)], capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["heldout_phrases"] == 4
    assert doc["phrases"][0]["percentile"] == pytest.approx(50.0)
    code, out, err = run(["score", str(a), "--model", str(ref)], capsys)
    assert code == 0, err
    assert "50.0" in out and "held-out" in out
    code, out, err = run(["score", str(a), "--model", str(plain)], capsys)
    assert "n/a" in out and "percentile unavailable" in out


# ------------------------------------------------------------------ errors


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("melodyvae: error: ")
    return lines[0]


@pytest.mark.parametrize("command", [
    ["encode", "{missing}"],
    ["vary", "{missing}", "--out", "{tmp}/v"],
    ["interpolate", "{missing}", "{missing}", "--out", "{tmp}/i"],
    ["score", "{missing}"],
    ["decode", "--z-json", "{missing}", "--out", "{tmp}/d.mid"],
])
def test_missing_input_is_one_line(command: list[str], ckpt: Path, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    args = [c.format(missing=tmp_path / "nowhere.mid", tmp=tmp_path) for c in command]
    code, out, err = run([*args, "--model", str(ckpt)], capsys)
    assert code == 2
    assert "nowhere.mid: no such file" in one_error_line(err)


def test_bad_inputs_are_one_line(ckpt: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    text = tmp_path / "notes.mid"
    text.write_text("this is not MIDI\n")
    code, _, err = run(["encode", str(text), "--model", str(ckpt)], capsys)
    assert code == 2 and "not a MIDI file" in one_error_line(err)

    code, _, err = run(["generate", "-n", "1", "--out", str(tmp_path / "g"), "--model",
                        str(tmp_path / "no-such-model")], capsys)
    assert code == 2 and "no-such-model" in one_error_line(err)

    for content, words in (("{not json", "not JSON"), ('{"z": "abc"}', "list of numbers"),
                           ("[1, 2, 3]", "takes 8")):
        bad = tmp_path / "z.json"
        bad.write_text(content)
        code, _, err = run(["decode", "--z-json", str(bad), "--out", str(tmp_path / "d.mid"),
                            "--model", str(ckpt)], capsys)
        assert code == 2 and words in one_error_line(err)


def test_real_process_reports_one_line(tmp_path: Path, ckpt: Path) -> None:
    text = tmp_path / "tune.mid"
    text.write_bytes(b"RIFF....WAVEnot really")
    exe = shutil.which("melodyvae")
    cmd = [exe] if exe else [sys.executable, "-m", "melodyvae.cli"]
    proc = subprocess.run([*cmd, "score", str(text), "--model", str(ckpt)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stdout == ""
    line = one_error_line(proc.stderr)
    assert "tune.mid" in line


def test_help_speaks_plainly(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("generate", "interpolate", "vary", "encode", "decode", "score", "render",
                    "transcribe"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "usage: melodyvae " + command in out
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for command in ("generate", "vary", "transcribe", "render", "score"):
        assert command in top
