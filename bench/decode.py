"""Decode latency at batch 1 on one CPU thread: parallel bars vs bar after bar vs a GEMM floor.

For every non-tiny preset (untrained weights: latency does not depend on their values):
* ``parallel_ms``: all bars decoded as one batch (16 autoregressive steps for a 16-step bar);
* ``sequential_ms``: the same weights, bars decoded one after another (the MusicVAE way);
* ``floor_ms``: one matrix multiply with the same multiply-adds as the whole decode,
  (bars*steps_per_bar, K) @ (K, 4*dec_hidden) - what this CPU does with that arithmetic when
  nothing is sequential.
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
        macs = model.decode_macs()
        m = cfg.bars * cfg.steps_per_bar
        n = 4 * cfg.dec_hidden
        k = max(1, round(macs / (m * n)))
        a, b = torch.randn(m, k), torch.randn(k, n)
        with torch.inference_mode():
            parallel = median_ms(partial(model.sample, z, parallel=True), args.repeats)
            sequential = median_ms(partial(model.sample, z, parallel=False), args.repeats)
            floor = median_ms(partial(torch.mm, a, b), args.repeats * 4)
        results[name] = {
            "parallel_ms": round(parallel, 3),
            "sequential_ms": round(sequential, 3),
            "floor_ms": round(floor, 3),
            "speedup": round(sequential / parallel, 2),
            "parallel_over_floor": round(parallel / floor, 2),
            "decode_mmacs": round(macs / 1e6, 1),
        }
        print(f"{name:>12}: parallel {parallel:7.2f} ms  sequential {sequential:7.2f} ms  "
              f"floor {floor:6.2f} ms  ({sequential / parallel:.1f}x faster, "
              f"{parallel / floor:.2f}x the floor)", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
