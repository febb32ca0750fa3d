"""Phrase models from the command line: train-phrase, adapt (and its bad folders), axes,
the batch commands with --model, and one OSC round trip through the real server."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_checkpoint, make_phrase_checkpoint, osc, scale_melody
from pythonosc.osc_message import OscMessage

from melodyvae.cli import main
from melodyvae.inference import MelodyVAE
from melodyvae.melody import from_tokens
from melodyvae.midi import read_midi, write_midi
from melodyvae.phrase_inference import PhraseMelodyVAE
from melodyvae.training.corpus import CORPUS_FORMAT_VERSION, Corpus

torch.set_num_threads(1)


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def tunes(n: int, bars: int, seed: int) -> list[np.ndarray]:
    """Random melodies of ``bars`` bars (tokens with notes on most quarter beats)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        row = np.zeros(bars * 16, dtype=np.int64)
        row[::4] = rng.integers(40, 60, bars * 4)
        out.append(row)
    return out


@pytest.fixture(scope="module")
def phrase_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_phrase_checkpoint(tmp_path_factory.mktemp("pm") / "tiny-phrase.safetensors")


@pytest.fixture(scope="module")
def midi_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mine")
    for i, row in enumerate(tunes(10, 20, seed=1)):
        write_midi(from_tokens(row, 16, 120.0), folder / f"tune{i}.mid")
    return folder


def test_commands_take_a_phrase_model(phrase_file: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    model = ["--model", str(phrase_file)]
    code, _, err = run(["generate", "-n", "2", "--out", str(tmp_path / "g"), "--seed", "1",
                        *model], capsys)
    assert code == 0, err
    mids = sorted((tmp_path / "g").glob("*.mid"))
    assert len(mids) == 2 and read_midi(mids[0])[0].n_bars == 16
    a, b = tmp_path / "a.mid", tmp_path / "b.mid"
    write_midi(scale_melody(16), a)
    write_midi(scale_melody(16, qpm=90).transpose(3), b)
    code, out, err = run(["encode", str(a), "--json", *model], capsys)
    assert code == 0, err
    assert len(json.loads(out)["z"]) == 8
    (tmp_path / "w.json").write_text(out)
    code, _, err = run(["decode", "--z-json", str(tmp_path / "w.json"), "--out",
                        str(tmp_path / "d.mid"), *model], capsys)
    assert code == 0, err
    assert read_midi(tmp_path / "d.mid")[0].n_bars == 16
    code, _, err = run(["interpolate", str(a), str(b), "--steps", "3", "--out",
                        str(tmp_path / "i"), *model], capsys)
    assert code == 0, err
    assert len(list((tmp_path / "i").glob("*.mid"))) == 3
    code, _, err = run(["vary", str(a), "-n", "2", "--out", str(tmp_path / "v"), *model],
                       capsys)
    assert code == 0, err


def test_axes_on_a_phrase_model(phrase_file: Path, midi_folder: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "axes.safetensors"
    code, text, err = run(["axes", str(phrase_file), str(midi_folder), "--out", str(out)],
                          capsys)
    assert code == 0, err
    vae = MelodyVAE.load(out, device="cpu")
    assert isinstance(vae, PhraseMelodyVAE)
    assert vae.latent_axes.names and len(vae.axes["pca"]["mean"]) == 8


def test_train_phrase_builds_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                     ) -> None:
    section = make_checkpoint(tmp_path / "section.safetensors")
    rows = np.stack(tunes(40, 16, seed=2)).astype(np.uint8)
    split = np.array([0] * 30 + [1] * 5 + [2] * 5, dtype=np.uint8)
    meta = {"format_version": CORPUS_FORMAT_VERSION, "bars": 16, "steps_per_bar": 16,
            "hop_bars": 2, "source": "random", "tunes": ["t"]}
    Corpus(rows, np.zeros(40, np.int32), split, meta).save(tmp_path / "c.npz")
    out, codes = tmp_path / "p.safetensors", tmp_path / "codes.npz"
    args = ["train-phrase", "--section", str(section), "--data", str(tmp_path / "c.npz"),
            "--out", str(out), "--codes", str(codes), "--steps", "20", "--w-dim", "4",
            "--hidden", "16", "--no-progress"]
    code, text, err = run(args, capsys)
    assert code == 0, err
    assert codes.is_file() and np.load(codes)["tr"].shape == (30, 4, 8)
    vae = MelodyVAE.load(out, device="cpu")
    assert isinstance(vae, PhraseMelodyVAE) and vae.z_dim == 4 + 1 and vae.bars == 16  # w, u
    assert float(vae.phrase.form_prior.sum()) == pytest.approx(1.0)
    assert vae.latent_axes.names  # axes over w come with the model
    code, _, err = run(args, capsys)  # the second run reads the cached codes
    assert code == 0, err
    code, _, err = run([*args, "--no-forms", "--out", str(tmp_path / "plain.safetensors")],
                       capsys)
    assert code == 0, err
    assert MelodyVAE.load(tmp_path / "plain.safetensors", device="cpu").z_dim == 4
    code, _, err = run([*args[:4], str(tmp_path / "none.npz"), *args[5:]], capsys)
    assert code == 2 and err.count("\n") == 1 and "no such corpus" in err


def test_adapt_writes_a_model_that_plays(phrase_file: Path, midi_folder: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mine.safetensors"
    code, text, err = run(["adapt", str(midi_folder), "--out", str(out), "--model",
                           str(phrase_file), "--steps", "30", "--no-progress"], capsys)
    assert code == 0, err
    assert "10 files" in text
    base = MelodyVAE.load(phrase_file, device="cpu")
    mine = MelodyVAE.load(out, device="cpu")
    assert isinstance(mine, PhraseMelodyVAE)
    w = base.sample_z(2, seed=0)
    assert not np.allclose(base.codes(w), mine.codes(w))  # the phrase level moved
    for a, b in zip(base.section.model.state_dict().values(),
                    mine.section.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # the section model stayed
    assert mine.info["training"]["adapted_on"]["files"] == 10


def _folder(tmp_path: Path, name: str, melodies: list) -> Path:  # type: ignore[type-arg]
    folder = tmp_path / name
    folder.mkdir()
    for i, melody in enumerate(melodies):
        write_midi(melody, folder / f"{i}.mid")
    return folder


def test_adapt_bad_folders_one_line(phrase_file: Path, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    long = from_tokens(tunes(1, 20, seed=3)[0], 16, 120.0)
    cases = {
        "empty": (_folder(tmp_path, "empty", []), "no MIDI files"),
        "one file": (_folder(tmp_path, "one", [long]), "at least 2"),
        "no melodies": (_folder(tmp_path, "short", [scale_melody(4)] * 3), "found in 0 of 3"),
        "not a folder": (tmp_path / "missing", "not a folder"),
    }
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.mid").write_bytes(b"not midi")
    (tmp_path / "junk" / "b.mid").write_bytes(b"MThd")
    cases["junk"] = (tmp_path / "junk", "found in 0 of 2")
    for name, (folder, message) in cases.items():
        code, _, err = run(["adapt", str(folder), "--out", str(tmp_path / "x.safetensors"),
                            "--model", str(phrase_file), "--no-progress"], capsys)
        assert code == 2, name
        assert err.count("\n") == 1 and message in err, (name, err)
    code, _, err = run(["adapt", str(tmp_path / "empty"), "--out", str(tmp_path / "x.safetensors"),
                        "--model", str(make_checkpoint(tmp_path / "plain.safetensors"))], capsys)
    assert code == 2 and "not a phrase model" in err


def test_osc_round_trip_through_the_server(phrase_file: Path) -> None:
    command = [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(phrase_file),
               "--port", "0", "--threads", "1", "--device", "cpu"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match, line
        assert "16 bars, latent 8" in line
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(20)
            sock.sendto(osc("/mvae/z", 0.5, -1.0, 0.25), ("127.0.0.1", int(match.group(1))))
            messages = []
            while not messages or messages[-1].address != "/mvae/melody/end":
                data, _ = sock.recvfrom(65536)
                if data.startswith(b"#bundle"):
                    from pythonosc.osc_bundle import OscBundle

                    messages += [m for m in OscBundle(data) if isinstance(m, OscMessage)]
                else:
                    messages.append(OscMessage(data))
        begin = next(m for m in messages if m.address == "/mvae/melody/begin")
        assert list(begin.params[1:3]) == [16, 16]
        starts = [m.params[3] for m in messages if m.address == "/mvae/note"]
        assert starts and max(starts) < 64  # 16 bars of 4 beats
        vae = MelodyVAE.load(phrase_file, device="cpu")
        w = np.zeros(8, np.float32)
        w[:3] = [0.5, -1.0, 0.25]
        expected = vae.decode(w)[0]
        assert len(starts) == len(expected.notes)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
