"""Decode latency at batch 1 on one CPU thread: parallel bars vs bar after bar vs a GEMM floor.

For every non-tiny preset (untrained weights: latency does not depend on their values):
* ``parallel_ms``: all bars decoded as one batch (16 autoregressive steps for a 16-step bar),
  on the NumPy backend of melodyvae.decode;
* ``torch_stepper_ms``: the same decode on the PyTorch backend (the CUDA/MPS path), and
  ``numpy_speedup``, the ratio of the two;
* ``rolling_ms``: the same decode through melodyvae.decode.Rolling, the server's CPU
  decoder (a batch that requests join and leave between steps), and
  ``rolling_over_parallel``, what that freedom costs at batch 1 (the two are timed in
  turns);
* ``sequential_ms``: the same weights, bars decoded one after another (the MusicVAE way);
* ``floor_ms``: one matrix multiply with the same multiply-adds as the whole decode, at the
  decode's row count: (rows, K) @ (K, N) with rows = the rows decoded together (B * bars,
  or B for the flat decoder), K = 4 * dec_hidden and N chosen so rows * K * N equals the
  decode's multiply-adds (the "same multiply-adds as one GEMM" column of DESIGN.md);
* ``floor_all_steps_ms``: the same multiply-adds as (rows * steps, K) @ (K, 4 * dec_hidden),
  every step's rows at once - what the CPU does with that arithmetic when nothing is
  sequential at all, the bound for any autoregressive decoder.
Medians over repeated runs in one process. The last line is one JSON object.

    python bench/decode.py [--repeats 50] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from melodyvae import decode
from melodyvae.decode import numpy_context
from melodyvae.model import VAE
from melodyvae.presets import PRESETS, is_tiny


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def paired_median_ms(a: Callable[[], object], b: Callable[[], object], repeats: int,
                     warmup: int = 5) -> tuple[float, float]:
    """Medians of a and b timed in turns, so that a noisy machine's drift hits both alike."""
    for _ in range(warmup):
        a()
        b()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in zip((a, b), times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1000.0, statistics.median(times[1]) * 1000.0


def rolling_decode(model: VAE, z: torch.Tensor) -> None:
    """One z through a rolling batch, from joining to its melody."""
    rolling = decode.rolling(model)
    assert rolling is not None
    with numpy_context():
        rolling.add([(0, z[0].numpy(), 0.0, None)])
        while len(rolling):
            rolling.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--presets", nargs="*", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    names = args.presets or [n for n in PRESETS if not is_tiny(n)]
    for name in names:
        cfg = PRESETS[name].model
        model = VAE(cfg).eval()
        z = torch.randn(1, cfg.z_dim)
        macs = decode.decode_macs(cfg)
        rows = cfg.bars if cfg.kind == "hier" else 1
        k = 4 * cfg.dec_hidden
        a, b = torch.randn(rows, k), torch.randn(k, max(1, round(macs / (rows * k))))
        m_all = cfg.bars * cfg.steps_per_bar
        k_all = max(1, round(macs / (m_all * k)))
        a_all, b_all = torch.randn(m_all, k_all), torch.randn(k_all, k)
        with torch.inference_mode():
            parallel, rolling = paired_median_ms(partial(decode.sample, model, z),
                                                 partial(rolling_decode, model, z),
                                                 args.repeats)
            sequential = median_ms(partial(decode.sample, model, z, parallel=False),
                                   args.repeats)
            stepper = median_ms(partial(decode.sample, model, z, backend="torch"),
                                args.repeats)
            floor = median_ms(partial(torch.mm, a, b), args.repeats)
            floor_all = median_ms(partial(torch.mm, a_all, b_all), args.repeats * 4)
        del a, b
        results[name] = {
            "parallel_ms": round(parallel, 3),
            "sequential_ms": round(sequential, 3),
            "torch_stepper_ms": round(stepper, 3),
            "numpy_speedup": round(stepper / parallel, 2),
            "rolling_ms": round(rolling, 3),
            "rolling_over_parallel": round(rolling / parallel, 2),
            "floor_ms": round(floor, 3),
            "floor_all_steps_ms": round(floor_all, 3),
            "speedup": round(sequential / parallel, 2),
            "parallel_over_floor": round(parallel / floor, 2),
            "parallel_over_floor_all_steps": round(parallel / floor_all, 2),
            "decode_mmacs": round(macs / 1e6, 1),
        }
        print(f"{name:>12}: parallel {parallel:7.2f} ms  sequential {sequential:7.2f} ms  "
              f"torch stepper {stepper:7.2f} ms  rolling {rolling:7.2f} ms  "
              f"floor {floor:6.2f} ms  all-steps floor {floor_all:6.2f} ms  "
              f"({sequential / parallel:.1f}x faster, {parallel / floor:.2f}x the floor, "
              f"{parallel / floor_all:.2f}x the all-steps floor)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
