"""Training: plain PyTorch, top to bottom.

One process, or many under ``torchrun`` (DistributedDataParallel; NCCL on CUDA, gloo on
CPU). Every ``checkpoint_every`` steps rank 0 writes, each atomically,
``RUNDIR/train_state.safetensors`` (weights, optimizer and step together: what ``--resume``
reads, so the two can never disagree), then ``RUNDIR/model.safetensors`` (the model, loadable
anywhere), appends to ``RUNDIR/metrics.jsonl`` and redraws ``RUNDIR/curves.png``.

A resumed run is the run that was never stopped: each step's batch, transposition and
latent noise are drawn from generators keyed by (seed, step, rank), not from a global stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from melodyvae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from melodyvae.errors import MelodyVAEError
from melodyvae.inference import pick_device
from melodyvae.melody import VOCAB_SIZE
from melodyvae.model import VAE, vae_loss
from melodyvae.presets import Preset, TrainConfig
from melodyvae.training.corpus import Corpus, CorpusError
from melodyvae.training.evaluate import evaluate_tokens

_LOGGER = logging.getLogger(__name__)

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"


class TrainingError(MelodyVAEError, RuntimeError):
    """Training cannot start or resume."""


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Exponential decay from ``lr`` to the floor ``lr_min`` (MusicVAE's schedule)."""
    return max(cfg.lr_min, cfg.lr * cfg.lr_decay**step)


def kl_weight(step: int, cfg: TrainConfig) -> float:
    """beta rising from 0 towards ``max_beta`` (MusicVAE's schedule)."""
    return cfg.max_beta * (1.0 - cfg.beta_rate**step)


def transpose_batch(tokens: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Shift each phrase's note-ons by a random number of semitones in [-max_shift, max_shift],
    narrowed per phrase so every note stays in the vocabulary. (N, T) -> (N, T)."""
    if max_shift <= 0:
        return tokens
    notes = tokens >= 2
    big = np.where(notes, tokens, VOCAB_SIZE).min(axis=1)  # lowest note token per phrase
    small = np.where(notes, tokens, 0).max(axis=1)  # highest
    low = np.maximum(-max_shift, 2 - big)
    high = np.minimum(max_shift, VOCAB_SIZE - 1 - small)
    high = np.maximum(high, low)
    shift = rng.integers(low, high + 1)  # (N,)
    return np.where(notes, tokens + shift[:, None], tokens)


@dataclasses.dataclass
class RunOptions:
    """How to run (not what to learn: that is the preset)."""

    out: Path
    data: Path
    resume: bool = False
    init_from: Path | None = None  # start from these weights (and their step), new optimizer
    device: str = "auto"
    threads: int | None = None
    seed: int = 0
    max_steps: int | None = None  # overrides the preset's
    max_minutes: float | None = None  # stop (with a checkpoint) after this long
    checkpoint_every: int = 200
    eval_every: int = 200
    log_every: int = 20
    eval_phrases: int = 512
    progress: bool = True
    bf16: bool | None = None  # bf16 autocast; None: on CUDA, and on CPUs with native bf16


def use_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on ``device``: CUDA, or a CPU with native bf16 arithmetic
    (AVX-512 BF16 or AMX), where an LSTM VAE step runs ~1.6x faster than in fp32."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available()
                    and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def warm_start(model: nn.Module, source: nn.Module) -> tuple[int, int]:
    """Copy every tensor of ``source`` whose name and shape ``model`` shares (an encoder of
    the same width, a bar decoder of the same size); the rest keeps its fresh init.
    Returns (parameters copied, parameters in ``model``)."""
    theirs = source.state_dict()
    copied = total = 0
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            total += tensor.numel()
            other = theirs.get(name)
            if other is not None and other.shape == tensor.shape:
                tensor.copy_(other.to(tensor.dtype))
                copied += tensor.numel()
    return copied, total


def _distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment, (0, 1, 0) otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, 0
    return int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0"))


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The torch generator of one training step (the latent noise), keyed like the batch."""
    key = int(np.random.SeedSequence([seed, step, rank, 1]).generate_state(1, np.uint64)[0])
    return torch.Generator(device=device).manual_seed(key)


def save_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                     extra: dict[str, Any]) -> None:
    """Weights (``model.*``) and optimizer tensors (``state.*``) in one safetensors file, the
    rest as JSON in the header; atomic, so weights and optimizer are always of one step."""
    state = optimizer.state_dict()
    tensors = {f"model.{name}": tensor.detach().cpu().contiguous()
               for name, tensor in model.state_dict().items()}
    for index, slots in state["state"].items():
        for key, value in slots.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"state.{index}.{key}"] = tensor.detach().cpu().contiguous()
    doc = {"step": step, "param_groups": state["param_groups"], **extra}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"melodyvae_train_state": json.dumps(doc)})
    os.replace(tmp, path)


def load_train_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                     model_step: int) -> dict[str, Any]:
    """Restore ``optimizer`` and, from the same file, ``model``'s weights; returns the JSON
    document (``step``, ``elapsed_s``). A state file without weights (written before they were
    kept together) is only used when its step is ``model_step``, the step of the model file
    already loaded into ``model``."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            doc = json.loads((f.metadata() or {})["melodyvae_train_state"])
        tensors = load_file(str(path))
        step = int(doc["step"])
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
        raise TrainingError(f"{path}: unreadable training state ({e})") from e
    weights = {name[len("model."):]: tensor for name, tensor in tensors.items()
               if name.startswith("model.")}
    if weights:
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise TrainingError(f"{path}: weights of another model config") from e
    elif step != model_step:
        raise TrainingError(
            f"{path} is at step {step} but {MODEL_FILE} at step {model_step} (stopped between "
            f"the two writes); resume from a copy of an earlier pair, or start again")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": doc["param_groups"]})
    return doc


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The rows of a metrics log; a line cut short by a kill (not JSON) is skipped."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def trim_metrics(path: Path, step: int) -> int:
    """Before resuming at ``step``: keep the rows up to ``step`` (those after it will be
    logged again) and drop any torn line; atomic. Returns the number of lines dropped."""
    if not path.exists():
        return 0
    lines = path.read_text(errors="replace").splitlines()
    rows = [r for r in read_metrics(path) if isinstance(r.get("step"), int) and r["step"] <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)
    return len(lines) - len(rows)


def plot_curves(metrics_path: Path, png_path: Path) -> None:
    """Training and validation curves from the JSONL log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [r for r in rows if r.get("kind") == "train"]
    valid = [r for r in rows if r.get("kind") == "valid"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key, title in zip(axes, ("nll_bits_per_step", "kl_nats", "teacher_forced_accuracy"),
                              ("NLL (bits/step)", "KL (nats/phrase)", "accuracy"), strict=True):
        ax.plot([r["step"] for r in train], [r[key] for r in train], lw=0.8, label="train")
        if valid:
            ax.plot([r["step"] for r in valid], [r[key] for r in valid], "o-", ms=3,
                    label="valid")
        if key == "teacher_forced_accuracy" and valid and "sampled_accuracy" in valid[0]:
            ax.plot([r["step"] for r in valid], [r["sampled_accuracy"] for r in valid], "s-",
                    ms=3, label="valid sampled")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = png_path.with_name(png_path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, png_path)


def train(preset: Preset, options: RunOptions) -> Path:
    """Train ``preset`` on ``options.data``; returns the path of the final model file."""
    rank, world, local_rank = _distributed()
    cfg = preset.train
    max_steps = options.max_steps if options.max_steps is not None else cfg.max_steps
    if options.threads:
        torch.set_num_threads(options.threads)
    device = pick_device(options.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if world > 1:
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")

    try:
        corpus = Corpus.load(options.data)
    except CorpusError as e:
        raise TrainingError(str(e)) from e
    if corpus.bars != preset.model.bars:
        raise TrainingError(
            f"{options.data} holds {corpus.bars}-bar phrases; {preset.name} takes "
            f"{preset.model.bars} bars"
        )
    train_tokens = corpus.subset("train")
    valid_all = corpus.subset("valid")
    pick = np.random.default_rng(12345).permutation(len(valid_all))[: options.eval_phrases]
    valid_tokens = valid_all[np.sort(pick)]  # a fixed sample across the whole split
    if len(train_tokens) == 0:
        raise TrainingError(f"{options.data}: the train split is empty")

    out = options.out
    model_path, state_path = out / MODEL_FILE, out / STATE_FILE
    metrics_path = out / METRICS_FILE
    torch.manual_seed(options.seed)
    model = VAE(preset.model)
    step = 0
    elapsed_before = 0.0
    if options.resume:
        if not (model_path.is_file() and state_path.is_file()):
            raise TrainingError(f"{out}: nothing to resume (no {MODEL_FILE} / {STATE_FILE})")
        try:
            ckpt = load_checkpoint(model_path)
        except CheckpointError as e:
            raise TrainingError(str(e)) from e
        if ckpt.preset.model != preset.model:
            raise TrainingError(f"{model_path}: trained with another model config")
        model = ckpt.model
    elif model_path.exists() and rank == 0:
        raise TrainingError(f"{out} already holds a run: pass --resume, or another --out")
    if options.init_from is not None and not options.resume:
        try:
            start = load_checkpoint(options.init_from)
        except CheckpointError as e:
            raise TrainingError(str(e)) from e
        if start.preset.model == preset.model:
            model = start.model.float()
            trained = start.info.get("training") or {}
            step = int(trained.get("step", 0))  # the schedules go on from there
            elapsed_before = float(trained.get("elapsed_s", 0.0))
        else:  # another shape: a warm start from whatever fits, schedules from step 0
            copied, total = warm_start(model, start.model)
            if copied == 0:
                raise TrainingError(
                    f"{options.init_from}: another model config than {preset.name}, "
                    "and no weight of the same name and shape to start from")
            _LOGGER.warning("warm start from %s: %s of %s parameters copied",
                            options.init_from, f"{copied:,}", f"{total:,}")
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if options.resume:
        doc = load_train_state(state_path, model, optimizer,
                               int((ckpt.info.get("training") or {}).get("step", -1)))
        step = int(doc["step"])
        elapsed_before = float(doc.get("elapsed_s", 0.0))
    if rank == 0:  # rows from after the step this run starts at will be logged again
        dropped = trim_metrics(metrics_path, step)
        if dropped:
            _LOGGER.warning("%s: %d rows after step %d (or cut short) dropped",
                            metrics_path, dropped, step)
    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.batch_size % world:
        raise TrainingError(f"batch size {cfg.batch_size} does not split over {world} processes")
    local_batch = cfg.batch_size // world
    use_amp = use_bf16(device) if options.bf16 is None else options.bf16

    stop = {"now": False}

    def _stop(signum: int, frame: object) -> None:
        stop["now"] = True

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        previous = signal.signal(signal.SIGTERM, _stop)

    def checkpoint(valid_metrics: dict[str, Any] | None) -> None:
        extra = {
            "data": corpus.summary(),
            "training": {
                "step": step,
                "elapsed_s": round(elapsed_before + time.monotonic() - started, 1),
                "world_size": world,
                "device": device.type,
                "valid": valid_metrics,
            },
        }
        save_train_state(state_path, model, optimizer, step,
                         {"elapsed_s": extra["training"]["elapsed_s"]})
        save_checkpoint(model_path, model, preset, extra)
        plot_curves(metrics_path, out / CURVES_FILE)

    started = time.monotonic()
    bar = tqdm(total=max_steps, initial=step, desc=preset.name, unit="step",
               disable=not options.progress or rank != 0)
    last_valid: dict[str, Any] | None = None
    log = open(metrics_path, "a") if rank == 0 else None  # noqa: SIM115
    try:
        while step < max_steps and not stop["now"]:
            rng = np.random.default_rng([options.seed, step, rank])
            rows = rng.integers(0, len(train_tokens), local_batch)
            batch = transpose_batch(train_tokens[rows], cfg.transpose, rng)
            x = torch.as_tensor(batch, device=device)
            lr, beta = learning_rate(step, cfg), kl_weight(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                logits, mu, logvar = net(
                    x, generator=step_generator(options.seed, step, rank, device))
            losses = vae_loss(logits, x, mu, logvar, beta, cfg.free_bits)
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            step += 1
            bar.update(1)
            if log is not None and (step % options.log_every == 0 or step == 1):
                with torch.no_grad():
                    accuracy = float((logits.argmax(-1) == x).float().mean())
                row = {
                    "kind": "train", "step": step, "loss": float(losses["loss"].detach()),
                    "nll_bits_per_step": float(losses["nll"].detach()) / x.shape[1] / math.log(2),
                    "kl_nats": float(losses["kl"].detach()), "beta": beta, "lr": lr,
                    "grad_norm": float(grad_norm), "teacher_forced_accuracy": accuracy,
                    "elapsed_s": round(elapsed_before + time.monotonic() - started, 1),
                }
                log.write(json.dumps(row) + "\n")
                log.flush()
                bar.set_postfix(nll=f"{row['nll_bits_per_step']:.3f}", kl=f"{row['kl_nats']:.1f}",
                                acc=f"{accuracy:.3f}")
            minutes = (time.monotonic() - started) / 60
            if options.max_minutes is not None and minutes >= options.max_minutes:
                stop["now"] = True
            if world > 1:  # every process stops at the same step
                flag = torch.tensor([float(stop["now"])], device=device)
                torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                stop["now"] = bool(flag.item())
            if rank == 0 and len(valid_tokens) and (step % options.eval_every == 0
                                                    or step == max_steps or stop["now"]):
                last_valid = evaluate_tokens(model, valid_tokens, sampled=True)
                model.train()
                assert log is not None
                log.write(json.dumps({"kind": "valid", "step": step, **last_valid}) + "\n")
                log.flush()
            if rank == 0 and (step % options.checkpoint_every == 0 or step == max_steps
                              or stop["now"]):
                checkpoint(last_valid)
    finally:
        bar.close()
        if log is not None:
            log.close()
        if rank == 0:
            signal.signal(signal.SIGTERM, previous)
        if world > 1:
            torch.distributed.destroy_process_group()
    return model_path
