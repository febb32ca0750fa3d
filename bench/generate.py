"""Batch generation throughput: 16-bar melodies per second against a GEMM floor.

Measures what ``melodyvae generate`` does per chunk: ``MelodyVAE.decode_batches`` on the hier-16bar
model (``MelodyVAE.decode_tokens`` on a chunk of ``--batch`` latent vectors, sampling at
``--temperature``, tokens back on the host). Next to it, the floor: one ``torch.mm`` with the
same multiply-adds as one decode times the batch, shaped (batch*bars, K) @ (K, 4*dec_hidden)
- what this machine does with that arithmetic when nothing is sequential. The goal is a
ratio (decode rate / floor rate) of at least 0.7.

The shipped hier-16bar weights are used when installed; otherwise an untrained model of the
same preset (throughput does not depend on the weights' values), and the JSON says so.
Decode and floor runs are interleaved and their medians compared, so background load hits
both alike. The last line is one JSON object.

    python bench/generate.py [--batch 64] [--repeats 7] [--threads 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from melodyvae.decode import decode_macs
from melodyvae.inference import MelodyVAE, ModelNotFoundError, pick_device
from melodyvae.model import VAE
from melodyvae.presets import get_preset

PRESET = "hier-16bar"


def load(device: str) -> tuple[MelodyVAE, bool]:
    """The shipped model, or an untrained one of the same preset; and whether trained."""
    try:
        return MelodyVAE.load(PRESET, device=device), True
    except ModelNotFoundError:
        torch.manual_seed(0)
        dev = pick_device(device)
        preset = get_preset(PRESET)
        model = VAE(preset.model).to(dev).eval()
        return MelodyVAE(model, {"preset": PRESET}, f"{PRESET} (untrained)", dev), False


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=None,
                        help="melodies decoded together (default: what generate uses, 64 on "
                             "a CPU, 1024 on a GPU)")
    parser.add_argument("--chunks", type=int, default=8, help="batches per timed decode run")
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timed runs")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--temperature", type=float, default=0.5)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    vae, trained = load(args.device)
    args.batch = args.batch or vae.default_batch
    cfg = vae.config
    n = args.batch * args.chunks
    z = vae.sample_z(n, seed=0)
    macs = decode_macs(cfg)  # one decode, batch 1
    m, cols = args.batch * cfg.bars, 4 * cfg.dec_hidden
    k = max(1, round(macs * args.batch / (m * cols)))
    a = torch.randn(m, k, device=vae.device)
    b = torch.randn(k, cols, device=vae.device)

    def decode() -> None:
        for tokens in vae.decode_batches(z, args.temperature, seed=0, batch_size=args.batch):
            assert tokens.shape == (min(args.batch, n), cfg.steps)

    def floor() -> None:
        for _ in range(args.chunks):
            torch.mm(a, b)

    with torch.inference_mode():
        decode()  # warm up (builds the decoder's fused weights)
        floor()
        decode_s, floor_s = [], []
        for _ in range(args.repeats):
            decode_s.append(timed(decode, vae.device))
            floor_s.append(timed(floor, vae.device))
    rate = n / statistics.median(decode_s)
    floor_rate = n / statistics.median(floor_s)
    gemm_macs = m * k * cols
    result = {
        "model": vae.name,
        "trained_weights": trained,
        "note": None if trained else "shipped hier-16bar not installed: untrained weights "
                                     "of the same preset (throughput does not depend on them)",
        "device": str(vae.device),
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "temperature": args.temperature,
        "melodies_per_s": round(rate, 1),
        "floor_melodies_per_s": round(floor_rate, 1),
        "ratio": round(rate / floor_rate, 3),
        "goal_ratio": 0.7,
        "meets_goal": rate / floor_rate >= 0.7,
        "decode_mmacs": round(macs / 1e6, 1),
        "floor_gemm": [m, k, cols],
        "floor_gflops": round(2 * gemm_macs * args.chunks / statistics.median(floor_s) / 1e9,
                              1),
        "decode_s": [round(s, 4) for s in decode_s],
        "floor_s": [round(s, 4) for s in floor_s],
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "numpy": np.__version__,
        "torch": torch.__version__,
    }
    print(f"{vae.name} on {vae.device} ({torch.get_num_threads()} threads), batch "
          f"{args.batch}: {rate:.1f} 16-bar melodies/s; GEMM floor {floor_rate:.1f}/s; "
          f"ratio {rate / floor_rate:.2f} (goal 0.7)", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
