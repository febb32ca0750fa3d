"""The foundation subcommands (extract, corpus, train, evaluate) through ``main([...])`` and
through the installed ``melodyvae`` script."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import torch
from conftest import make_checkpoint, scale_melody

from melodyvae import decode
from melodyvae.checkpoint import load_checkpoint
from melodyvae.cli import main
from melodyvae.melody import Melody, Note, to_tokens
from melodyvae.midi import read_midi, write_midi
from melodyvae.model import reconstruction_nll
from melodyvae.training.corpus import Corpus


def spans(melody: Melody) -> list[tuple[int, int, int]]:
    return [(n.start, n.end, n.pitch) for n in melody.notes]


def assert_one_error_line(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("melodyvae: error:"), err
    assert "Traceback" not in err


@pytest.fixture
def bad_midi(tmp_path: Path) -> dict[str, Path]:
    """An empty MIDI file, a drums-only one and a text file named .mid."""
    empty = tmp_path / "empty.mid"
    pretty_midi.PrettyMIDI().write(str(empty))
    drums = tmp_path / "drums.mid"
    pm = pretty_midi.PrettyMIDI()
    kit = pretty_midi.Instrument(0, is_drum=True)
    kit.notes += [pretty_midi.Note(100, 36, 0.25 * i, 0.25 * i + 0.1) for i in range(16)]
    pm.instruments.append(kit)
    pm.write(str(drums))
    text = tmp_path / "text.mid"
    text.write_text("MIDI? no: just text\n")
    return {"empty": empty, "drums": drums, "text": text}


def melodyvae_script() -> str:
    beside = Path(sys.executable).parent / "melodyvae"
    found = str(beside) if beside.is_file() else shutil.which("melodyvae")
    if found is None:
        pytest.skip("the melodyvae script is not installed")
    return found


# ---------------------------------------------------------------------------- help


def test_help_lists_the_foundation_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("corpus", "train", "evaluate", "extract"):
        assert command in out


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2
    assert "usage" in capsys.readouterr().err


# ---------------------------------------------------------------------------- extract


def test_extract_returns_the_same_notes(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    melody = Melody((Note(0, 3, 60), Note(4, 8, 64), Note(8, 9, 67), Note(14, 30, 72)), 32,
                    12, 96.0, (3, 4))
    source, out = tmp_path / "in.mid", tmp_path / "out.mid"
    write_midi(melody, source)
    assert main(["extract", str(source), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 notes" in printed and "3/4" in printed
    back, info = read_midi(out)
    assert spans(back) == spans(melody)
    assert back.time_signature == (3, 4)
    assert back.qpm == pytest.approx(96.0, rel=1e-4)
    assert info.n_tracks == 1


def test_extract_takes_the_busiest_line_or_the_named_track(tmp_path: Path) -> None:
    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    bass = pretty_midi.Instrument(33)
    bass.notes += [pretty_midi.Note(90, 40, 0.5 * b, 0.5 * b + 0.5) for b in range(4)]
    lead = pretty_midi.Instrument(0)
    lead.notes += [pretty_midi.Note(90, 70 + b % 5, 0.25 * b, 0.25 * b + 0.25)
                   for b in range(8)]
    pm.instruments += [bass, lead]
    source = tmp_path / "duo.mid"
    pm.write(str(source))
    assert main(["extract", str(source), str(tmp_path / "a.mid")]) == 0
    assert {n.pitch for n in read_midi(tmp_path / "a.mid")[0].notes} == {70, 71, 72, 73, 74}
    assert main(["extract", str(source), str(tmp_path / "b.mid"), "--track", "0"]) == 0
    assert spans(read_midi(tmp_path / "b.mid")[0]) == [(4 * b, 4 * b + 4, 40) for b in range(4)]


@pytest.mark.parametrize("kind", ["empty", "drums", "text"])
def test_extract_refuses_bad_files_in_one_line(kind: str, bad_midi: dict[str, Path],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mid"
    assert main(["extract", str(bad_midi[kind]), str(out)]) == 2
    captured = capsys.readouterr()
    assert_one_error_line(captured.err)
    assert str(bad_midi[kind]) in captured.err
    assert not out.exists()


def test_extract_of_a_missing_track(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.mid"
    write_midi(scale_melody(), source)
    assert main(["extract", str(source), str(tmp_path / "o.mid"), "--track", "5"]) == 2
    assert_one_error_line(capsys.readouterr().err)


def test_extract_into_a_missing_folder(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    source = tmp_path / "in.mid"
    write_midi(scale_melody(), source)
    assert main(["extract", str(source), str(tmp_path / "no" / "such" / "o.mid")]) == 2
    assert_one_error_line(capsys.readouterr().err)


def test_installed_script(bad_midi: dict[str, Path], tmp_path: Path) -> None:
    script = melodyvae_script()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([script, "--help"], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0
    for command in ("corpus", "train", "evaluate", "extract"):
        assert command in result.stdout
    result = subprocess.run([script, "extract", str(bad_midi["text"]), str(tmp_path / "o.mid")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert_one_error_line(result.stderr)
    assert result.stdout == ""


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "melodyvae.cli", "--help"],
                            capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0
    assert "extract" in result.stdout


# ---------------------------------------------------------------------------- corpus


def test_corpus_from_a_midi_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "midi"
    folder.mkdir()
    write_midi(scale_melody(8), folder / "a.mid")
    write_midi(scale_melody(6, qpm=100.0), folder / "b.mid")
    (folder / "broken.mid").write_text("broken")
    out = tmp_path / "corpus.npz"
    code = main(["corpus", "--midi", str(folder), "--out", str(out), "--bars", "4",
                 "--workers", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out) in printed
    assert "NotMidiError" in printed
    corpus = Corpus.load(out)
    assert corpus.bars == 4
    # windows every bar of 8- and 6-bar tunes (5 + 3), but the scale goes up and down in
    # turns, so each tune has two distinct windows; repeats of a window are dropped
    assert corpus.tokens.shape == (2 + 2, 64)
    assert "exact repeats within a tune: 4" in printed
    assert sorted(corpus.meta["tunes"]) == ["a.mid", "b.mid"]
    assert corpus.meta["report"]["skipped"] == {"NotMidiError": 1}


def test_corpus_of_nothing_is_one_line(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "midi").mkdir()
    code = main(["corpus", "--midi", str(tmp_path / "midi"), "--out",
                 str(tmp_path / "c.npz"), "--workers", "1"])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------- train


def test_train_with_a_missing_data_file(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--preset", "tiny-hier-4bar", "--data", str(tmp_path / "none.npz"),
                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert_one_error_line(err)
    assert "none.npz" in err
    assert not (tmp_path / "run").exists()


def test_train_resume_without_a_run(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "midi"
    folder.mkdir()
    write_midi(scale_melody(8), folder / "a.mid")
    data = tmp_path / "c.npz"
    assert main(["corpus", "--midi", str(folder), "--out", str(data), "--workers", "1"]) == 0
    capsys.readouterr()
    code = main(["train", "--preset", "tiny-hier-4bar", "--data", str(data),
                 "--out", str(tmp_path / "run"), "--resume", "--no-progress"])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err)


def test_train_with_a_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["train", "--preset", "tiny-hier-4bar", "--data", str(tmp_path / "x.npz"),
                 "--out", str(tmp_path / "run"), "--set", "model.z_dim=eight"])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err)
    code = main(["train", "--preset", "no-such-preset", "--data", str(tmp_path / "x.npz"),
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------- evaluate

EVAL_KEYS = {"n_phrases", "teacher_forced_accuracy", "sampled_accuracy", "nll_bits_per_step",
             "kl_nats", "active_units"}


def test_evaluate_a_midi_folder_as_json(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors", "tiny-hier-4bar", seed=2)
    folder = tmp_path / "midi"
    folder.mkdir()
    melodies = [scale_melody(8), scale_melody(8).transpose(5), scale_melody(4, qpm=80.0)]
    for i, melody in enumerate(melodies):
        write_midi(melody, folder / f"{i}.mid")
    assert main(["evaluate", str(ckpt), str(folder), "--json"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert isinstance(metrics, dict)
    assert set(metrics) >= EVAL_KEYS
    assert metrics["n_phrases"] == 2 + 2 + 1  # non-overlapping 4-bar phrases

    # the numbers, recomputed from their definitions
    model = load_checkpoint(ckpt).model
    x = torch.as_tensor(np.stack([to_tokens(m.window(s, 64))[0] for m in melodies
                                  for s in range(0, m.total_steps, 64)]))
    with torch.no_grad():
        mu, logvar = model.encode(x)
        logits = model.decoder(mu, x)
        greedy = decode.sample(model, mu)
    steps = x.numel()
    assert metrics["teacher_forced_accuracy"] == pytest.approx(
        float((logits.argmax(-1) == x).sum()) / steps)
    assert metrics["sampled_accuracy"] == pytest.approx(float((greedy == x).sum()) / steps)
    assert metrics["nll_bits_per_step"] == pytest.approx(
        float(reconstruction_nll(logits, x).sum()) / steps / math.log(2), rel=1e-4)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1).mean()
    assert metrics["kl_nats"] == pytest.approx(float(kl), rel=1e-4)
    assert 0 <= metrics["active_units"] <= model.cfg.z_dim

    # batches of 2 give the same numbers as one batch
    assert main(["evaluate", str(ckpt), str(folder), "--json", "--batch-size", "2"]) == 0
    small = json.loads(capsys.readouterr().out)
    for key in EVAL_KEYS:
        assert small[key] == pytest.approx(metrics[key], rel=1e-5, abs=1e-7), key


def test_evaluate_a_corpus_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "midi"
    folder.mkdir()
    for i in range(6):
        write_midi(scale_melody(5).transpose(i), folder / f"{i}.mid")
    data = tmp_path / "corpus.npz"
    assert main(["corpus", "--midi", str(folder), "--out", str(data), "--workers", "1"]) == 0
    capsys.readouterr()
    corpus = Corpus.load(data)
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors", "tiny-hier-4bar")
    assert main(["evaluate", str(ckpt), str(data), "--json", "--split", "train"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_phrases"] == len(corpus.subset("train"))
    # a model of another phrase length refuses the corpus in one line
    ckpt16 = make_checkpoint(tmp_path / "tiny16.safetensors", "tiny-hier-16bar")
    assert main(["evaluate", str(ckpt16), str(data), "--split", "train"]) == 2
    assert_one_error_line(capsys.readouterr().err)


def test_evaluate_errors_are_one_line(tmp_path: Path, tiny_checkpoint: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tiny_checkpoint), str(tmp_path / "nothing")]) == 2
    assert_one_error_line(capsys.readouterr().err)
    broken = tmp_path / "broken.safetensors"
    broken.write_text("not a checkpoint")
    (tmp_path / "midi").mkdir()
    write_midi(scale_melody(4), tmp_path / "midi" / "a.mid")
    assert main(["evaluate", str(broken), str(tmp_path / "midi")]) == 2
    assert_one_error_line(capsys.readouterr().err)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", str(tiny_checkpoint), str(empty)]) == 2
    assert_one_error_line(capsys.readouterr().err)
    assert main(["evaluate", "no-such-model", str(tmp_path / "midi")]) == 2
    assert_one_error_line(capsys.readouterr().err)
