"""Does ``melodyvae adapt`` move a phrase model toward a folder's style? (docs/phrase.md)

    python bench/adapt_style.py CORPUS.npz WORKDIR [--model phrase-16bar] [--files 12]

For each of two contrasting collections of the corpus's test split (oneills1850 dance
tunes, essenFolksong songs) it writes the first 16-bar window of ``--files`` tunes (longer
than 16 bars where there are enough) as MIDI
files into WORKDIR/<collection>/, runs ``melodyvae adapt`` on that folder (timed), and
compares the feature overlap (training/quality.py) between prior samples and each folder's
phrases, and between prior samples and the windows of the collection's *other* test tunes
(held out from both), for the base model and each adapted one.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

COLLECTIONS = ("oneills1850", "essenFolksong")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("corpus")
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--model", default="phrase-16bar")
    parser.add_argument("--files", type=int, default=12)
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from melodyvae.inference import MelodyVAE
    from melodyvae.melody import from_tokens
    from melodyvae.midi import write_midi
    from melodyvae.training.corpus import Corpus
    from melodyvae.training.quality import feature_overlap

    corpus = Corpus.load(args.corpus)
    names = corpus.meta["tunes"]
    test = corpus.split == 2
    from melodyvae.training import measures
    from melodyvae.training.phrase import folder_phrases

    references, models = {}, {"base": args.model}
    for collection in COLLECTIONS:
        counts = np.bincount(corpus.tune[test], minlength=len(names))
        tunes = [t for t in np.flatnonzero(counts) if names[t].startswith(collection)]
        tunes.sort(key=lambda t: counts[t] < 2)  # tunes longer than 16 bars first (a song
        # shorter than one window is padded with silence)
        used, rest = tunes[:args.files], tunes[args.files:]
        folder = args.workdir / collection
        folder.mkdir(parents=True, exist_ok=True)
        for t in used:
            first = corpus.tokens[np.flatnonzero(corpus.tune == t)[0]].astype(np.int64)
            write_midi(from_tokens(first, 16, 120.0), folder / f"{names[t].replace('/', '_')}.mid")
        references[collection] = folder_phrases(folder, 16)[0]
        references[f"{collection} held out"] = corpus.tokens[np.isin(corpus.tune, rest)
                                                             ].astype(np.int64)
        out = args.workdir / f"{collection}.safetensors"
        began = time.monotonic()
        subprocess.run([sys.executable, "-m", "melodyvae.cli", "adapt", str(folder), "--out",
                        str(out), "--model", args.model], check=True)
        print(f"adapt {collection}: {time.monotonic() - began:.1f} s wall, {len(used)} files, "
              f"held out {len(references[collection + ' held out'])} windows of {len(rest)} "
              "tunes", flush=True)
        models[collection] = str(out)
    report: dict[str, dict] = {}
    for label, model in models.items():
        vae = MelodyVAE.load(model, device="cpu")
        z = vae.sample_z(args.samples, seed=1)
        samples = np.concatenate(list(vae.decode_batches(z, args.temperature, 1)))
        report[label] = {c: feature_overlap(samples, ref) for c, ref in references.items()}
        report[label]["degenerate_share"] = measures.sample_measures(samples)["degenerate_share"]
        for c, ref in report[label].items():
            if isinstance(ref, dict):
                print(f"{label:>14} vs {c:<24}", json.dumps(ref),
                      f"mean {np.mean(list(ref.values())):.3f}", flush=True)
        print(f"{label:>14} degenerate share {report[label]['degenerate_share']:.3f}")
    (args.workdir / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
