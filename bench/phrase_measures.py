"""Musical measures of 16-bar models side by side (docs/phrase.md): note F1 of greedy
reconstructions on the folk test split, and measures of prior samples at T 0, 0.5, 1.0.

    python bench/phrase_measures.py CORPUS.npz MODEL [MODEL ...] [--json OUT]

Measures come from ``melodyvae.training.measures`` (``sample_measures``,
``reconstruction_measures``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

KEYS = ("degenerate_share", "key_fit", "bar_repeat_share", "leap_share_across_bars",
        "pitch_range")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("models", nargs="+")
    parser.add_argument("--recon", type=int, default=400, help="test phrases reconstructed")
    parser.add_argument("--samples", type=int, default=300, help="prior samples per temperature")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from melodyvae.inference import MelodyVAE
    from melodyvae.training import measures
    from melodyvae.training.corpus import Corpus

    test = Corpus.load(args.corpus).subset("test")
    pick = np.random.default_rng(0).choice(len(test), min(args.recon, len(test)), replace=False)
    report: dict[str, dict] = {"data": {k: measures.sample_measures(test)[k] for k in KEYS}}
    for name in args.models:
        began = time.monotonic()
        vae = MelodyVAE.load(name, device="cpu")
        mu = vae.encode_means(test[pick])
        recon = np.concatenate(list(vae.decode_batches(mu, 0.0, 0)))
        row: dict = {"note_f1": measures.reconstruction_measures(test[pick], recon)["note_f1"]}
        z = vae.sample_z(args.samples, seed=1)
        for t in (0.0, 0.5, 1.0):
            tokens = np.concatenate(list(vae.decode_batches(z, t, 1)))
            m = measures.sample_measures(tokens)
            row[f"T{t}"] = {k: m[k] for k in KEYS}
        row["seconds"] = round(time.monotonic() - began, 1)
        report[name] = row
        print(name, json.dumps(row), flush=True)
    print("data", json.dumps(report["data"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
