"""The ``melodyvae`` command: one parser, one subcommand per job.

Arguments are checked before anything heavy is imported or loaded; known errors (a file
that is not MIDI, an unknown model, a broken checkpoint) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from melodyvae.argtypes import byte_size, non_negative_int, positive_int, real_number
from melodyvae.commands import limit_hint, limit_options
from melodyvae.errors import MelodyVAEError, UserError
from melodyvae.limits import MAX_MIDI_BYTES
from melodyvae.presets import DEFAULT_MODEL

PROG = "melodyvae"
EXIT_USER_ERROR = 2


def _existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


# ------------------------------------------------------------------ subcommands


def cmd_extract(args: argparse.Namespace) -> int:
    from melodyvae.midi import read_midi, write_midi

    melody, info = read_midi(args.input, args.track, max_bytes=args.max_midi_bytes)
    write_midi(melody, args.output)
    print(f"{args.output}: {len(melody.notes)} notes, {melody.n_bars} bars of "
          f"{melody.time_signature[0]}/{melody.time_signature[1]} at {melody.qpm:.1f} qpm, "
          f"from track {info.track} of {info.n_tracks}")
    return 0


def _extract_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="write the quantized melody the model would see",
                       description="Take the melodic line of a MIDI file, put it on the "
                                   "16th-note grid and write it as a one-track MIDI file.")
    p.add_argument("input", metavar="IN.mid", type=_existing_file)
    p.add_argument("output", metavar="OUT.mid", type=Path)
    p.add_argument("--track", type=non_negative_int, default=None,
                   help="take this track (0 = the first instrument) instead of the busiest "
                        "non-drum one")
    limit_options(p, audio=False)
    p.set_defaults(func=cmd_extract)


def cmd_corpus(args: argparse.Namespace) -> int:
    from melodyvae.training import corpus as corpus_mod

    report = corpus_mod.BuildReport()
    if args.folk:
        cache = Path(args.cache_dir) if args.cache_dir else None
        tunes = corpus_mod.folk_tunes(report, cache, args.workers)
        source = "music21 folk: " + ", ".join(corpus_mod.FOLK_COLLECTIONS)
    else:
        tunes = corpus_mod.midi_tunes(args.midi, report, args.workers, args.max_midi_bytes)
        source = f"MIDI folder {args.midi}"
    corpus = corpus_mod.build_corpus(tunes, args.bars, args.hop, source, report)
    corpus.save(args.out)
    for line in report.lines():
        print(line)
    print(f"wrote {args.out}: {len(corpus.tokens)} phrases of {args.bars} bars")
    return 0


def _corpus_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="build a phrase corpus from MIDI files or folk tunes",
                       description="Cut tunes into phrases of N bars, split by tune into "
                                   "train/valid/test, and write one corpus file.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--midi", metavar="DIR", help="a folder of MIDI files (recursive)")
    source.add_argument("--folk", action="store_true",
                        help="music21's folk collections (needs melodyvae[folk])")
    p.add_argument("--out", metavar="FILE", required=True, help="corpus file to write (.npz)")
    p.add_argument("--bars", type=positive_int, default=4, help="bars per phrase (4)")
    p.add_argument("--hop", type=positive_int, default=1, help="bars between phrases (1)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="parallel processes (all cores)")
    p.add_argument("--cache-dir", default=None,
                   help="where parsed folk tunes are cached (~/.cache/melodyvae)")
    p.add_argument("--max-midi-bytes", type=byte_size, default=MAX_MIDI_BYTES, metavar="SIZE",
                   help="skip MIDI files larger than this, in bytes, unread (counted in the "
                        f"report; k, M and G are understood; default 1M = {MAX_MIDI_BYTES:,})")
    p.set_defaults(func=cmd_corpus)


def cmd_train(args: argparse.Namespace) -> int:
    from melodyvae.inference import resolve_model
    from melodyvae.presets import get_preset, with_overrides
    from melodyvae.training.train import RunOptions, train

    preset = with_overrides(get_preset(args.preset), args.set or [])
    if not Path(args.data).is_file():
        raise UserError(f"{args.data}: no such corpus file (build one with melodyvae corpus)")
    options = RunOptions(
        out=Path(args.out), data=Path(args.data), resume=args.resume, device=args.device,
        init_from=resolve_model(args.init_from) if args.init_from else None,
        threads=args.threads, seed=args.seed, max_steps=args.max_steps,
        max_minutes=args.max_minutes, checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every, progress=not args.no_progress, bf16=args.bf16,
    )
    path = train(preset, options)
    print(f"model written to {path}")
    return 0


def _train_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on a corpus",
                       description="Train a preset on a corpus file. Under torchrun it "
                                   "trains on every process (DistributedDataParallel).")
    p.add_argument("--preset", required=True, help="hier-4bar, hier-16bar, flat-16bar, ...")
    p.add_argument("--data", required=True, metavar="FILE", help="corpus file")
    p.add_argument("--out", required=True, metavar="RUNDIR", help="run folder")
    p.add_argument("--resume", action="store_true", help="continue the run in RUNDIR")
    p.add_argument("--init-from", metavar="MODEL", default=None,
                   help="start from a checkpoint or shipped model (its weights and step; "
                        "a fresh optimizer), e.g. to go on training a shipped model")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="override a preset field, e.g. train.lr=3e-4 or model.z_dim=64")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="stop at this step (the preset's otherwise)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop after this long, with a checkpoint")
    p.add_argument("--checkpoint-every", type=positive_int, default=200)
    p.add_argument("--eval-every", type=positive_int, default=200)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on CUDA and on CPUs with native bf16)")
    p.set_defaults(func=cmd_train)


def cmd_train_phrase(args: argparse.Namespace) -> int:
    if not Path(args.data).is_file():
        raise UserError(f"{args.data}: no such corpus file (build one with melodyvae corpus "
                        "--bars 16)")
    import torch

    from melodyvae.inference import resolve_model
    from melodyvae.training.phrase import PhraseTrainConfig, train_phrase_model

    resolve_model(args.section)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_cfg = PhraseTrainConfig(steps=args.steps, max_beta=args.beta, lr=args.lr)
    out = train_phrase_model(
        args.section, Path(args.data), Path(args.out),
        {"w_dim": args.w_dim, "hidden": args.hidden, "layers": args.layers,
         "forms": int(args.forms)}, train_cfg,
        codes_cache=Path(args.codes) if args.codes else None, seed=args.seed,
        progress=not args.no_progress,
        **({} if args.form_threshold is None else {"form_threshold": args.form_threshold}))
    print(f"phrase model written to {out}")
    return 0


def _train_phrase_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-phrase", help="fit a phrase level over a section model (minutes on a CPU)",
        description="Encode every section of a long-phrase corpus with a trained section "
                    "model (e.g. 16-bar phrases as four 4-bar sections under hier-4bar), fit "
                    "a small VAE over those codes with a phrase latent of its own, and write "
                    "one phrase model file (with latent axes) that plays like any model.")
    p.add_argument("--section", default=DEFAULT_MODEL, metavar="MODEL",
                   help=f"section model: shipped name or checkpoint ({DEFAULT_MODEL})")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="corpus file of phrases a whole number of sections long")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--codes", metavar="FILE.npz", default=None,
                   help="cache of the section codes: read when it exists, written otherwise")
    p.add_argument("--w-dim", type=positive_int, default=256, help="phrase latent size (256)")
    p.add_argument("--hidden", type=positive_int, default=512, help="MLP width (512)")
    p.add_argument("--layers", type=positive_int, default=2, help="MLP hidden layers (2)")
    p.add_argument("--no-forms", dest="forms", action="store_false",
                   help="no form coordinate (which sections repeat which) beside w")
    p.add_argument("--form-threshold", type=real_number(0.0, 10.0), default=None,
                   help="standardised code distance under which a section counts as a repeat "
                        "of another (0.7)")
    p.add_argument("--steps", type=positive_int, default=3000, help="optimizer steps (3000)")
    p.add_argument("--beta", type=real_number(0.0, 100.0), default=0.5,
                   help="final KL weight (0.5)")
    p.add_argument("--lr", type=real_number(1e-7, 1.0), default=1e-3,
                   help="initial learning rate (1e-3)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train_phrase)


def cmd_adapt(args: argparse.Namespace) -> int:
    folder = Path(args.folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise UserError(f"{out}: the model file must end in .safetensors")
    import torch

    from melodyvae.inference import MelodyVAE
    from melodyvae.phrase_inference import PhraseMelodyVAE
    from melodyvae.training.phrase import adapt, folder_phrases

    # one thread unless asked: the phrase MLPs are too small for threads to pay, and on a
    # busy 2-core machine two threads made the fit 4x slower (docs/phrase.md)
    torch.set_num_threads(args.threads or 1)
    base = MelodyVAE.load(args.model, device="cpu")
    if not isinstance(base, PhraseMelodyVAE):
        raise UserError(f"{args.model}: not a phrase model (adapt fits a phrase level, e.g. "
                        "of phrase-16bar)")
    folder_phrases(folder, base.bars)  # a bad folder fails before any fitting
    summary = adapt(base, folder, out, seconds=args.seconds, steps=args.steps, seed=args.seed,
                    progress=not args.no_progress)
    print(f"{out}: {base.name} adapted to {summary['phrases']} phrases of {base.bars} bars from "
          f"{summary['files']} files ({summary['steps']} steps, {summary['seconds']:.0f} s)")
    return 0


def _adapt_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "adapt", help="fit a phrase model to a folder of your MIDI files (about a minute)",
        description="Fit the phrase level of a phrase model (phrase-16bar by default) to the "
                    "melodies of a folder of MIDI files, ten or more, and write a model file "
                    "like any other (generate, serve, axes take it with --model FILE).")
    p.add_argument("folder", metavar="DIR", help="folder of MIDI files (searched recursively)")
    p.add_argument("--out", required=True, metavar="FILE.safetensors")
    p.add_argument("--model", default="phrase-16bar", metavar="MODEL",
                   help="phrase model to start from (phrase-16bar)")
    p.add_argument("--seconds", type=real_number(1.0, 3600.0), default=50.0,
                   help="time for reading, encoding and fitting together; the fit stops "
                        "early when it runs out (50)")
    p.add_argument("--steps", type=positive_int, default=1000, help="most fit steps (1000)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (1)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_adapt)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from melodyvae.inference import MelodyVAE
    from melodyvae.training.evaluate import evaluate_model, load_eval_data

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if not Path(args.data).exists():
        raise UserError(f"{args.data}: no such corpus file or folder")
    vae = MelodyVAE.load(args.model, device=args.device)
    tokens = load_eval_data(args.data, vae.bars, args.split)
    metrics = {"model": vae.name, "data": str(args.data),
               **evaluate_model(vae, tokens, args.batch_size)}
    music = None
    if args.music:
        from melodyvae.training.evaluate import music_lines, music_measures, train_phrases

        music = music_measures(vae, tokens, train_phrases(args.data, vae.bars), args.samples)
    if args.json:
        print(json.dumps(metrics if music is None else {**metrics, "music": music}))
    else:
        for key, value in metrics.items():
            print(f"{key:>26}: {value:.4f}" if isinstance(value, float) else
                  f"{key:>26}: {value}")
        for line in music_lines(music) if music else []:
            print(line)
    return 0


def _evaluate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reconstruction accuracy, NLL, KL, active units",
                       description="Evaluate a model on a corpus file's test split or on a "
                                   "folder of MIDI files.")
    p.add_argument("model", metavar="MODEL", help="shipped model name or checkpoint file")
    p.add_argument("data", metavar="DATA", help="corpus file or folder of MIDI files")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"),
                   help="corpus split (test)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads")
    p.add_argument("--music", action="store_true",
                   help="add the musical measures (docs/measures.md): note F1, key fit, "
                        "degenerate share, ... beside the data and a Markov baseline")
    p.add_argument("--samples", type=positive_int, default=1000,
                   help="prior samples per temperature with --music (1000)")
    p.set_defaults(func=cmd_evaluate)


def cmd_axes(args: argparse.Namespace) -> int:
    from melodyvae.axes import LatentAxes
    from melodyvae.checkpoint import write_info
    from melodyvae.inference import MelodyVAE, resolve_model, shipped_models
    from melodyvae.training.axes import compute_axes
    from melodyvae.training.evaluate import load_eval_data

    if str(args.model) in shipped_models() and args.out is None:
        raise UserError("give --out FILE to write axes for a shipped model")
    if not Path(args.data).exists():
        raise UserError(f"{args.data}: no such corpus file or folder")
    vae = MelodyVAE.load(args.model, device=args.device)
    tokens = load_eval_data(args.data, vae.bars, "train")
    doc = dict(vae.info)
    doc["axes"], used = compute_axes(vae, tokens, args.phrases)
    out = args.out or resolve_model(args.model)
    write_info(resolve_model(args.model), doc, out)
    names = ", ".join(LatentAxes(vae.z_dim, doc["axes"]).names)
    print(f"{out}: axes from {used} phrases: {names}")
    return 0


def _axes_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("axes", help="compute the latent sliders (PCA and attributes)",
                       description="Compute PCA axes and attribute vectors (note density, "
                                   "mean pitch, pitch range, mean interval, syncopation, rest "
                                   "ratio) from a corpus and store them in the checkpoint.")
    p.add_argument("model", metavar="MODEL", help="checkpoint file (or shipped name with --out)")
    p.add_argument("data", metavar="DATA", help="corpus file (train split) or MIDI folder")
    p.add_argument("--out", default=None, help="write here instead of updating MODEL")
    p.add_argument("--phrases", type=positive_int, default=20000,
                   help="phrases to use at most (20000)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or mps")
    p.set_defaults(func=cmd_axes)


def cmd_models(args: argparse.Namespace) -> int:
    from melodyvae.checkpoint import read_info
    from melodyvae.inference import DEFAULT_MODEL, shipped_models

    models = shipped_models()
    if not models:
        print("no shipped models installed")
        return 0
    for name, path in models.items():
        info = read_info(path)
        metrics = info.get("metrics") or {}
        summary = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                            if isinstance(v, float))
        default = " (default)" if name == DEFAULT_MODEL else ""
        if "phrase" in info and "section" in info:  # a phrase model
            m, ph = info["section"]["model"], info["phrase"]
            what = (f"phrase, {ph['sections'] * m['bars']} bars ({ph['sections']} sections "
                    f"of {info['section']['preset']}), latent {ph['w_dim'] + ph.get('forms', 0)}"
                    + (" with form" if ph.get("forms") else ""))
        else:
            m = info["model"]
            what = f"{m['kind']}, {m['bars']} bars, latent {m['z_dim']}"
        print(f"{name}{default}: {what}" + (f"; {summary}" if summary else ""))
    from melodyvae.models import LICENCE

    print(LICENCE)
    return 0


def _models_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the shipped models")
    p.set_defaults(func=cmd_models)


# ------------------------------------------------------------------ parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A melody VAE you play like an instrument: train it on MIDI, explore its "
                    "latent space, serve it over OSC.",
        epilog="generate, interpolate, vary, encode, decode, score and serve run a model: "
               "each takes --model NAME|FILE (a shipped name, see 'melodyvae models', or a "
               f"checkpoint file; default {DEFAULT_MODEL}) and --device auto|cpu|cuda|mps. "
               "evaluate and axes take the model as their first argument; train, evaluate "
               "and axes take --device too. train-phrase and adapt fit a phrase level on the "
               f"CPU: train-phrase over --section MODEL (default {DEFAULT_MODEL}), adapt "
               "from --model (default phrase-16bar). extract, corpus, models, render, "
               "transcribe and midi use no model. 'melodyvae COMMAND --help' says more.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _extract_parser(sub)
    _corpus_parser(sub)
    _train_parser(sub)
    _train_phrase_parser(sub)
    _adapt_parser(sub)
    _evaluate_parser(sub)
    _axes_parser(sub)
    _models_parser(sub)

    # Subcommands that live beside their code; each module's add_parsers() only declares
    # arguments and imports its heavy parts inside the handlers.
    from melodyvae import commands
    from melodyvae.server import cli as server_cli

    commands.add_parsers(sub)
    server_cli.add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except OSError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if isinstance(e, MelodyVAEError):
            print(f"{PROG}: error: {e}{limit_hint(e, args)}", file=sys.stderr)
            return EXIT_USER_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
