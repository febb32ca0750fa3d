"""Audio out (render MIDI to WAV) and audio in (transcribe a sung or played line to a melody).

Rendering uses FluidSynth with a General MIDI soundfont when both are installed (Debian's
``fluidsynth`` package brings ``TimGM6mb.sf2``) and otherwise a small built-in synth; the
result is peak-normalised to -1 dBFS and written as 16-bit PCM with soundfile.

Transcription is monophonic:

1. the file is read with soundfile (any sample rate, mono or stereo: channels are averaged),
   resampled to 22,050 Hz with ``librosa.resample`` (soxr) and peak-normalised;
2. librosa's pYIN (46 ms window, C2-C7, quarter-semitone bins) gives a pitch and a
   voiced/unvoiced decision every 256 samples (11.6 ms); frames more than 40 dB below the
   loudest frame count as silence;
3. a note begins where the rounded MIDI pitch changes or where voicing starts, moved to an
   energy onset found up to 100 ms before it (the previous note may ring on); pitch runs
   under 60 ms (glides) join the note after them, and runs under 150 ms whole octaves from
   a neighbour (tracker slips at attacks) join that neighbour; inside one pitch, an onset
   where the level jumps 1.4x, or as strong as half a typical attack, starts a repeated note;
4. the tempo is librosa's estimate from the onset envelope (folded into 60-180 qpm and
   rounded to a whole number) unless given, and note onsets and ends are rounded to the
   16th-note grid, counting from the first note: leading silence is dropped and the first
   note lands on the first downbeat.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melodyvae.errors import MelodyVAEError
from melodyvae.melody import STEPS_PER_QUARTER, Melody, Note, monophonic

_LOGGER = logging.getLogger(__name__)

RENDER_SAMPLE_RATE = 44_100  # Hz, WAV previews
ANALYSIS_SAMPLE_RATE = 22_050  # Hz, what transcription resamples to
HOP = 256  # samples between pYIN frames at ANALYSIS_SAMPLE_RATE (11.6 ms)
FRAME = 1024  # pYIN analysis window in samples (46 ms)
FMIN_HZ = 65.41  # C2: lowest pitch transcribed
FMAX_HZ = 2093.0  # C7: highest pitch transcribed
PYIN_RESOLUTION = 0.25  # semitones per pitch bin (pYIN's Viterbi cost grows with bins^2)
PYIN_MAX_TRANSITION = 200.0  # octaves per second pYIN's pitch track may move (librosa's
#                              default, 36, lets wide leaps lock onto the octave below)
OCTAVE_BLIP_S = 0.15  # a run this short an octave or two off its neighbour is that note
ONSET_SNAP_S = (0.10, 0.03)  # an energy onset this long before / after a pitch change
#                              marks where the note really begins
SILENCE_DB = 40.0  # frames this far below the loudest frame are silence
SILENT_PEAK = 1e-4  # a file whose peak stays below this (-80 dBFS) has no sound
MIN_NOTE_S = 0.06  # pitch runs shorter than this are blips (glides, attacks), not notes
REARTICULATION_RATIO = 1.4  # short-window level rise (x) at an onset inside one pitch:
#                             a repeated note
REARTICULATION_STRENGTH = 0.5  # or an onset this strong against the file's median attack
PEAK_DBFS = -1.0  # rendered files are normalised to this peak level
TEMPO_RANGE = (60.0, 180.0)  # qpm; estimates are folded by octaves into [low, high)
FLUIDSYNTH_TIMEOUT_S = 300.0

SOUNDFONT_ENV = "MELODYVAE_SOUNDFONT"
SOUNDFONT_CANDIDATES = (
    "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/default-GM.sf2",
    "/usr/share/sounds/sf2/FluidR3_GM.sf2",
    "/usr/share/soundfonts/default.sf2",
    "/usr/share/soundfonts/FluidR3_GM.sf2",
    "/usr/local/share/soundfonts/default.sf2",
    "/opt/homebrew/share/soundfonts/default.sf2",
)
AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".ogg", ".oga", ".aif", ".aiff", ".aifc")
_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"FORM", b"fLaC", b"OggS")


class AudioError(MelodyVAEError, ValueError):
    """An audio file that cannot be read, written or transcribed."""


class NotAudioError(AudioError):
    """The file is missing, unreadable or in no format soundfile knows."""


class SilentAudioError(AudioError):
    """The file holds only silence."""


class NoNotesError(AudioError):
    """Sound, but no pitched notes in it."""


class SynthError(AudioError):
    """FluidSynth or the soundfont asked for is missing or failed."""


# ------------------------------------------------------------------ helpers


def looks_like_audio(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` has an audio suffix or starts like a WAV/AIFF/FLAC/Ogg file."""
    path = Path(path)
    if path.suffix.lower() in AUDIO_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head in _AUDIO_MAGIC


def _normalise(audio: np.ndarray, peak_dbfs: float = PEAK_DBFS) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak <= 0.0:
        return audio.astype(np.float32)
    return (audio * (10 ** (peak_dbfs / 20) / peak)).astype(np.float32)


def write_audio(path: str | os.PathLike[str], audio: np.ndarray, sample_rate: int) -> None:
    """Write (n,) or (n, channels) float audio as 16-bit PCM (the format follows the suffix;
    WAV when the suffix names none)."""
    import soundfile as sf

    path = Path(path)
    fmt = path.suffix.lstrip(".").upper()
    if fmt not in sf.available_formats():
        fmt = "WAV"
    subtype = "PCM_16" if sf.check_format(fmt, "PCM_16") else sf.default_subtype(fmt)
    try:
        sf.write(str(path), np.clip(audio, -1.0, 1.0), sample_rate, format=fmt,
                 subtype=subtype)
    except (sf.LibsndfileError, TypeError, ValueError) as e:
        raise AudioError(f"{path}: cannot write audio ({e})") from e


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """A file's samples as float32 (n, channels) and its sample rate."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise NotAudioError(f"{path}: no such file")
    try:
        audio, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as e:
        raise NotAudioError(f"{path}: not a readable audio file ({e})") from e
    if audio.shape[0] == 0:
        raise SilentAudioError(f"{path}: the audio file is empty (no samples)")
    if not np.all(np.isfinite(audio)):
        raise NotAudioError(f"{path}: the audio holds NaN or infinite samples")
    return audio, int(sample_rate)


# ------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class RenderResult:
    """What a render did."""

    path: Path  # the file written
    seconds: float  # its length
    sample_rate: int  # Hz
    synth: str  # "fluidsynth" or "builtin"
    soundfont: Path | None  # the soundfont FluidSynth used

    def describe(self) -> str:
        """'FluidSynth with TimGM6mb.sf2' or 'the built-in synth'."""
        if self.synth == "fluidsynth" and self.soundfont is not None:
            return f"FluidSynth with {self.soundfont.name}"
        return "the built-in synth"


def fluidsynth_path() -> str | None:
    return shutil.which("fluidsynth")


def find_soundfont(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The soundfont to render with: ``explicit``, then $MELODYVAE_SOUNDFONT, then the
    usual install places (TimGM6mb first: small and quick to load). None when none is
    found; an explicit path that does not exist is an error."""
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise SynthError(f"{path}: no such soundfont")
        return path
    env = os.environ.get(SOUNDFONT_ENV)
    if env:
        if not Path(env).is_file():
            raise SynthError(f"${SOUNDFONT_ENV}={env}: no such soundfont")
        return Path(env)
    for candidate in SOUNDFONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    return None


def choose_synth(synth: str = "auto", soundfont: str | os.PathLike[str] | None = None
                 ) -> tuple[str, Path | None]:
    """("fluidsynth", soundfont) or ("builtin", None) for ``synth`` auto/fluidsynth/builtin.

    ``auto`` takes FluidSynth when the program and a soundfont are found, the built-in synth
    otherwise; asking for FluidSynth (or naming a soundfont) when it cannot run is an error.
    """
    if synth not in ("auto", "fluidsynth", "builtin"):
        raise SynthError(f"synth must be auto, fluidsynth or builtin, not {synth!r}")
    if synth == "builtin":
        return "builtin", None
    sf2 = find_soundfont(soundfont)
    program = fluidsynth_path()
    if program is not None and sf2 is not None:
        return "fluidsynth", sf2
    if synth == "fluidsynth" or soundfont is not None:
        missing = "the fluidsynth program" if program is None else "a soundfont"
        raise SynthError(f"cannot render with FluidSynth: {missing} is not installed "
                         "(apt-get install fluidsynth, or use --synth builtin)")
    _LOGGER.info("no FluidSynth or soundfont found; rendering with the built-in synth")
    return "builtin", None


def _run_fluidsynth(midi_path: Path, sf2: Path, sample_rate: int) -> np.ndarray:
    program = fluidsynth_path()
    if program is None:
        raise SynthError("the fluidsynth program is not installed")
    with tempfile.TemporaryDirectory(prefix="melodyvae-") as tmp:
        raw = Path(tmp) / "render.wav"
        cmd = [program, "-ni", "-q", "-r", str(sample_rate), "-F", str(raw), str(sf2),
               str(midi_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True,
                                  timeout=FLUIDSYNTH_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SynthError(f"fluidsynth failed to run ({e})") from e
        if proc.returncode != 0 or not raw.is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise SynthError(f"fluidsynth failed on {midi_path.name} with {sf2.name}"
                             + (f": {detail[-1]}" if detail else ""))
        audio, _ = read_audio(raw)
    return audio


def _midi_notes(midi_path: Path) -> tuple[list[tuple[float, float, int, int]], float]:
    """Pitched notes (start s, end s, pitch, velocity) of a MIDI file, and its end time."""
    from melodyvae.midi import load_pretty_midi

    pm = load_pretty_midi(midi_path)
    notes = [(float(n.start), float(n.end), int(n.pitch), int(n.velocity))
             for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    return notes, float(pm.get_end_time())


def synthesize(notes: Sequence[tuple[float, float, int, int]],
               sample_rate: int = RENDER_SAMPLE_RATE, tail: float = 0.3) -> np.ndarray:
    """The built-in synth: (start s, end s, pitch, velocity) notes -> mono float32 audio.

    A soft organ-like tone, six harmonics falling off as 1/k^1.5, with a 10 ms attack, an
    80 ms decay to 70 % and a release of up to 60 ms that ends with the note (so repeated
    notes are heard as two); the level follows the velocity. Deterministic: the same notes
    give the same samples. Not normalised.
    """
    attack, decay, sustain, release = 0.010, 0.080, 0.7, 0.060
    end = max((n[1] for n in notes), default=0.0) + tail
    out = np.zeros(int(math.ceil(end * sample_rate)) + 1, dtype=np.float64)
    harmonics = np.arange(1, 7)
    weights = harmonics ** -1.5
    for start, stop, pitch, velocity in notes:
        if stop <= start:
            continue
        freq = 440.0 * 2 ** ((pitch - 69) / 12)
        held = stop - start
        gate_off = max(held - release, held / 2)  # the release starts here, ends at `held`
        n = int(math.ceil(held * sample_rate))
        t = np.arange(n) / sample_rate
        env = np.where(t < attack, t / attack,
                       np.where(t < attack + decay,
                                1.0 - (1.0 - sustain) * (t - attack) / decay, sustain))
        env = env * np.clip((held - t) / (held - gate_off), 0.0, 1.0)
        audible = harmonics * freq < sample_rate / 2  # no aliasing
        tone = (weights[audible, None]
                * np.sin(2 * np.pi * freq * harmonics[audible, None] * t)).sum(axis=0)
        gain = (max(1, min(127, velocity)) / 127) ** 1.5
        first = int(round(start * sample_rate))
        out[first:first + n] += (gain * env * tone)[: len(out) - first]
    return out.astype(np.float32)


def render_midi(midi_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                synth: str = "auto", soundfont: str | os.PathLike[str] | None = None,
                sample_rate: int = RENDER_SAMPLE_RATE) -> RenderResult:
    """Render a MIDI file to an audio file (see :func:`choose_synth` for ``synth``)."""
    midi_path, out_path = Path(midi_path), Path(out_path)
    notes, _ = _midi_notes(midi_path)  # checks the file is MIDI before anything runs
    if not notes:
        from melodyvae.midi import EmptyMidiError

        raise EmptyMidiError(f"{midi_path}: no pitched notes to render")
    engine, sf2 = choose_synth(synth, soundfont)
    if engine == "fluidsynth" and sf2 is not None:
        audio = _run_fluidsynth(midi_path, sf2, sample_rate)
    else:
        audio = synthesize(notes, sample_rate)
    write_audio(out_path, _normalise(audio), sample_rate)
    _LOGGER.info("rendered %s with %s", out_path, engine)
    return RenderResult(out_path, audio.shape[0] / sample_rate, sample_rate, engine, sf2)


def render_melody(melody: Melody, out_path: str | os.PathLike[str], synth: str = "auto",
                  soundfont: str | os.PathLike[str] | None = None,
                  sample_rate: int = RENDER_SAMPLE_RATE) -> RenderResult:
    """Render a melody (as a piano, program 0, under FluidSynth) to an audio file."""
    from melodyvae.midi import write_midi

    with tempfile.TemporaryDirectory(prefix="melodyvae-") as tmp:
        midi_path = Path(tmp) / "melody.mid"
        write_midi(melody, midi_path)
        return render_midi(midi_path, out_path, synth, soundfont, sample_rate)


# ------------------------------------------------------------------ transcription


@dataclass(frozen=True)
class Transcription:
    """A transcribed melody and how it was found."""

    melody: Melody  # on the 16th grid, 16 steps per bar, at ``qpm``
    qpm: float  # the tempo used for the grid
    tempo_estimated: bool  # True when qpm was estimated from the audio
    seconds: float  # length of the input
    sample_rate: int  # the input's sample rate
    channels: int  # the input's channels
    onset_seconds: tuple[float, ...]  # detected note onsets, before quantizing


@dataclass(frozen=True)
class _Segment:
    start: int  # first frame
    end: int  # frame after the last
    pitch: int  # MIDI pitch, -1 for silence


def _runs(values: np.ndarray) -> list[_Segment]:
    segments: list[_Segment] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            segments.append(_Segment(start, i, int(values[start])))
            start = i
    return segments


def _absorb_blips(segments: list[_Segment], min_frames: int) -> list[_Segment]:
    """Give pitched runs shorter than ``min_frames`` to the pitched run right after them
    (a glide into a note) or, before silence, to the run before them (a blip at a note's
    end); then merge neighbours of equal pitch."""
    out: list[_Segment] = []
    pending: int | None = None  # first frame of the blips waiting for a home
    for seg in segments:
        if seg.pitch >= 0 and seg.end - seg.start < min_frames:
            pending = seg.start if pending is None else pending
            continue
        if pending is not None:
            if seg.pitch >= 0:
                seg = dataclasses.replace(seg, start=pending)
            elif out and out[-1].pitch >= 0 and out[-1].end == pending:
                out[-1] = dataclasses.replace(out[-1], end=seg.start)
            pending = None
        out.append(seg)
    if pending is not None and out and out[-1].pitch >= 0 and out[-1].end == pending:
        out[-1] = dataclasses.replace(out[-1], end=segments[-1].end)
    return _merge_equal(out)


def _absorb_octave_errors(segments: list[_Segment], max_frames: int) -> list[_Segment]:
    """Give runs shorter than ``max_frames`` that sit whole octaves from the run right after
    (or else right before) them to that run: pitch trackers slip an octave at attacks."""
    out = list(segments)
    i = 0
    while i < len(out):
        seg = out[i]
        nxt = out[i + 1] if i + 1 < len(out) else None
        prev = out[i - 1] if i > 0 else None

        def octaves_from(other: _Segment | None, seg: _Segment = seg) -> bool:
            return (other is not None and other.pitch >= 0 and other.pitch != seg.pitch
                    and (other.pitch - seg.pitch) % 12 == 0
                    and other.end - other.start > seg.end - seg.start)

        if seg.pitch >= 0 and seg.end - seg.start < max_frames:
            if nxt is not None and nxt.start == seg.end and octaves_from(nxt):
                out[i + 1] = dataclasses.replace(nxt, start=seg.start)
                del out[i]
                continue
            if prev is not None and prev.end == seg.start and octaves_from(prev):
                out[i - 1] = dataclasses.replace(prev, end=seg.end)
                del out[i]
                continue
        i += 1
    return _merge_equal(out)


def _fill_gaps(segments: list[_Segment], min_frames: int) -> list[_Segment]:
    """Close unvoiced dropouts shorter than ``min_frames`` inside one pitch."""
    out: list[_Segment] = []
    for i, seg in enumerate(segments):
        if (seg.pitch < 0 and seg.end - seg.start < min_frames and out and out[-1].pitch >= 0
                and i + 1 < len(segments) and segments[i + 1].pitch == out[-1].pitch):
            seg = dataclasses.replace(seg, pitch=out[-1].pitch)
        out.append(seg)
    return _merge_equal(out)


def _merge_equal(segments: list[_Segment]) -> list[_Segment]:
    out: list[_Segment] = []
    for seg in segments:
        if out and out[-1].pitch == seg.pitch and out[-1].end == seg.start:
            out[-1] = dataclasses.replace(out[-1], end=seg.end)
        else:
            out.append(seg)
    return out


def _split_rearticulations(segments: list[_Segment], onsets: np.ndarray, rms: np.ndarray,
                           strength: np.ndarray, min_frames: int) -> list[_Segment]:
    """Split a pitched run at an energy onset where the level jumps, or where the onset is
    at least half as strong as a typical attack in the file (a repeated note)."""
    typical = float(np.median(strength[onsets])) if onsets.size else np.inf
    out: list[_Segment] = []
    for seg in segments:
        if seg.pitch < 0:
            out.append(seg)
            continue
        start = seg.start
        for f in onsets[(onsets >= seg.start + min_frames) & (onsets <= seg.end - min_frames)]:
            f = int(f)
            if f - start < min_frames:
                continue
            before = float(rms[max(start, f - 4): f + 1].min())
            after = float(rms[f: f + 4].max())
            if (after > REARTICULATION_RATIO * max(before, 1e-9)
                    or strength[f] >= REARTICULATION_STRENGTH * typical):
                out.append(_Segment(start, f, seg.pitch))
                start = f
        out.append(_Segment(start, seg.end, seg.pitch))
    return out


def _snap_to_onsets(segments: list[_Segment], onsets: np.ndarray, before: int, after: int,
                    min_frames: int) -> list[_Segment]:
    """Move each note's start to the nearest energy onset from ``before`` frames earlier to
    ``after`` frames later (pitch tracks change late when the previous note rings on),
    keeping every note at least ``min_frames`` long."""
    out = list(segments)
    for i, seg in enumerate(out):
        if seg.pitch < 0:
            continue
        prev = out[i - 1] if i > 0 else None
        low = seg.start - before
        if prev is not None and prev.end == seg.start:
            low = max(low, prev.start + (min_frames if prev.pitch >= 0 else 0))
        near = onsets[(onsets >= low) & (onsets <= min(seg.start + after,
                                                        seg.end - min_frames))]
        if near.size == 0:
            continue
        f = int(near[np.argmin(np.abs(near - seg.start))])
        if f == seg.start:
            continue
        if prev is not None and prev.end == seg.start:
            out[i - 1] = dataclasses.replace(prev, end=f)
        out[i] = dataclasses.replace(seg, start=f)
    return [s for s in out if s.end > s.start]


def fold_tempo(qpm: float, low: float = TEMPO_RANGE[0], high: float = TEMPO_RANGE[1]) -> float:
    """Move a tempo by factors of two into [low, high)."""
    if qpm <= 0 or not math.isfinite(qpm):
        return 120.0
    while qpm < low:
        qpm *= 2
    while qpm >= high:
        qpm /= 2
    return qpm


def transcribe_array(audio: np.ndarray, sample_rate: int, qpm: float | None = None,
                     name: str = "<audio>") -> Transcription:
    """Transcribe (n,) or (n, channels) float audio; see the module docstring."""
    import librosa

    if qpm is not None and not (0 < qpm < 1000):
        raise AudioError(f"tempo {qpm} qpm is out of range")
    frames = audio if audio.ndim == 2 else audio[:, None]
    channels = frames.shape[1]
    seconds = frames.shape[0] / sample_rate
    mono = frames.astype(np.float32).mean(axis=1)
    if mono.size == 0 or float(np.max(np.abs(mono))) < SILENT_PEAK:
        raise SilentAudioError(f"{name}: silent, nothing to transcribe")
    if sample_rate != ANALYSIS_SAMPLE_RATE:
        mono = librosa.resample(mono, orig_sr=sample_rate, target_sr=ANALYSIS_SAMPLE_RATE)
    y = _normalise(mono, 0.0)
    sr = ANALYSIS_SAMPLE_RATE
    if y.size < FRAME:
        y = np.pad(y, (0, FRAME - y.size))

    f0, voiced, _ = librosa.pyin(y, fmin=FMIN_HZ, fmax=FMAX_HZ, sr=sr, frame_length=FRAME,
                                 hop_length=HOP, resolution=PYIN_RESOLUTION,
                                 max_transition_rate=PYIN_MAX_TRANSITION)
    rms = librosa.feature.rms(y=y, frame_length=FRAME, hop_length=HOP)[0]
    n = min(len(f0), len(rms))
    f0, voiced, rms = f0[:n], voiced[:n], rms[:n]
    loud = rms > rms.max() * 10 ** (-SILENCE_DB / 20)
    ok = voiced & loud & np.isfinite(f0)
    pitch = np.full(n, -1, dtype=np.int64)
    pitch[ok] = np.rint(librosa.hz_to_midi(f0[ok])).astype(np.int64)

    min_frames = max(1, round(MIN_NOTE_S * sr / HOP))
    segments = _absorb_blips(_runs(pitch), min_frames)
    segments = _absorb_octave_errors(segments, round(OCTAVE_BLIP_S * sr / HOP))
    segments = _fill_gaps(segments, min_frames)
    envelope = librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP)
    onsets = librosa.onset.onset_detect(onset_envelope=envelope, sr=sr, hop_length=HOP,
                                        units="frames")
    onsets = np.asarray(onsets, dtype=np.int64)
    segments = _snap_to_onsets(segments, onsets, round(ONSET_SNAP_S[0] * sr / HOP),
                               round(ONSET_SNAP_S[1] * sr / HOP), min_frames)
    short_rms = librosa.feature.rms(y=y, frame_length=FRAME // 4, hop_length=HOP)[0][:n]
    segments = _split_rearticulations(segments, onsets, short_rms, envelope[:n],
                                      min_frames)
    notes_s = [(s.start * HOP / sr, s.end * HOP / sr, s.pitch, float(rms[s.start:s.end].max()))
               for s in segments if s.pitch >= 0 and s.end - s.start >= min_frames]
    if not notes_s:
        raise NoNotesError(f"{name}: no sung or played notes found")

    estimated = qpm is None
    if qpm is None:
        tempo = librosa.feature.tempo(onset_envelope=envelope, sr=sr, hop_length=HOP)
        qpm = float(round(fold_tempo(float(np.atleast_1d(tempo)[0]))))  # whole qpm
    step = 60.0 / qpm / STEPS_PER_QUARTER
    origin = notes_s[0][0]
    peak = max(level for *_, level in notes_s)
    by_step: dict[int, tuple[float, Note]] = {}  # onset step -> (seconds held, note)
    for start, end, p, level in notes_s:
        first = round((start - origin) / step)
        last = max(first + 1, round((end - origin) / step))
        velocity = int(np.clip(round(127 * math.sqrt(level / peak)), 30, 127))
        note = Note(first, last, int(np.clip(p, 0, 127)), velocity)
        if first not in by_step or end - start > by_step[first][0]:
            by_step[first] = (end - start, note)  # two onsets on one step: the longer wins
    line = monophonic([note for _, note in by_step.values()], 0, 16, qpm)
    total = -(-line.total_steps // 16) * 16
    melody = Melody(line.notes, total, 16, qpm, (4, 4))
    _LOGGER.info("%s: %d notes at %.1f qpm%s", name, len(melody.notes), qpm,
                 " (estimated)" if estimated else "")
    return Transcription(melody, float(qpm), estimated, seconds, sample_rate, channels,
                         tuple(s for s, *_ in notes_s))


def transcribe_file(path: str | os.PathLike[str], qpm: float | None = None) -> Transcription:
    """Transcribe an audio file (WAV, FLAC, Ogg, AIFF), with what was found on the way."""
    audio, sample_rate = read_audio(path)
    return transcribe_array(audio, sample_rate, qpm, name=str(path))


def transcribe(path: str | os.PathLike[str], qpm: float | None = None) -> Melody:
    """The melody of an audio file (WAV, FLAC, Ogg, AIFF); see the module docstring."""
    return transcribe_file(path, qpm).melody
