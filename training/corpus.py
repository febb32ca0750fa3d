"""Corpora of melody phrases: from folders of MIDI files or music21's folk-tune collections.

A corpus file is a NumPy ``.npz`` read without pickle: ``tokens`` (N, steps) uint8,
``tune`` (N,) int32 (which tune each phrase came from), ``split`` (N,) uint8
(0 train, 1 valid, 2 test) and ``meta`` (UTF-8 JSON: format version, bars, hop, source,
tune names, and the build report).

Phrases are windows of ``bars`` 16-step bars taken every ``hop`` bars. Tunes in 4/4 and 2/4
(and 2/2, 4/2: any meter whose bar is 8, 16 or 32 sixteenths) are laid on 16-step bars;
tunes in other meters are counted in the report and left out. The split is by tune, from a
hash of the tune's name, so it is deterministic and no window of a test tune is in train.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from melodyvae.errors import MelodyVAEError
from melodyvae.limits import MAX_MIDI_BYTES
from melodyvae.melody import Melody, MelodyError, Note, to_tokens
from melodyvae.midi import MIDI_SUFFIXES, MidiError, read_midi

_LOGGER = logging.getLogger(__name__)

CORPUS_FORMAT_VERSION = 1
BAR_STEPS = 16  # the model's bar: 16 sixteenth notes
SPLITS = ("train", "valid", "test")
FOLK_COLLECTIONS = ("essenFolksong", "oneills1850", "ryansMammoth", "airdsAirs", "miscFolk")
FOLK_CACHE_VERSION = 2  # 2: the notated (unexpanded) length of every tune is cached too
MAX_REPEAT_EXPANSION = 4.0  # a tune whose repeats expand it past this many times its notated
# length is read as notated: real repeat marks double or triple a tune; a longer expansion
# comes from variation parts or repeat fields that music21 unrolls over and over
MAX_WINDOWS_PER_TUNE = 48  # phrases one tune may give at most (after exact duplicates go)
BALANCE_TOP = 10  # tunes listed in the build report's balance


class CorpusError(MelodyVAEError, ValueError):
    """A corpus that cannot be built or read."""


class NoPhrasesError(CorpusError):
    """Nothing usable was found in the input."""


def split_of(tune_name: str, valid_percent: int = 5, test_percent: int = 5) -> int:
    """0 (train), 1 (valid) or 2 (test) for a tune, from a stable hash of its name."""
    bucket = int(hashlib.sha1(tune_name.encode("utf-8")).hexdigest()[:8], 16) % 100
    if bucket < test_percent:
        return 2
    if bucket < test_percent + valid_percent:
        return 1
    return 0


@dataclass
class Tune:
    """A whole tune before windowing."""

    name: str  # stable identifier: source and position
    melody: Melody
    notated_steps: int | None = None  # length as written, before repeats were expanded


@dataclass
class BuildReport:
    """What happened to every input."""

    inputs: int = 0  # files or tunes read
    kept: int = 0  # tunes that gave at least one phrase
    skipped: Counter[str] = field(default_factory=Counter)  # reason -> count
    meters: Counter[str] = field(default_factory=Counter)  # meter -> tunes seen
    meters_dropped: Counter[str] = field(default_factory=Counter)  # meter -> tunes left out
    phrases: int = 0
    windows_dropped_sparse: int = 0  # all-rest or near-empty windows
    windows_dropped_duplicate: int = 0  # exact repeats of an earlier window of the same tune
    windows_dropped_cap: int = 0  # past MAX_WINDOWS_PER_TUNE of one tune
    tunes_capped: int = 0  # tunes that had more windows than the cap
    repeats_not_expanded: list[str] = field(default_factory=list)  # blow-ups read as notated
    largest_shares: list[dict[str, Any]] = field(default_factory=list)  # the top tunes
    pitches_folded: int = 0  # notes moved by octaves into 21..108
    split_phrases: dict[str, int] = field(default_factory=dict)
    split_tunes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        d = dataclasses.asdict(self)
        for key in ("skipped", "meters", "meters_dropped"):
            d[key] = dict(sorted(getattr(self, key).items(), key=lambda kv: -kv[1]))
        return d

    def lines(self) -> list[str]:
        out = [
            f"inputs read: {self.inputs}, tunes kept: {self.kept}, phrases: {self.phrases}",
            "split (phrases): " + ", ".join(f"{k} {v}" for k, v in self.split_phrases.items()),
            "split (tunes): " + ", ".join(f"{k} {v}" for k, v in self.split_tunes.items()),
            f"windows dropped as empty or near-empty: {self.windows_dropped_sparse}",
            f"windows dropped as exact repeats within a tune: {self.windows_dropped_duplicate}",
            f"windows dropped past {MAX_WINDOWS_PER_TUNE} per tune: {self.windows_dropped_cap} "
            f"(from {self.tunes_capped} tunes)",
            f"notes folded into 21..108 by octaves: {self.pitches_folded}",
            "meters seen: " + ", ".join(f"{k} {v}" for k, v in self.meters.most_common()),
        ]
        if self.meters_dropped:
            out.append(
                "left out for their meter (the model's bars are 16 sixteenths): "
                + ", ".join(f"{k} {v}" for k, v in self.meters_dropped.most_common())
            )
        if self.repeats_not_expanded:
            out.append(
                f"repeats left unexpanded (expansion past {MAX_REPEAT_EXPANSION:g}x the notated "
                f"length): {len(self.repeats_not_expanded)}: "
                + ", ".join(self.repeats_not_expanded[:BALANCE_TOP])
                + (" ..." if len(self.repeats_not_expanded) > BALANCE_TOP else ""))
        for reason, count in self.skipped.most_common():
            out.append(f"skipped {count}: {reason}")
        if self.largest_shares:
            out.append("largest contributors (phrases, share of the corpus):")
            out.extend(f"  {row['tune']}: {row['phrases']} ({100 * float(row['share']):.2f}%)"
                       for row in self.largest_shares)
        return out


@dataclass
class Corpus:
    """Phrases as tokens, with their tune and split."""

    tokens: np.ndarray  # (N, bars * 16) uint8
    tune: np.ndarray  # (N,) int32, index into meta["tunes"]
    split: np.ndarray  # (N,) uint8, 0 train / 1 valid / 2 test
    meta: dict  # JSON-able description

    @property
    def bars(self) -> int:
        return int(self.meta["bars"])

    @property
    def steps_per_bar(self) -> int:
        return int(self.meta.get("steps_per_bar", BAR_STEPS))

    def subset(self, split: str) -> np.ndarray:
        """Tokens of one split, (n, steps) int64."""
        if split not in SPLITS:
            raise CorpusError(f"unknown split {split!r}; one of {', '.join(SPLITS)}")
        return self.tokens[self.split == SPLITS.index(split)].astype(np.int64)

    def summary(self) -> dict[str, object]:
        """What a checkpoint records of its training data."""
        return {
            "source": self.meta.get("source"),
            "bars": self.bars,
            "hop_bars": self.meta.get("hop_bars"),
            "phrases": {s: int((self.split == i).sum()) for i, s in enumerate(SPLITS)},
            "tunes": len(self.meta.get("tunes", [])),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        meta = np.frombuffer(json.dumps(self.meta).encode("utf-8"), dtype=np.uint8)
        np.savez_compressed(tmp, tokens=self.tokens, tune=self.tune, split=self.split, meta=meta)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Corpus:
        path = Path(path)
        if not path.is_file():
            raise CorpusError(f"{path}: no such corpus file")
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode("utf-8"))
                corpus = cls(data["tokens"], data["tune"], data["split"], meta)
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as e:
            raise CorpusError(f"{path}: not a melodyvae corpus, or damaged ({e})") from e
        if meta.get("format_version") != CORPUS_FORMAT_VERSION:
            raise CorpusError(
                f"{path}: corpus format {meta.get('format_version')}, "
                f"this melodyvae reads {CORPUS_FORMAT_VERSION}"
            )
        return corpus


# --------------------------------------------------------------------------- windowing


def on_16_step_bars(melody: Melody) -> Melody | None:
    """The melody re-barred into 16-step bars, or None when its meter does not fit."""
    if melody.steps_per_bar not in (8, 16, 32):
        return None
    total = -(-melody.total_steps // BAR_STEPS) * BAR_STEPS
    return dataclasses.replace(melody, steps_per_bar=BAR_STEPS, total_steps=total)


def min_notes(bars: int) -> int:
    """Fewest notes a phrase may have: one every two bars, at least two."""
    return max(2, bars // 2)


def windows(
    melody: Melody, bars: int, hop_bars: int, min_fill: float = 0.75
) -> Iterator[Melody]:
    """Windows of ``bars`` bars every ``hop_bars`` bars.

    A tune shorter than one window gives one window padded with silence when it fills at
    least ``min_fill`` of it.
    """
    length = bars * melody.steps_per_bar
    if melody.total_steps < length:
        if melody.total_steps >= min_fill * length:
            yield melody.window(0, length)
        return
    for start in range(0, melody.total_steps - length + 1, hop_bars * melody.steps_per_bar):
        yield melody.window(start, length)


def build_corpus(
    tunes: Iterable[Tune],
    bars: int,
    hop_bars: int,
    source: str,
    report: BuildReport,
    max_windows_per_tune: int = MAX_WINDOWS_PER_TUNE,
) -> Corpus:
    """Window the tunes into phrases, tokenize them and split by tune.

    Within a tune, a window equal to an earlier one is dropped (expanded repeats give many),
    and a tune gives at most ``max_windows_per_tune`` phrases, taken evenly over its length,
    so no single long tune outweighs hundreds of others.
    """
    rows: list[np.ndarray] = []
    tune_index: list[int] = []
    names: list[str] = []
    for tune in tunes:
        meter = f"{tune.melody.time_signature[0]}/{tune.melody.time_signature[1]}"
        report.meters[meter] += 1
        melody = on_16_step_bars(tune.melody)
        if melody is None:
            report.meters_dropped[meter] += 1
            continue
        kept: list[np.ndarray] = []
        seen: set[bytes] = set()
        for phrase in windows(melody, bars, hop_bars):
            if len(phrase.notes) < min_notes(bars):
                report.windows_dropped_sparse += 1
                continue
            tokens, folded = to_tokens(phrase)
            key = tokens.astype(np.uint8).tobytes()
            if key in seen:
                report.windows_dropped_duplicate += 1
                continue
            seen.add(key)
            report.pitches_folded += folded
            kept.append(tokens.astype(np.uint8))
        if len(kept) > max_windows_per_tune:
            report.tunes_capped += 1
            report.windows_dropped_cap += len(kept) - max_windows_per_tune
            pick = np.linspace(0, len(kept) - 1, max_windows_per_tune).round().astype(int)
            kept = [kept[i] for i in pick]
        if kept:
            rows.extend(kept)
            tune_index.extend([len(names)] * len(kept))
            names.append(tune.name)
            report.kept += 1
        else:
            report.skipped["shorter than a phrase or too sparse"] += 1
    if not rows:
        raise NoPhrasesError(f"no phrases of {bars} bars found in {source}")
    tune_arr = np.asarray(tune_index, dtype=np.int32)
    tune_split = np.asarray([split_of(n) for n in names], dtype=np.uint8)
    split = tune_split[tune_arr]
    report.phrases = len(rows)
    report.split_phrases = {s: int((split == i).sum()) for i, s in enumerate(SPLITS)}
    report.split_tunes = {s: int((tune_split == i).sum()) for i, s in enumerate(SPLITS)}
    counts = np.bincount(tune_arr, minlength=len(names))
    report.largest_shares = [
        {"tune": names[i], "phrases": int(counts[i]),
         "share": round(float(counts[i]) / len(rows), 5)}
        for i in np.argsort(-counts, kind="stable")[:BALANCE_TOP]
    ]
    meta = {
        "format_version": CORPUS_FORMAT_VERSION,
        "bars": bars,
        "steps_per_bar": BAR_STEPS,
        "hop_bars": hop_bars,
        "source": source,
        "tunes": names,
        "report": report.to_dict(),
    }
    return Corpus(np.stack(rows), tune_arr, split, meta)


# --------------------------------------------------------------------------- MIDI folders


def _read_midi_job(path: str, max_bytes: int = MAX_MIDI_BYTES
                   ) -> tuple[str, Melody | None, str | None]:
    try:
        melody, _ = read_midi(path, max_bytes=max_bytes)
    except (MidiError, MelodyError) as e:
        reason = type(e).__name__
        return path, None, reason
    return path, melody, None


def find_midi_files(folder: str | os.PathLike[str]) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise CorpusError(f"{folder}: not a folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in MIDI_SUFFIXES)


def midi_tunes(
    folder: str | os.PathLike[str], report: BuildReport, workers: int | None = None,
    max_bytes: int = MAX_MIDI_BYTES,
) -> list[Tune]:
    """Every MIDI file under ``folder`` read in parallel processes, one tune per file;
    files over ``max_bytes`` are skipped unread (counted as MidiTooLargeError)."""
    folder = Path(folder)
    files = find_midi_files(folder)
    if not files:
        raise NoPhrasesError(f"{folder}: no MIDI files (.mid, .midi) found")
    report.inputs += len(files)
    tunes: list[Tune] = []
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        jobs = pool.map(functools.partial(_read_midi_job, max_bytes=max_bytes),
                        [str(f) for f in files], chunksize=8)
        for path, melody, reason in tqdm(jobs, total=len(files), desc="MIDI files", unit="file"):
            if melody is None:
                report.skipped[str(reason)] += 1
                continue
            tunes.append(Tune(Path(path).relative_to(folder).as_posix(), melody))
    return tunes


def melodies_from_midi_folder(folder: str | os.PathLike[str]) -> list[Melody]:
    """The melodies of a folder of MIDI files, sequentially (for evaluation)."""
    melodies = []
    for path in find_midi_files(folder):
        try:
            melodies.append(read_midi(path)[0])
        except (MidiError, MelodyError) as e:
            _LOGGER.info("skipping %s: %s", path, e)
    return melodies


# --------------------------------------------------------------------------- music21 folk


_TUNE_START = re.compile(r"^X:", re.MULTILINE)


def split_abc(text: str) -> list[str]:
    """An ABC file's tunes, each with the file header (defaults) in front."""
    starts = [m.start() for m in _TUNE_START.finditer(text)]
    if not starts:
        return []
    header = text[: starts[0]]
    bounds = [*starts, len(text)]
    return [header + text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def folk_tune_texts(collections: Iterable[str] = FOLK_COLLECTIONS) -> list[tuple[str, str]]:
    """``(name, abc_text)`` for every tune in music21's folk collections."""
    try:
        import music21
    except ImportError as e:
        raise CorpusError(
            "the folk corpus needs music21: pip install 'melodyvae[folk]'"
        ) from e
    root = Path(music21.__file__).parent / "corpus"
    out = []
    for collection in collections:
        for path in sorted((root / collection).glob("*.abc")):
            text = path.read_text(encoding="latin-1")
            for i, tune_text in enumerate(split_abc(text)):
                out.append((f"{collection}/{path.stem}#{i}", tune_text))
    return out


@dataclass(frozen=True)
class FolkParse:
    """A folk tune read from music21, with its lengths before and after repeats."""

    melody: Melody
    notated_steps: int  # 16ths as written (pickup padding included)
    expanded_steps: int  # 16ths once music21 expanded the repeats (= notated when it could not)

    @property
    def expanded(self) -> bool:
        """Whether the melody is the expanded tune (False: read as notated)."""
        return self.melody.total_steps == self.expanded_steps != self.notated_steps


def melody_from_music21(score, max_expansion: float = MAX_REPEAT_EXPANSION) -> FolkParse:
    """The first part of a music21 score as a melody on the 16th grid.

    Repeats are expanded (a tune as played) unless that makes the tune longer than
    ``max_expansion`` times its notated length; ties are merged; grace notes are left out;
    chords give their highest note. A pickup bar is padded with silence in front so that
    bar lines fall on multiples of the bar length.
    """
    from music21 import meter, stream

    parts = score.parts if hasattr(score, "parts") and len(score.parts) else [score]
    notated = parts[0]
    expanded = notated
    try:
        expanded = notated.expandRepeats()
    except Exception:  # music21 raises several kinds for unbalanced repeat marks
        _LOGGER.debug("repeats not expanded for %s", getattr(score, "metadata", None))
    signatures = list(notated.recurse().getElementsByClass(meter.TimeSignature))
    ts = signatures[0] if signatures else meter.TimeSignature("4/4")
    bar_quarters = float(ts.barDuration.quarterLength)
    measures = list(notated.getElementsByClass(stream.Measure))
    pad = 0.0
    if measures:
        first = float(measures[0].duration.quarterLength)
        if 0 < first < bar_quarters:
            pad = bar_quarters - first
    notated_line = _line_of(notated, ts, pad)
    expanded_line = notated_line if expanded is notated else _line_of(expanded, ts, pad)
    blown_up = expanded_line.total_steps > max_expansion * max(notated_line.total_steps, 1)
    return FolkParse(notated_line if blown_up else expanded_line, notated_line.total_steps,
                     expanded_line.total_steps)


def _line_of(part, ts, pad: float) -> Melody:
    from music21 import note

    from melodyvae.melody import monophonic, steps_per_bar_for

    notes: list[Note] = []
    flat = part.stripTies().flatten()
    for element in flat.notes:
        length = float(element.quarterLength)
        if length <= 0:
            continue  # grace note
        pitch = (
            max(p.midi for p in element.pitches)
            if not isinstance(element, note.Note)
            else element.pitch.midi
        )
        start = round((float(element.offset) + pad) * 4)
        end = max(start + 1, round((float(element.offset) + pad + length) * 4))
        notes.append(Note(start, end, int(pitch)))
    total = round((float(flat.highestTime) + pad) * 4)
    return monophonic(notes, total, steps_per_bar_for(ts.numerator, ts.denominator), 120.0,
                      (ts.numerator, ts.denominator))


def _parse_folk_job(job: tuple[str, str]) -> tuple[str, list[tuple[int, int, int]] | None,
                                                    tuple[int, int, int, int, int] | str]:
    name, text = job
    import warnings

    from music21 import converter

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            score = converter.parse(text, format="abc")
            parsed = melody_from_music21(score)
    except Exception as e:  # a malformed tune; reported by kind, the build goes on
        return name, None, f"music21 could not read it ({type(e).__name__})"
    melody = parsed.melody
    if not melody.notes:
        return name, None, "no notes"
    notes = [(n.start, n.end, n.pitch) for n in melody.notes]
    return name, notes, (melody.total_steps, *melody.time_signature, parsed.notated_steps,
                         parsed.expanded_steps)


def _folk_cache_path(cache_dir: Path) -> Path:
    import music21

    return cache_dir / f"folk-v{FOLK_CACHE_VERSION}-music21-{music21.__version__}.npz"


def default_cache_dir() -> Path:
    base = os.environ.get("MELODYVAE_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "melodyvae" if base else Path.home() / ".cache" / "melodyvae"


def folk_tunes(
    report: BuildReport, cache_dir: Path | None = None, workers: int | None = None,
    collections: Iterable[str] = FOLK_COLLECTIONS,
) -> list[Tune]:
    """Every tune of music21's folk collections, parsed once and cached."""
    collections = tuple(collections)
    cache_dir = cache_dir or default_cache_dir()
    cache = _folk_cache_path(cache_dir)
    if collections == FOLK_COLLECTIONS and cache.is_file():
        _LOGGER.info("folk tunes from cache %s", cache)
        return _load_folk_cache(cache, report)
    jobs = folk_tune_texts(collections)
    names: list[str] = []
    note_rows: list[tuple[int, int, int, int]] = []
    shapes: list[tuple[int, int, int, int, int]] = []
    failures: dict[str, str] = {}
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
        results = pool.map(_parse_folk_job, jobs, chunksize=16)
        for name, notes, shape in tqdm(results, total=len(jobs), desc="folk tunes", unit="tune"):
            if notes is None:
                failures[name] = str(shape)
                continue
            assert not isinstance(shape, str)
            index = len(names)
            names.append(name)
            shapes.append(shape)
            note_rows.extend((index, s, e, p) for s, e, p in notes)
    meta = {"names": names, "failures": failures, "collections": list(collections)}
    if collections == FOLK_COLLECTIONS:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez_compressed(
            tmp,
            notes=np.asarray(note_rows, dtype=np.int32).reshape(-1, 4),
            shapes=np.asarray(shapes, dtype=np.int32).reshape(-1, 5),
            meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
        )
        os.replace(tmp, cache)
    return _tunes_from_arrays(
        np.asarray(note_rows, dtype=np.int32).reshape(-1, 4),
        np.asarray(shapes, dtype=np.int32).reshape(-1, 5), meta, report,
    )


def _load_folk_cache(cache: Path, report: BuildReport) -> list[Tune]:
    with np.load(cache, allow_pickle=False) as data:
        meta = json.loads(bytes(data["meta"]).decode("utf-8"))
        return _tunes_from_arrays(data["notes"], data["shapes"], meta, report)


def _tunes_from_arrays(
    notes: np.ndarray, shapes: np.ndarray, meta: dict, report: BuildReport
) -> list[Tune]:
    from melodyvae.melody import steps_per_bar_for

    failures: dict[str, str] = meta["failures"]
    report.inputs += len(meta["names"]) + len(failures)
    for reason in failures.values():
        report.skipped[reason] += 1
    order = np.argsort(notes[:, 0], kind="stable")
    notes = notes[order]
    bounds = np.searchsorted(notes[:, 0], np.arange(len(meta["names"]) + 1))
    tunes = []
    for i, name in enumerate(meta["names"]):
        total, num, den, notated, expanded = (int(v) for v in shapes[i])
        rows = notes[bounds[i] : bounds[i + 1]]
        try:
            spb = steps_per_bar_for(num, den)
        except MelodyError:
            report.skipped[f"meter {num}/{den} off the 16th grid"] += 1
            continue
        if expanded > MAX_REPEAT_EXPANSION * max(notated, 1):
            report.repeats_not_expanded.append(f"{name} ({expanded // spb} bars expanded, "
                                               f"{notated // spb} notated)")
        melody = Melody(
            tuple(Note(int(s), int(e), int(p)) for _, s, e, p in rows), total, spb, 120.0,
            (num, den),
        )
        tunes.append(Tune(name, melody, notated))
    return tunes
