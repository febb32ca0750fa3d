"""What a CPU second of training buys: seconds per training step of hier-4bar under
bf16 autocast and fp32, on 1 and 2 threads, at two batch sizes, timed in turns in one run
(this machine is shared, so only the ratios inside one run are comparable).

    python bench/train_step.py [--preset hier-4bar] [--rounds 3] [--steps 8]
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch

from melodyvae.model import VAE, vae_loss
from melodyvae.presets import get_preset


def one_config(preset_name: str, batch: int, bf16: bool, threads: int, steps: int,
               seed: int = 0) -> float:
    """Median seconds per optimizer step."""
    preset = get_preset(preset_name)
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = VAE(preset.model).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(rng.integers(0, preset.model.vocab_size, (batch, preset.model.steps)))
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits, mu, logvar = model(x)
        losses = vae_loss(logits, x, mu, logvar, 0.1, 64.0)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()
        if i:  # the first step warms up the kernels
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="hier-4bar")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    configs = list(itertools.product((64, 128), (False, True), (1, 2)))
    results: dict[tuple[int, bool, int], list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for batch, bf16, threads in configs:
            results[(batch, bf16, threads)].append(
                one_config(args.preset, batch, bf16, threads, args.steps))
    base = np.median(results[(64, False, 2)])
    rows = []
    for (batch, bf16, threads), times in results.items():
        t = float(np.median(times))
        rows.append({"batch": batch, "bf16": bf16, "threads": threads, "s_per_step": round(t, 3),
                     "phrases_per_s": round(batch / t, 1),
                     "speed_vs_fp32_2threads_b64": round(base / t * batch / 64, 2)})
    print(json.dumps({"preset": args.preset, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
