"""What a user meets first on the command line: devices this machine lacks, output folders
already in use, argument checks that agree with each other, and words on what was left out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_checkpoint, scale_melody

from melodyvae.cli import main
from melodyvae.midi import write_midi


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model") / "tiny-hier-4bar.safetensors")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 4-bar and a 10-bar MIDI file, a latent vector and a corpus."""
    folder = tmp_path_factory.mktemp("inputs")
    short, long = folder / "short.mid", folder / "long.mid"
    write_midi(scale_melody(4), short)
    write_midi(scale_melody(10), long)
    z = folder / "z.json"
    z.write_text("[" + ", ".join(["0.1"] * 8) + "]")
    corpus = folder / "corpus.npz"
    assert main(["corpus", "--midi", str(folder), "--out", str(corpus), "--workers", "1"]) == 0
    return {"short": short, "long": long, "z": z, "corpus": corpus}


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("melodyvae: error: "), err
    assert "Traceback" not in err
    return lines[0]


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ devices


def _missing_device() -> str:
    """A device name torch knows that this machine does not have."""
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        return "mps"
    assert not torch.cuda.is_available(), "a machine with both CUDA and MPS"
    return "cuda"


DEVICE_COMMANDS = {
    "generate": ["generate", "-n", "1", "--out", "{tmp}/g", "--model", "{ckpt}"],
    "interpolate": ["interpolate", "{short}", "{long}", "--out", "{tmp}/i", "--model",
                    "{ckpt}"],
    "vary": ["vary", "{short}", "--out", "{tmp}/v", "--model", "{ckpt}"],
    "encode": ["encode", "{short}", "--model", "{ckpt}"],
    "decode": ["decode", "--z-json", "{z}", "--out", "{tmp}/d.mid", "--model", "{ckpt}"],
    "score": ["score", "{short}", "--model", "{ckpt}"],
    "evaluate": ["evaluate", "{ckpt}", "{corpus}", "--split", "train"],
    "axes": ["axes", "{ckpt}", "{corpus}", "--out", "{tmp}/axes.safetensors"],
    "train": ["train", "--preset", "tiny-hier-4bar", "--data", "{corpus}", "--out",
              "{tmp}/run", "--no-progress", "--max-steps", "1"],
    "serve": ["serve", "--model", "{ckpt}", "--port", "0"],
}


@pytest.mark.parametrize("device", [_missing_device(), "abacus"])
@pytest.mark.parametrize("command", sorted(DEVICE_COMMANDS))
def test_a_device_this_machine_lacks_is_one_line(command: str, device: str, ckpt: Path,
                                                 files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(tmp=tmp_path, ckpt=ckpt, **files) for a in DEVICE_COMMANDS[command]]
    code, out, err = run([*args, "--device", device], capsys)
    assert code == 2, err
    assert device in one_error_line(err)
    assert not (tmp_path / "run").exists()  # train stopped before it made its run folder


def test_a_missing_device_in_a_real_process(files: dict[str, Path], tmp_path: Path) -> None:
    device = _missing_device()
    proc = subprocess.run(
        [sys.executable, "-m", "melodyvae.cli", "train", "--preset", "tiny-hier-4bar",
         "--data", str(files["corpus"]), "--out", str(tmp_path / "run"), "--no-progress",
         "--device", device], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert device in one_error_line(proc.stderr)


def test_devices_torch_knows_but_melodyvae_does_not_run_on_are_refused() -> None:
    from melodyvae.inference import DeviceError, pick_device

    for name in ("meta", "cuda:99" if torch.cuda.is_available() else "cuda"):
        with pytest.raises(DeviceError, match=name):
            pick_device(name)


# ------------------------------------------------------------------ --model


@pytest.mark.parametrize("kind", ["midi", "text", "empty", "truncated"])
def test_a_model_that_is_not_a_checkpoint_is_said_once(kind: str, ckpt: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    fake = tmp_path / "fake.mid"
    if kind == "midi":
        write_midi(scale_melody(4), fake)
    elif kind == "text":
        fake.write_text("not a model\n" * 20)
    elif kind == "empty":
        fake.write_bytes(b"")
    else:
        fake.write_bytes(ckpt.read_bytes()[:200])
    code, _, err = run(["generate", "-n", "1", "--out", str(tmp_path / "g"), "--model",
                        str(fake)], capsys)
    assert code == 2
    line = one_error_line(err)
    assert line.count("fake.mid") == 1, line
    assert line.count("safetensors") <= 1, line
    assert "checkpoint" in line


# ------------------------------------------------------------------ interpolate --steps


def test_interpolate_steps_has_one_check_and_one_message(ckpt: Path, files: dict[str, Path],
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    messages = []
    for steps in ("-3", "0", "1"):
        with pytest.raises(SystemExit) as exit_info:
            main(["interpolate", str(files["short"]), str(files["long"]), "--steps", steps,
                  "--out", str(tmp_path / "i"), "--model", str(ckpt)])
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]
        messages.append(last.replace(steps, "K"))
    assert messages[0] == messages[1] == messages[2], messages
    assert messages[0] == "melodyvae interpolate: error: argument --steps: K must be at least 2"
    assert not (tmp_path / "i").exists()
    code, _, err = run(["interpolate", str(files["short"]), str(files["long"]), "--steps", "2",
                        "--out", str(tmp_path / "i"), "--model", str(ckpt)], capsys)
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "i").iterdir()) == ["interp_000.mid",
                                                                   "interp_001.mid"]


# ------------------------------------------------------------------ output folders in use


def _listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_generate_into_a_used_folder_refuses_then_replaces_the_earlier_set(
        ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "batch"
    base = ["generate", "--out", str(out), "--model", str(ckpt), "--quiet"]
    code, _, err = run([*base, "-n", "3", "--seed", "1", "--temperature", "1", "--wav",
                        "--synth", "builtin", "--png"], capsys)
    assert code == 0, err
    (out / "notes.txt").write_text("mine\n")
    (out / "melody_best.mid").write_bytes(b"kept: not a numbered file of a set")
    before = _listing(out)
    assert len(before) == 11  # 3 x (MIDI, WAV, PNG) and the two files of the user's own

    # a second run refuses before it loads anything, and touches nothing
    code, out_text, err = run([*base, "-n", "2", "--seed", "2"], capsys)
    assert code == 2 and out_text == ""
    line = one_error_line(err)
    assert "9 files" in line and "melody_" in line and "--force" in line
    assert _listing(out) == before

    # --force replaces the whole earlier set, previews included, and says so
    code, out_text, err = run([*base, "-n", "2", "--seed", "2", "--temperature", "1",
                               "--force"], capsys)
    assert code == 0, err
    assert "removed 9 files of an earlier set" in out_text
    after = _listing(out)
    assert sorted(after) == ["melody_000.mid", "melody_001.mid", "melody_best.mid",
                             "notes.txt"]
    assert after["melody_000.mid"] != before["melody_000.mid"]
    assert after["notes.txt"] == before["notes.txt"]

    # another prefix writes beside them without --force
    code, out_text, err = run([*base, "-n", "1", "--prefix", "take2_"], capsys)
    assert code == 0, err
    assert "removed" not in out_text
    assert (out / "take2_000.mid").is_file() and len(_listing(out)) == 5


@pytest.mark.parametrize("command", [
    ["vary", "{short}", "-n", "2", "--out", "{out}"],
    ["interpolate", "{short}", "{long}", "--steps", "2", "--out", "{out}"],
])
def test_vary_and_interpolate_keep_the_same_rule(command: list[str], ckpt: Path,
                                                 files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    args = [a.format(out=tmp_path / "o", **files) for a in command] + ["--model", str(ckpt)]
    code, _, err = run(args, capsys)
    assert code == 0, err
    code, _, err = run(args, capsys)
    assert code == 2 and "--force" in one_error_line(err)
    code, out, err = run([*args, "--force"], capsys)
    assert code == 0, err
    assert "removed 2 files of an earlier set" in out


def test_a_prefix_names_files_not_folders(ckpt: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["generate", "-n", "1", "--out", str(tmp_path / "o"), "--prefix",
                        "sub/x_", "--model", str(ckpt)], capsys)
    assert code == 2 and "--prefix" in one_error_line(err)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------ what was left out


def test_encode_says_how_many_bars_it_left_out(ckpt: Path, files: dict[str, Path],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["encode", str(files["long"]), "--model", str(ckpt)], capsys)
    assert code == 0, err
    assert len(out.splitlines()) == 1 and len(out.split()) == 8  # stdout stays the numbers
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("melodyvae: note: long.mid"), err
    assert "bars 1-4 of 10" in lines[0] and "6 bars" in lines[0] and "48 notes" in lines[0]

    code, out, err = run(["encode", str(files["long"]), "--json", "--model", str(ckpt)],
                         capsys)
    assert code == 0 and "6 bars" in err
    assert json.loads(out)["input_bars"] == 10

    code, out, err = run(["encode", str(files["long"]), "--out", str(tmp_path / "z.json"),
                          "--model", str(ckpt)], capsys)
    assert code == 0 and err == ""  # said once, in the one line of the result
    assert "6 bars" in out and "48 notes" in out

    code, out, err = run(["encode", str(files["short"]), "--model", str(ckpt)], capsys)
    assert code == 0 and err == ""  # nothing left out, nothing said


def test_interpolate_says_when_an_input_was_cut(ckpt: Path, files: dict[str, Path],
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["interpolate", str(files["short"]), str(files["long"]), "--steps",
                          "2", "--out", str(tmp_path / "i"), "--model", str(ckpt)], capsys)
    assert code == 0, err
    assert "long.mid: used its first 4 of 10 bars" in out and "6 bars" in out
    assert "short.mid" not in out.split("latent space")[1]  # a 4-bar input needs no word


# ------------------------------------------------------------------ what the help promises


def _help(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse's line breaks undone


def test_the_help_says_which_commands_take_a_model_and_a_device(
        capsys: pytest.CaptureFixture[str]) -> None:
    from melodyvae.cli import build_parser

    commands = list(build_parser()._subparsers._group_actions[0].choices)
    phrase_level = ["train-phrase", "adapt"]  # CPU fits with a sentence of their own
    with_model = [c for c in commands if "--model" in _help([c], capsys)
                  and c not in phrase_level]
    with_device = [c for c in commands if "--device" in _help([c], capsys)]
    assert "--section" in _help(["train-phrase"], capsys)
    assert "--model" in _help(["adapt"], capsys)
    top = _help([], capsys)
    model_words = ", ".join(with_model[:-1]) + f" and {with_model[-1]}"
    assert f"{model_words} run a model: each takes --model NAME|FILE" in top, top
    others = [c for c in with_device if c not in with_model]
    assert others == ["train", "evaluate", "axes"]
    assert "train, evaluate and axes take --device too" in top, top
    without = [c for c in commands if c not in with_device and c not in phrase_level]
    assert "train-phrase and adapt fit a phrase level on the CPU" in top, top
    assert without == ["extract", "corpus", "models", "render", "transcribe", "midi"]
    assert "extract, corpus, models, render, transcribe and midi use no model" in top, top
