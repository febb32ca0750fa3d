"""Batch generation, audio and scoring subcommands (generate, interpolate, vary, encode,
decode, score, render, transcribe).

Each handler checks its arguments and input files first, then imports torch, librosa and
the model code, so ``melodyvae --help`` stays quick. Known problems raise a
:class:`~melodyvae.errors.MelodyVAEError` (:class:`~melodyvae.errors.UserError` for a bad
argument), which the main command prints as one line.

Conventions shared by the commands:

* inputs are MIDI files or audio files (WAV, FLAC, Ogg, AIFF), read by
  :func:`melodyvae.inference.read_melody` (audio is transcribed first); a MIDI file larger
  than ``--max-midi-bytes`` or a recording longer than ``--max-audio-seconds`` is refused
  from its size or header before it is read, and before the model loads;
* an input longer than the model's phrase is cut to its first phrase (the model's number
  of bars), a shorter one is padded with rests; ``score`` instead scores every phrase;
* batches decode on the model's device in chunks of ``--batch-size`` phrases
  (:meth:`melodyvae.inference.MelodyVAE.decode_batches`); a run is fixed by its seed (a
  seed is drawn and printed when none is given), so the same command with the same seed
  writes byte-identical files;
* a batch (generate, interpolate, vary) writes PREFIX000.mid, ... into a folder, with
  .wav and .png previews beside them when asked; a folder that already holds such a set
  of the same prefix is refused, unless ``--force`` says to remove that set first (files
  of other names stay);
* MIDI files are written by :func:`melodyvae.midi.write_midi`: 480 ticks per quarter
  note, a tempo track and a piano track whose note-offs precede note-ons at the same tick.

Each subcommand's handler ``cmd_NAME`` is followed by the function that declares its
parser; :func:`add_parsers` declares them all on the main parser.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import math
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melodyvae.argtypes import byte_size, positive_int, real_number, whole_number
from melodyvae.errors import MelodyVAEError, UserError
from melodyvae.limits import MAX_AUDIO_SECONDS, MAX_MIDI_BYTES
from melodyvae.pianoroll import roll_title
from melodyvae.presets import CPU_BATCH, DEFAULT_MODEL, GPU_BATCH

if TYPE_CHECKING:
    import numpy as np

    from melodyvae.inference import MelodyVAE
    from melodyvae.melody import Melody

_LOGGER = logging.getLogger(__name__)

SCORE_BATCH = 256  # phrases scored together (teacher-forced, one pass)
SYNTHS = ("auto", "fluidsynth", "builtin")
SET_SUFFIXES = ("mid", "wav", "png")  # what a batch writes per melody


_SEED = whole_number(0, 2**63 - 1)
_STEPS = whole_number(2)  # an interpolation's two ends
_NON_NEGATIVE = real_number(0.0)
_TEMPO = real_number(10.0, 400.0, unit="qpm")
_AUDIO_SECONDS = real_number(0.001, what="a number of seconds")


# ------------------------------------------------------------------ shared helpers


def _check_files(*paths: Path) -> None:
    """Every input must exist before anything is loaded."""
    for path in paths:
        if not path.exists():
            raise UserError(f"{path}: no such file")
        if not path.is_file():
            raise UserError(f"{path}: not a file")


def _check_inputs(args: argparse.Namespace, *paths: Path) -> None:
    """Every input exists and is inside the limits, from its size (MIDI) or header (audio),
    before the model is loaded; nothing is read yet."""
    from melodyvae import limits
    from melodyvae.audiofile import looks_like_audio

    _check_files(*paths)
    for path in paths:
        if looks_like_audio(path):
            limits.read_audio_header(path, max_seconds=args.max_audio_seconds)
        else:
            limits.open_checked(path, max_bytes=args.max_midi_bytes, what="MIDI file").close()


def _read_melody(args: argparse.Namespace, path: Path) -> tuple[Melody, str]:
    """:func:`melodyvae.inference.read_melody` at ``--qpm`` within the input limits."""
    from melodyvae.inference import read_melody

    return read_melody(path, args.qpm, max_audio_seconds=args.max_audio_seconds,
                       max_midi_bytes=args.max_midi_bytes)


def limit_hint(error: MelodyVAEError, args: argparse.Namespace) -> str:
    """Words naming the option that raises the limit a refused input ran into ('' when the
    error is not about a limit, or the command has no such option)."""
    from melodyvae.limits import AudioTooLongError, TooLargeError

    if isinstance(error, AudioTooLongError):
        return ("; --max-audio-seconds raises the limit"
                if hasattr(args, "max_audio_seconds") else "")
    if isinstance(error, TooLargeError) or isinstance(error.__cause__, TooLargeError):
        return "; --max-midi-bytes raises the limit" if hasattr(args, "max_midi_bytes") else ""
    return ""


def _check_dir(path: Path) -> Path:
    """An output folder must be a folder or not exist yet; it is made once work begins."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{path}: exists and is not a folder")
    return path


def _batch_folder(args: argparse.Namespace) -> tuple[Path, list[Path]]:
    """A batch's folder and the files of an earlier set there (PREFIX, digits, then .mid,
    .wav or .png): refused unless ``--force`` says to replace them."""
    out, prefix = _check_dir(args.out), args.prefix
    if Path(prefix).name != prefix:
        raise UserError(f"--prefix {prefix!r}: give the start of a file name (no folders)")
    if not out.is_dir():
        return out, []
    pattern = re.compile(re.escape(prefix) + r"\d+\.(" + "|".join(SET_SUFFIXES) + ")")
    earlier = sorted(p for p in out.iterdir() if p.is_file() and pattern.fullmatch(p.name))
    if earlier and not args.force:
        raise UserError(f"{out}: already holds {_count(len(earlier), 'file')} of an earlier "
                        f"set ({prefix}*.mid and previews); --force replaces them, or choose "
                        "another --out or --prefix")
    return out, earlier


def _remove_earlier(earlier: list[Path]) -> str:
    """Remove an earlier set just before a new one is written; words for the summary."""
    for path in earlier:
        path.unlink(missing_ok=True)
    return f"; removed {_count(len(earlier), 'file')} of an earlier set" if earlier else ""


def _check_out_file(path: Path) -> None:
    """An output file must not be a folder; its folder is made once work begins."""
    if path.is_dir():
        raise UserError(f"{path}: is a folder, give a file name")


def _check_synth(args: argparse.Namespace) -> None:
    """Fail before loading the model when WAV previews were asked for and cannot be made."""
    if getattr(args, "wav", False):
        from melodyvae.audio import choose_synth

        choose_synth(args.synth, args.soundfont)


def _resolve_seed(seed: int | None) -> int:
    return secrets.randbelow(2**31) if seed is None else seed


def load_model(args: argparse.Namespace) -> MelodyVAE:
    """The model named by ``--model`` (the shipped default when absent), on ``--device``."""
    import torch

    from melodyvae.inference import MelodyVAE

    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    return MelodyVAE.load(args.model or DEFAULT_MODEL, device=args.device)


def _left_out(vae: MelodyVAE, melody: Melody) -> tuple[int, int]:
    """Bars and notes of a melody past the model's phrase, which the model does not hear."""
    bars = max(0, melody.n_bars - vae.bars)
    return bars, sum(1 for note in melody.notes if note.start >= vae.steps)


def _phrase_note(vae: MelodyVAE, melody: Melody) -> str:
    """Words on how a melody was fitted to the model's phrase length."""
    if melody.total_steps > vae.steps:
        bars, notes = _left_out(vae, melody)
        return (f"used its first {vae.bars} of {melody.n_bars} bars; the "
                f"{_count(bars, 'bar')} after ({_count(notes, 'note')}) left out")
    if melody.total_steps < vae.steps:
        return f"padded {melody.n_bars} bars with rests to {vae.bars}"
    return f"{vae.bars} bars"


def percentile_of(bits: float, heldout: Sequence[float] | None) -> float | None:
    """Share (%) of held-out phrases scoring lower than ``bits``; ``heldout`` is sorted.
    None without a reference."""
    if not heldout:
        return None
    return 100.0 * bisect.bisect_left(heldout, bits) / len(heldout)




class _Writer:
    """Writes one melody as MIDI, and optionally a WAV preview and a piano-roll PNG."""

    def __init__(self, args: argparse.Namespace, model_name: str) -> None:
        self.wav = bool(getattr(args, "wav", False))
        self.png = bool(getattr(args, "png", False))
        self.synth = getattr(args, "synth", "auto")
        self.soundfont = getattr(args, "soundfont", None)
        self.model_name = model_name
        self.rendered_with: str | None = None
        self.counts = {"mid": 0, "wav": 0, "png": 0}

    def write(self, melody: Melody, midi_path: Path, title: str) -> None:
        from melodyvae.midi import write_midi

        midi_path.parent.mkdir(parents=True, exist_ok=True)
        write_midi(melody, midi_path)
        self.counts["mid"] += 1
        if self.wav:
            from melodyvae.audio import render_midi

            result = render_midi(midi_path, midi_path.with_suffix(".wav"), self.synth,
                                 self.soundfont)
            self.rendered_with = result.describe()
            self.counts["wav"] += 1
        if self.png:
            from melodyvae.pianoroll import save_pianoroll

            save_pianoroll(melody, midi_path.with_suffix(".png"), title)
            self.counts["png"] += 1

    def summary(self) -> str:
        parts = [_count(self.counts["mid"], "MIDI file")]
        if self.counts["wav"]:
            parts.append(f"{_count(self.counts['wav'], 'WAV preview')} "
                         f"({self.rendered_with})")
        if self.counts["png"]:
            parts.append(_count(self.counts["png"], "piano roll"))
        return ", ".join(parts)


def _count(n: int, thing: str) -> str:
    return f"{n} {thing}{'s' if n != 1 else ''}"


def _progress(total: int, desc: str, quiet: bool) -> Any:
    from tqdm import tqdm

    # On a terminal only (disable=None), on stderr, so stdout keeps the one-line result.
    return tqdm(total=total, desc=desc, unit="melody", disable=True if quiet else None,
                leave=False, file=sys.stderr)


def _write_batch(vae: MelodyVAE, z: np.ndarray, args: argparse.Namespace, seed: int,
                 out: Path, stem: str, qpm: float, desc: str) -> _Writer:
    out.mkdir(parents=True, exist_ok=True)
    writer = _Writer(args, vae.name)
    width = max(3, len(str(len(z) - 1)))
    with _progress(len(z), desc, args.quiet) as bar:
        index = 0
        for tokens in vae.decode_batches(z, args.temperature, seed, args.batch_size):
            for row in tokens:
                melody = vae.melody_from_tokens(row, qpm)
                name = f"{stem}{index:0{width}d}"
                writer.write(melody, out / f"{name}.mid",
                             roll_title(name, vae.name, args.temperature, seed))
                index += 1
                bar.update(1)
    return writer


# ------------------------------------------------------------------ options shared by the parsers


def _model_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("model")
    group.add_argument("--model", default=None, metavar="NAME|FILE",
                       help=f"which trained model: a shipped name ({DEFAULT_MODEL}, "
                            "hier-16bar, flat-16bar; see 'melodyvae models') or a checkpoint "
                            f"file (default {DEFAULT_MODEL})")
    group.add_argument("--device", default="auto",
                       help="where the model runs: auto (a GPU when there is one), cpu, "
                            "cuda or mps")
    group.add_argument("--threads", type=positive_int, default=None,
                       help="CPU threads to use (all by default)")


def _sampling_options(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--temperature", type=_NON_NEGATIVE, default=temperature,
                   help="how adventurous the notes are: 0 always takes the model's likeliest "
                        "note, 1 plays as it learned, above 1 gets wilder "
                        f"(default {temperature:g})")
    p.add_argument("--seed", type=_SEED, default=None,
                   help="the same seed gives the same files again (default: a fresh seed, "
                        "printed so you can repeat a run)")


def _batch_options(p: argparse.ArgumentParser, prefix: str) -> None:
    p.add_argument("--prefix", default=prefix,
                   help=f"start of each file name (default {prefix!r}: {prefix}000.mid, ...)")
    p.add_argument("--force", action="store_true",
                   help="replace an earlier set in the folder: its PREFIX###.mid files and "
                        "their .wav and .png previews (without --force a folder holding "
                        "such files is refused; other files are left alone)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"melodies worked on at once (default {CPU_BATCH} on a CPU, "
                        f"{GPU_BATCH} on a GPU); part of what a seed repeats")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _preview_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group("previews")
    group.add_argument("--wav", action="store_true",
                       help="also write a WAV preview beside each MIDI file")
    group.add_argument("--png", action="store_true",
                       help="also draw a piano roll (PNG) beside each MIDI file")
    _synth_options(group)


def _synth_options(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument("--synth", choices=SYNTHS, default="auto",
                   help="what plays the notes: fluidsynth (General MIDI piano from a "
                        "soundfont), builtin (a simple organ-like tone, no install needed) "
                        "or auto: FluidSynth when it and a soundfont are installed")
    p.add_argument("--soundfont", type=Path, default=None, metavar="SF2",
                   help="the soundfont FluidSynth plays (default: $MELODYVAE_SOUNDFONT, "
                        "then TimGM6mb or another General MIDI font found on the system)")


def limit_options(p: argparse.ArgumentParser, midi: bool = True, audio: bool = True,
                  audio_help: str | None = None) -> None:
    """``--max-midi-bytes`` and ``--max-audio-seconds``: how large an input file may be."""
    group = p.add_argument_group(
        "input limits", "checked from a file's size or header before it is read; a file "
                        "over a limit is refused")
    if midi:
        group.add_argument("--max-midi-bytes", type=byte_size, default=MAX_MIDI_BYTES,
                           metavar="SIZE",
                           help="largest MIDI file read, in bytes; k, M and G are understood "
                                f"(default 1M = {MAX_MIDI_BYTES:,}; a long orchestral file "
                                "is a few hundred KB)")
    if audio:
        group.add_argument("--max-audio-seconds", type=_AUDIO_SECONDS,
                           default=MAX_AUDIO_SECONDS, metavar="SECONDS",
                           help=audio_help or (
                               f"longest recording read (default {MAX_AUDIO_SECONDS:g}: ten "
                               "minutes); transcribing takes about 0.1 MB of memory per "
                               "second of sound beyond a fixed ~0.4 GB"))


def _input_tempo_option(p: argparse.ArgumentParser, also_output: bool) -> None:
    words = (" and of the files written (default: the input's own tempo)"
             if also_output else "")
    p.add_argument("--qpm", type=_TEMPO, default=None,
                   help="tempo in quarter notes per minute of a WAV input (estimated from "
                        f"the recording when not given){words}")


# ------------------------------------------------------------ subcommands: handler, then parser


def cmd_generate(args: argparse.Namespace) -> int:
    out, earlier = _batch_folder(args)
    _check_synth(args)
    seed = _resolve_seed(args.seed)
    vae = load_model(args)
    z = vae.sample_z(args.n, seed)
    removed = _remove_earlier(earlier)
    writer = _write_batch(vae, z, args, seed, out, args.prefix, args.qpm, "generating")
    print(f"{out}: {writer.summary()} of {vae.bars} bars from {vae.name} "
          f"(temperature {args.temperature:g}, seed {seed}){removed}")
    return 0


def _generate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate", help="write a folder of new melodies (MIDI, WAV previews, piano rolls)",
        description="Dream up N new melodies from the model and write each as a MIDI file "
                    "you can drag into a DAW, optionally with a WAV preview and a piano-roll "
                    "picture. The same --seed writes the same files again.")
    p.add_argument("-n", type=positive_int, default=8, metavar="N",
                   help="how many melodies (default 8)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="folder to write into (made if missing; see --force)")
    p.add_argument("--qpm", type=_TEMPO, default=120.0,
                   help="tempo of the files in quarter notes per minute (default 120)")
    _sampling_options(p, 0.5)
    _batch_options(p, "melody_")
    _preview_options(p)
    _model_options(p)
    p.set_defaults(func=cmd_generate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    _check_inputs(args, args.start, args.end)
    out, earlier = _batch_folder(args)
    _check_synth(args)
    seed = _resolve_seed(args.seed)
    vae = load_model(args)
    a, _ = _read_melody(args, args.start)
    b, _ = _read_melody(args, args.end)
    z = vae.interpolation(a, b, args.steps, "lerp" if args.lerp else "slerp")
    qpm = args.qpm or a.qpm
    removed = _remove_earlier(earlier)
    writer = _write_batch(vae, z, args, seed, out, args.prefix, qpm, "interpolating")
    how = "straight line" if args.lerp else "great circle (slerp)"
    fitted = "".join(f"; {path.name}: {_phrase_note(vae, melody)}"
                     for path, melody in ((args.start, a), (args.end, b))
                     if melody.total_steps != vae.steps)
    print(f"{out}: {writer.summary()} from {args.start.name} to {args.end.name} along a "
          f"{how} in {vae.name}'s latent space"
          + (f" (temperature {args.temperature:g}, seed {seed})" if args.temperature else "")
          + fitted + removed)
    return 0


def _interpolate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interpolate", help="morph from one melody to another in K steps",
        description="Blend melody A into melody B: both are placed in the model's latent "
                    "space and K melodies are written along the way, A's version first and "
                    "B's last. Each input is a MIDI file or a recording (WAV); only its "
                    "first phrase (the model's number of bars) is used.")
    p.add_argument("start", type=Path, metavar="A.mid", help="where the morph starts")
    p.add_argument("end", type=Path, metavar="B.mid", help="where it ends")
    p.add_argument("--steps", type=_STEPS, default=5, metavar="K",
                   help="melodies to write, both ends included: at least 2 (default 5)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    p.add_argument("--lerp", action="store_true",
                   help="walk a straight line between the two (default: a great-circle arc, "
                        "which keeps the in-between melodies as lively as the ends)")
    _input_tempo_option(p, also_output=True)
    _sampling_options(p, 0.0)
    _batch_options(p, "interp_")
    _preview_options(p)
    limit_options(p)
    _model_options(p)
    p.set_defaults(func=cmd_interpolate)


def cmd_vary(args: argparse.Namespace) -> int:
    import numpy as np

    from melodyvae.inference import vary

    _check_inputs(args, args.input)
    out, earlier = _batch_folder(args)
    _check_synth(args)
    seed = _resolve_seed(args.seed)
    vae = load_model(args)
    melody, source = _read_melody(args, args.input)
    z = vary(vae.encode(melody), args.amount, seed, args.n).astype(np.float32)
    removed = _remove_earlier(earlier)
    writer = _write_batch(vae, z, args, seed, out, args.prefix, args.qpm or melody.qpm,
                          "varying")
    print(f"{out}: {writer.summary()} varying {args.input.name} ({source}; "
          f"{_phrase_note(vae, melody)}) by {args.amount:g} with {vae.name} (seed "
          f"{seed}){removed}")
    return 0


def _vary_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "vary", help="write N variations of a melody (MIDI or a hummed WAV)",
        description="Write N variations on a melody: the model hears the input, then "
                    "wanders around it by --amount. Hum or play into a WAV file, or give a "
                    "MIDI file; only its first phrase (the model's number of bars) is used.")
    p.add_argument("input", type=Path, metavar="IN.mid|IN.wav", help="the melody to vary")
    p.add_argument("-n", type=positive_int, default=8, metavar="N",
                   help="how many variations (default 8)")
    p.add_argument("--amount", type=_NON_NEGATIVE, default=0.5, metavar="X",
                   help="how far to stray: 0 = the melody as the model hears it, 0.2-0.5 "
                        "close variations, 1 or more = loosely related (default 0.5)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write")
    _input_tempo_option(p, also_output=True)
    _sampling_options(p, 0.0)
    _batch_options(p, "var_")
    _preview_options(p)
    limit_options(p)
    _model_options(p)
    p.set_defaults(func=cmd_vary)


def cmd_encode(args: argparse.Namespace) -> int:
    _check_inputs(args, args.input)
    if args.out is not None:
        _check_out_file(args.out)
    vae = load_model(args)
    melody, source = _read_melody(args, args.input)
    z = vae.encode(melody)
    doc = {"model": vae.name, "input": str(args.input), "bars": vae.bars,
           "input_bars": melody.n_bars, "z": [float(v) for v in z]}
    text = json.dumps(doc)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
        print(f"{args.out}: {vae.z_dim}-number latent vector of {args.input.name} "
              f"({source}; {_phrase_note(vae, melody)}) in {vae.name}")
        return 0
    if args.json:
        print(text)
    else:
        print(" ".join(f"{v:.6f}" for v in z))
    bars, notes = _left_out(vae, melody)
    if notes:  # said beside the numbers, so that stdout stays what scripts read
        print(f"melodyvae: note: {args.input.name}: encoded bars 1-{vae.bars} of "
              f"{melody.n_bars} ({vae.name}'s phrase); the {_count(bars, 'bar')} after "
              f"({_count(notes, 'note')}) left out", file=sys.stderr)
    return 0


def _encode_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "encode", help="print a melody's position in the latent space",
        description="Place a melody (MIDI, or a recording transcribed first) in the model's "
                    "latent space and print the numbers: the mean of what the encoder "
                    "hears. Only the first phrase (the model's number of bars) is used; "
                    "a note on standard error says how many bars past it were left out. "
                    "'melodyvae decode' turns the numbers back into music.")
    p.add_argument("input", type=Path, metavar="IN.mid|IN.wav")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object {"model": ..., "z": [...]} (what decode '
                        "--z-json reads) instead of bare numbers")
    p.add_argument("--out", type=Path, default=None, metavar="FILE.json",
                   help="write the JSON object to this file instead of printing it")
    _input_tempo_option(p, also_output=False)
    limit_options(p)
    _model_options(p)
    p.set_defaults(func=cmd_encode)


def _read_z(source: str) -> tuple[list[float], str | None]:
    """Latent numbers from ``encode --json`` output or a bare JSON list; '-' is stdin."""
    if source == "-":
        text, name = sys.stdin.read(), "stdin"
    else:
        path = Path(source)
        _check_files(path)
        text, name = path.read_text(errors="replace"), str(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{name}: not JSON ({e})") from e
    model = None
    if isinstance(doc, dict):
        model = doc.get("model") if isinstance(doc.get("model"), str) else None
        doc = doc.get("z")
    if (not isinstance(doc, list) or not doc
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in doc)):
        raise UserError(f'{name}: wants a list of numbers or an object with "z": [...]')
    values = [float(v) for v in doc]
    if not all(math.isfinite(v) for v in values):
        raise UserError(f"{name}: the latent vector holds NaN or infinity")
    return values, model


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np

    from melodyvae.inference import chunk_seed

    values, named_model = _read_z(args.z_json)
    _check_out_file(args.out)
    _check_synth(args)
    if args.model is None and named_model is not None:
        from melodyvae.inference import shipped_models

        if named_model in shipped_models():
            args.model = named_model  # the model the vector came from
    seed = _resolve_seed(args.seed)
    vae = load_model(args)
    if len(values) != vae.z_dim:
        raise UserError(f"the vector has {len(values)} numbers, {vae.name} takes "
                           f"{vae.z_dim}")
    tokens = vae.decode_tokens(np.asarray([values], dtype=np.float32), args.temperature,
                               chunk_seed(seed, 0)).cpu().numpy()
    melody = vae.melody_from_tokens(tokens[0], args.qpm)
    writer = _Writer(args, vae.name)
    writer.write(melody, args.out, roll_title(args.out.stem, vae.name, args.temperature, seed))
    extras = []
    if writer.counts["wav"]:
        extras.append(f"{args.out.with_suffix('.wav').name} ({writer.rendered_with})")
    if writer.counts["png"]:
        extras.append(args.out.with_suffix(".png").name)
    print(f"{args.out}: {len(melody.notes)} notes, {vae.bars} bars from {vae.name}"
          + (f" (temperature {args.temperature:g}, seed {seed})" if args.temperature else "")
          + (f"; also {', '.join(extras)}" if extras else ""))
    return 0


def _decode_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "decode", help="turn latent numbers back into a MIDI melody",
        description="Write the melody at a point of the latent space, read from the JSON "
                    "that 'melodyvae encode --json' prints (or a bare list of numbers). "
                    "Without --model, the model named in that JSON is used when installed.")
    p.add_argument("--z-json", required=True, metavar="FILE",
                   help="JSON file with the numbers; - reads them from standard input")
    p.add_argument("--out", type=Path, required=True, metavar="OUT.mid",
                   help="MIDI file to write")
    p.add_argument("--qpm", type=_TEMPO, default=120.0,
                   help="tempo of the file in quarter notes per minute (default 120)")
    _sampling_options(p, 0.0)
    _preview_options(p)
    _model_options(p)
    p.set_defaults(func=cmd_decode)


def cmd_score(args: argparse.Namespace) -> int:
    import numpy as np

    from melodyvae.melody import to_tokens

    _check_inputs(args, *args.inputs)
    vae = load_model(args)
    heldout = sorted((vae.info.get("novelty") or {}).get("heldout_bits") or [])
    rows: list[dict[str, Any]] = []
    tokens = []
    for path in args.inputs:
        melody, _ = _read_melody(args, path)
        found = 0
        for start in range(0, max(melody.total_steps, 1), vae.steps):
            phrase = melody.window(start, vae.steps)
            if not phrase.notes:
                continue  # a phrase of rests says nothing
            first_bar = start // vae.steps_per_bar + 1
            rows.append({"file": str(path), "phrase": found,
                         "bars": [first_bar, first_bar + vae.bars - 1],
                         "notes": len(phrase.notes)})
            tokens.append(to_tokens(phrase)[0])
            found += 1
        if not found:
            raise UserError(f"{path}: no notes to score")
    bits = vae.negative_elbo_bits(np.stack(tokens), args.batch_size)
    for row, b in zip(rows, bits, strict=True):
        row["bits"] = round(float(b), 3)
        pct = percentile_of(float(b), heldout)
        row["percentile"] = None if pct is None else round(pct, 1)
    reference = len(heldout) if heldout else None
    if args.json:
        print(json.dumps({"model": vae.name, "heldout_phrases": reference, "phrases": rows}))
        return 0
    width = max(len("file"), *(len(r["file"]) for r in rows))
    print(f"{'file':<{width}}  {'bars':>7}  {'notes':>5}  {'bits':>9}  {'percentile':>10}")
    for r in rows:
        shown = "n/a" if r["percentile"] is None else f"{r['percentile']:.1f}"
        bars = f"{r['bars'][0]}-{r['bars'][1]}"
        print(f"{r['file']:<{width}}  {bars:>7}  {r['notes']:>5}  {r['bits']:>9.2f}  "
              f"{shown:>10}")
    if reference:
        print(f"percentile: the share of {vae.name}'s {reference} held-out phrases that "
              "score lower (more typical); near 100 = unusual")
    else:
        print(f"percentile unavailable: {vae.name} ships no held-out scores")
    return 0


def _score_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score", help="how unusual is a melody? (novelty in bits, and its percentile)",
        description="Rate how surprising each phrase is to the model: the bits it needs to "
                    "describe the phrase (its negative ELBO; the decoder is run from the "
                    "encoder's mean, so a phrase always gets the same score). The "
                    "percentile is the share of the model's held-out phrases that score "
                    "lower: near 100 means unusual, near 0 means very typical. Every "
                    "phrase of the model's length in each file is scored.")
    p.add_argument("inputs", type=Path, nargs="+", metavar="IN.mid",
                   help="MIDI files or recordings")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=positive_int, default=SCORE_BATCH,
                   help=f"phrases scored at once (default {SCORE_BATCH})")
    _input_tempo_option(p, also_output=False)
    limit_options(p)
    _model_options(p)
    p.set_defaults(func=cmd_score)


def cmd_render(args: argparse.Namespace) -> int:
    from melodyvae.audio import choose_synth, render_midi

    _check_files(args.input)
    _check_out_file(args.output)
    choose_synth(args.synth, args.soundfont)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = render_midi(args.input, args.output, args.synth, args.soundfont,
                         args.sample_rate, max_bytes=args.max_midi_bytes,
                         max_seconds=args.max_audio_seconds)
    print(f"{args.output}: {result.seconds:.1f} s at {result.sample_rate} Hz, rendered with "
          f"{result.describe()}")
    return 0


def _render_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "render", help="play a MIDI file into a WAV file",
        description="Render a MIDI file to audio you can listen to without a DAW: "
                    "FluidSynth with a General MIDI soundfont when installed (Debian: "
                    "apt-get install fluidsynth), otherwise a small built-in synth. Drum "
                    "tracks are skipped by the built-in synth.")
    p.add_argument("input", type=Path, metavar="IN.mid")
    p.add_argument("output", type=Path, metavar="OUT.wav")
    _synth_options(p)
    p.add_argument("--sample-rate", type=positive_int, default=44_100, metavar="HZ",
                   help="sample rate of the WAV (default 44100)")
    limit_options(p, audio_help="longest audio rendered: a MIDI file that plays longer is "
                                "refused before anything is synthesized (default "
                                f"{MAX_AUDIO_SECONDS:g}: ten minutes)")
    p.set_defaults(func=cmd_render)


def cmd_transcribe(args: argparse.Namespace) -> int:
    from melodyvae.audio import transcribe_file
    from melodyvae.midi import write_midi

    _check_files(args.input)
    _check_out_file(args.output)
    result = transcribe_file(args.input, args.qpm, max_seconds=args.max_audio_seconds)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_midi(result.melody, args.output)
    if args.png:
        from melodyvae.pianoroll import save_pianoroll

        save_pianoroll(result.melody, args.output.with_suffix(".png"), roll_title(
            args.output.stem, source=f"transcribed from {args.input.name} at {result.qpm:g} qpm"))
    channels = {1: "mono", 2: "stereo"}.get(result.channels, f"{result.channels}-channel")
    how = "estimated" if result.tempo_estimated else "given"
    print(f"{args.output}: {len(result.melody.notes)} notes, {result.melody.n_bars} bars at "
          f"{result.qpm:.1f} qpm ({how}), from {result.seconds:.1f} s of "
          f"{result.sample_rate} Hz {channels} audio"
          + (" (+ piano roll)" if args.png else ""))
    return 0


def _transcribe_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe", help="turn a sung, hummed or played line (WAV) into MIDI",
        description="Listen to a recording of one voice or instrument and write its notes "
                    "as MIDI on the 16th-note grid. Any sample rate, mono or stereo. The "
                    "tempo is estimated unless you give --qpm; silence before the first "
                    "note is dropped, so the first note lands on the first beat.")
    p.add_argument("input", type=Path, metavar="IN.wav")
    p.add_argument("output", type=Path, metavar="OUT.mid")
    p.add_argument("--qpm", type=_TEMPO, default=None,
                   help="tempo in quarter notes per minute (estimated when not given)")
    p.add_argument("--png", action="store_true", help="also draw a piano roll (OUT.png)")
    limit_options(p, midi=False)
    p.set_defaults(func=cmd_transcribe)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Declare this module's subcommands on the main parser, in the order --help lists them."""
    _generate_parser(sub)
    _interpolate_parser(sub)
    _vary_parser(sub)
    _encode_parser(sub)
    _decode_parser(sub)
    _score_parser(sub)
    _render_parser(sub)
    _transcribe_parser(sub)
