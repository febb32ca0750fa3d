"""Training end to end at tiny size: a run, its files, --resume, refusals, and a 2-process
DDP run on CPU (gloo) under torch.distributed.run."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import random_tokens
from safetensors import safe_open

from melodyvae.checkpoint import load_checkpoint
from melodyvae.model import VAE
from melodyvae.presets import get_preset, with_overrides
from melodyvae.training.corpus import CORPUS_FORMAT_VERSION, Corpus
from melodyvae.training.train import (
    CURVES_FILE,
    METRICS_FILE,
    MODEL_FILE,
    STATE_FILE,
    RunOptions,
    TrainingError,
    learning_rate,
    train,
    warm_start,
)

PRESET = "tiny-hier-4bar"


def write_corpus(path: Path, bars: int = 4, n: int = 48, seed: int = 0) -> Path:
    tokens = random_tokens(n, bars * 16, seed=seed).astype(np.uint8)
    split = np.zeros(n, dtype=np.uint8)
    split[-8:-3] = 1  # valid
    split[-3:] = 2  # test
    meta = {"format_version": CORPUS_FORMAT_VERSION, "bars": bars, "steps_per_bar": 16,
            "hop_bars": 1, "source": "random_tokens", "tunes": [f"t{i}" for i in range(n)]}
    Corpus(tokens, np.arange(n, dtype=np.int32), split, meta).save(path)
    return path


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus.npz")


def options(out: Path, data: Path, **kw) -> RunOptions:  # type: ignore[no-untyped-def]
    base = dict(out=out, data=data, device="cpu", threads=1, max_steps=30,
                checkpoint_every=10, eval_every=10, log_every=5, eval_phrases=16,
                progress=False)
    base.update(kw)
    return RunOptions(**base)  # type: ignore[arg-type]


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()
            if line.strip()]


def adam_steps(state_path: Path) -> set[float]:
    with safe_open(str(state_path), framework="pt") as f:
        names = [k for k in f.keys() if k.endswith(".step")]  # noqa: SIM118
        return {float(f.get_tensor(k)) for k in names}


def test_train_resume_and_refuse(tmp_path: Path, corpus_file: Path) -> None:
    preset = get_preset(PRESET)
    run = tmp_path / "run"
    handler = signal.getsignal(signal.SIGTERM)
    model_path = train(preset, options(run, corpus_file))
    assert model_path == run / MODEL_FILE
    assert signal.getsignal(signal.SIGTERM) == handler  # restored after the run
    for name in (MODEL_FILE, STATE_FILE, METRICS_FILE, CURVES_FILE):
        assert (run / name).is_file(), name
    assert (run / CURVES_FILE).read_bytes().startswith(b"\x89PNG")
    rows = read_metrics(run)
    train_rows = [r for r in rows if r["kind"] == "train"]
    valid_rows = [r for r in rows if r["kind"] == "valid"]
    assert [r["step"] for r in train_rows] == [1, 5, 10, 15, 20, 25, 30]
    assert [r["step"] for r in valid_rows] == [10, 20, 30]
    for r in train_rows:
        assert np.isfinite([r["loss"], r["nll_bits_per_step"], r["kl_nats"]]).all()
        assert r["lr"] == pytest.approx(learning_rate(r["step"] - 1, preset.train))
    for r in valid_rows:
        assert 0.0 <= r["teacher_forced_accuracy"] <= 1.0
        assert 0.0 <= r["sampled_accuracy"] <= 1.0
        assert r["n_phrases"] == 5
    ckpt = load_checkpoint(model_path)
    assert ckpt.preset.model == preset.model
    assert ckpt.info["training"]["step"] == 30
    assert ckpt.info["data"]["phrases"] == {"train": 40, "valid": 5, "test": 3}
    assert adam_steps(run / STATE_FILE) == {30.0}
    weights_30 = {k: v.clone() for k, v in ckpt.model.state_dict().items()}

    # the same folder again, without --resume: refused, nothing overwritten
    with pytest.raises(TrainingError, match="resume"):
        train(preset, options(run, corpus_file, max_steps=40))
    assert len(read_metrics(run)) == len(rows)

    # --resume continues from step 30 with the optimizer state
    train(preset, options(run, corpus_file, max_steps=40, resume=True))
    rows = read_metrics(run)
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == [1, 5, 10, 15, 20, 25, 30, 35, 40]
    assert [r["step"] for r in rows if r["kind"] == "valid"] == [10, 20, 30, 40]
    for r in rows:
        if r["kind"] == "train":
            assert r["lr"] == pytest.approx(learning_rate(r["step"] - 1, preset.train))
    assert adam_steps(run / STATE_FILE) == {40.0}  # 30 restored + 10 new, not 10
    resumed = load_checkpoint(model_path)
    assert resumed.info["training"]["step"] == 40
    assert any(not torch.equal(v, resumed.model.state_dict()[k])
               for k, v in weights_30.items())


def test_resume_needs_a_run(tmp_path: Path, corpus_file: Path) -> None:
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(get_preset(PRESET), options(tmp_path / "empty", corpus_file, resume=True))


def test_resume_with_another_model_config(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "run"
    train(get_preset(PRESET), options(run, corpus_file, max_steps=2))
    preset = get_preset(PRESET)
    other = dataclasses.replace(preset, model=dataclasses.replace(preset.model, z_dim=4))
    with pytest.raises(TrainingError, match="another model config"):
        train(other, options(run, corpus_file, max_steps=4, resume=True))


def test_refuses_a_corpus_of_other_phrase_lengths(tmp_path: Path) -> None:
    data = write_corpus(tmp_path / "16bar.npz", bars=16, n=12)
    with pytest.raises(TrainingError, match="16-bar"):
        train(get_preset(PRESET), options(tmp_path / "run", data))


def test_refuses_a_broken_corpus(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_text("no corpus here")
    with pytest.raises(TrainingError):
        train(get_preset(PRESET), options(tmp_path / "run", garbage))
    with pytest.raises(TrainingError):
        train(get_preset(PRESET), options(tmp_path / "run", tmp_path / "missing.npz"))


def test_refuses_an_empty_train_split(tmp_path: Path) -> None:
    path = tmp_path / "valid-only.npz"
    n = 6
    meta = {"format_version": CORPUS_FORMAT_VERSION, "bars": 4, "steps_per_bar": 16,
            "hop_bars": 1, "source": "test", "tunes": ["a"]}
    Corpus(random_tokens(n, 64).astype(np.uint8), np.zeros(n, np.int32),
           np.ones(n, np.uint8), meta).save(path)
    with pytest.raises(TrainingError, match="train split is empty"):
        train(get_preset(PRESET), options(tmp_path / "run", path))


def test_max_minutes_stops_with_a_checkpoint(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "run"
    train(get_preset(PRESET), options(run, corpus_file, max_steps=1000, max_minutes=0.0))
    ckpt = load_checkpoint(run / MODEL_FILE)
    assert ckpt.info["training"]["step"] == 1
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "valid"] == [1]
    assert adam_steps(run / STATE_FILE) == {1.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun_train(run: Path, data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "melodyvae.cli", "train", "--preset", PRESET, "--data", str(data),
        "--out", str(run), "--device", "cpu", "--threads", "1",
        "--checkpoint-every", "3", "--eval-every", "3", "--no-progress", *extra,
    ]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)


def test_ddp_two_processes_on_cpu(tmp_path: Path, corpus_file: Path) -> None:
    run = tmp_path / "ddp"
    result = _torchrun_train(run, corpus_file, "--max-steps", "6")
    assert result.returncode == 0, result.stderr[-4000:]
    ckpt = load_checkpoint(run / MODEL_FILE)
    assert ckpt.info["training"]["world_size"] == 2
    assert ckpt.info["training"]["step"] == 6
    rows = read_metrics(run)
    assert [r["step"] for r in rows if r["kind"] == "valid"] == [3, 6]
    # only rank 0 logs: each logged step appears once
    train_steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert len(train_steps) == len(set(train_steps))

    # a second DDP run into the same folder is refused (and does not hang)
    refused = _torchrun_train(run, corpus_file, "--max-steps", "9")
    assert refused.returncode != 0
    assert "melodyvae: error:" in refused.stderr and "--resume" in refused.stderr
    # --resume under DDP continues from step 6
    resumed = _torchrun_train(run, corpus_file, "--max-steps", "9", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert load_checkpoint(run / MODEL_FILE).info["training"]["step"] == 9
    assert [r["step"] for r in read_metrics(run) if r["kind"] == "valid"] == [3, 6, 9]
    assert adam_steps(run / STATE_FILE) == {9.0}


def test_init_from_continues_the_step_with_a_fresh_optimizer(tmp_path: Path,
                                                             corpus_file: Path) -> None:
    preset = get_preset("tiny-hier-4bar")
    first = train(preset, options(tmp_path / "first", corpus_file, max_steps=12))
    before = load_checkpoint(first).model.state_dict()
    second = train(preset, options(tmp_path / "second", corpus_file, max_steps=16,
                                   init_from=first))
    steps = [r["step"] for r in read_metrics(tmp_path / "second")]
    assert steps and min(steps) > 12 and max(steps) == 16
    assert load_checkpoint(second).info["training"]["step"] == 16
    assert adam_steps(tmp_path / "second" / STATE_FILE) == {4.0}  # a new optimizer
    after = load_checkpoint(second).model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_warm_start_copies_the_tensors_that_fit() -> None:
    preset = get_preset("tiny-hier-4bar")
    torch.manual_seed(1)
    source = VAE(preset.model)
    wider_z = VAE(with_overrides(preset, ["model.z_dim=4"]).model)
    fresh = {k: v.clone() for k, v in wider_z.state_dict().items()}
    copied, total = warm_start(wider_z, source)
    theirs, ours = source.state_dict(), wider_z.state_dict()
    same = [k for k in ours if ours[k].shape == theirs[k].shape]
    assert "decoder.rnn.weight_hh_l0" in same and "encoder.rnn.weight_hh_l0" in same
    assert "encoder.to_mu.weight" not in same and "decoder.cond_init.proj.weight" not in same
    assert copied == sum(ours[k].numel() for k in same) and 0 < copied < total
    for key in ours:
        assert torch.equal(ours[key], theirs[key] if key in same else fresh[key]), key


def test_init_from_another_shape_starts_the_schedules_over(tmp_path: Path,
                                                             corpus_file: Path) -> None:
    preset = get_preset("tiny-hier-4bar")
    first = train(preset, options(tmp_path / "first", corpus_file, max_steps=12))
    wider_z = with_overrides(preset, ["model.z_dim=4"])
    third = train(wider_z, options(tmp_path / "third", corpus_file, init_from=first,
                                   max_steps=4))
    assert [r["step"] for r in read_metrics(tmp_path / "third") if r["kind"] == "train"][0] == 1
    assert load_checkpoint(third).preset.model.z_dim == 4


# ------------------------------------------------------------- resume is exact and safe


def _state(run: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(run / STATE_FILE), framework="pt") as f:
        names = list(f.keys())
        return {k: f.get_tensor(k) for k in names}


def _same_run(a: Path, b: Path, from_step: int = 0) -> None:
    """Two run folders hold bit-identical weights, optimizer state and logged losses."""
    wa = load_checkpoint(a / MODEL_FILE).model.state_dict()
    wb = load_checkpoint(b / MODEL_FILE).model.state_dict()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    rows_a = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(a)]
    rows_b = [{k: v for k, v in r.items() if k != "elapsed_s"} for r in read_metrics(b)]
    assert [r for r in rows_a if r["step"] > from_step] == \
           [r for r in rows_b if r["step"] > from_step]


def test_resume_is_exact(tmp_path: Path, corpus_file: Path) -> None:
    """20 steps in one go == 10 steps, then --resume to 20: same weights, optimizer and
    losses, bit for bit (step 11 draws its own batch and latent noise, not step 1's)."""
    preset = get_preset(PRESET)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(preset, options(straight, corpus_file, max_steps=20))
    train(preset, options(resumed, corpus_file, max_steps=10))
    train(preset, options(resumed, corpus_file, max_steps=20, resume=True))
    _same_run(straight, resumed)
    assert [r["step"] for r in read_metrics(resumed) if r["kind"] == "train"] == \
           [1, 5, 10, 15, 20]


def test_a_stop_between_the_two_writes_resumes_from_the_state(tmp_path: Path,
                                                              corpus_file: Path) -> None:
    """Killed after the training state was renamed but before the model file was: the model
    file is a checkpoint behind, and the resume still continues the exact run."""
    preset = get_preset(PRESET)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(preset, options(straight, corpus_file, max_steps=30))
    train(preset, options(killed, corpus_file, max_steps=10))
    behind = (killed / MODEL_FILE).read_bytes()
    train(preset, options(killed, corpus_file, max_steps=20, resume=True))
    (killed / MODEL_FILE).write_bytes(behind)  # the step-20 model never landed
    train(preset, options(killed, corpus_file, max_steps=30, resume=True))
    _same_run(straight, killed)


def test_a_state_without_weights_must_match_the_model_step(tmp_path: Path,
                                                           corpus_file: Path) -> None:
    """A state file of the older layout (optimizer only) is used when its step is the model
    file's, and refused in one line when it is not."""
    from safetensors.torch import save_file

    preset = get_preset(PRESET)
    run = tmp_path / "run"
    train(preset, options(run, corpus_file, max_steps=10))
    behind = (run / MODEL_FILE).read_bytes()
    train(preset, options(run, corpus_file, max_steps=20, resume=True))
    with safe_open(str(run / STATE_FILE), framework="pt") as f:
        meta = f.metadata()
    optimizer_only = {k: v for k, v in _state(run).items() if not k.startswith("model.")}
    save_file(optimizer_only, str(run / STATE_FILE), metadata=meta)
    train(preset, options(run, corpus_file, max_steps=25, resume=True))  # steps agree
    assert load_checkpoint(run / MODEL_FILE).info["training"]["step"] == 25
    save_file(optimizer_only, str(run / STATE_FILE), metadata=meta)  # at step 20
    (run / MODEL_FILE).write_bytes(behind)  # at step 10
    with pytest.raises(TrainingError, match=r"at step 20 but model\.safetensors at step 10"):
        train(preset, options(run, corpus_file, max_steps=30, resume=True))


def test_a_torn_metrics_line_is_tolerated(tmp_path: Path, corpus_file: Path) -> None:
    preset = get_preset(PRESET)
    run = tmp_path / "run"
    train(preset, options(run, corpus_file, max_steps=10))
    with open(run / METRICS_FILE, "a") as log:  # logged after the last checkpoint, then killed
        log.write(json.dumps({"kind": "train", "step": 15, "loss": 1.0}) + "\n")
        log.write('{"kind": "train", "step": 16, "lo')
    train(preset, options(run, corpus_file, max_steps=20, resume=True))
    lines = (run / METRICS_FILE).read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # every line whole again
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 5, 10, 15, 20]
    assert all(r.get("loss") != 1.0 for r in rows)  # the step-15 row is the resumed run's
    assert (run / CURVES_FILE).read_bytes().startswith(b"\x89PNG")
