"""Audio in: transcribe a sung, hummed or played line (one note at a time) to a melody.

Four stages, each a function of its own:

1. :func:`prepare` — the samples as mono float (channels averaged), resampled to 22,050 Hz
   with soxr and peak-normalised. A file is read in blocks straight to that
   (:func:`melodyvae.limits.read_audio_mono`, refused from its header when longer than the
   limit), so it is never held whole at its own rate and channels.
2. :func:`analyse` — one frame every 256 samples (11.6 ms): librosa's pYIN (46 ms window,
   C2-C7, quarter-semitone bins) gives a pitch and a voiced/unvoiced decision, frames more
   than 40 dB below the loudest count as silence, and an onset strength with SuperFlux's
   maximum filter across frequency (Böck & Widmer 2013), so a pitch that wobbles does not
   look like an attack. The frame features are computed over blocks of
   :data:`BLOCK_FRAMES` frames (24 s) with :data:`MARGIN_FRAMES` of context on each side
   (:func:`melodyvae.limits.framewise_in_blocks`): pYIN's work memory (about 3 MB per
   second of sound) is that of one block, so a long recording costs little more than its
   samples. A recording shorter than one block is analysed whole.
3. :func:`segment` — notes from voicing, pitch and onsets:

   * a voiced stretch is cut where its pitch *moves and stays*: the next 46 ms all lie more
     than 0.6 semitone from the median of the last 174 ms (about one vibrato cycle), so
     vibrato (a singer's is 0.5-1.5 %, under a quarter tone) and a slow drift never cut a
     note, while a step of a semitone does;
   * each piece takes the median pitch of its frames, leaving out its first 60 ms when it
     is long enough (the glide into it), rounded to a semitone;
   * pieces under 60 ms (the middle of a glide) join the note after them, pieces under
     150 ms whole octaves from a neighbour (tracker slips at attacks) join that neighbour,
     unvoiced dropouts under 60 ms inside one pitch (breath noise, a consonant) are closed,
     and touching pieces of one pitch merge;
   * a note's start moves to an onset found up to 100 ms before it (the previous note may
     ring on), and a note splits in two (a repeated note) at an onset where the level also
     rises 1.4-fold from a dip and the onset is at least half as strong as a typical attack:
     both are needed, so neither a level swell nor a pitch wobble splits a note alone.
4. :func:`quantize` — the tempo is librosa's estimate from the onset strength (its
   tempogram averaged block by block, folded into 60-180 qpm and rounded to a whole
   number) unless given; note onsets and ends are
   rounded to the 16th-note grid counting from the first note (leading silence is dropped
   and the first note lands on the first downbeat).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from melodyvae import limits
from melodyvae.audiofile import AudioError, SilentAudioError, normalise
from melodyvae.melody import STEPS_PER_QUARTER, Melody, Note, monophonic

_LOGGER = logging.getLogger(__name__)

ANALYSIS_SAMPLE_RATE = 22_050  # Hz, what transcription resamples to
HOP = 256  # samples between frames at ANALYSIS_SAMPLE_RATE (11.6 ms)
FRAME = 1024  # pYIN analysis window in samples (46 ms)
FMIN_HZ = 65.41  # C2: lowest pitch transcribed
FMAX_HZ = 2093.0  # C7: highest pitch transcribed
PYIN_RESOLUTION = 0.25  # semitones per pitch bin (pYIN's Viterbi cost grows with bins^2)
PYIN_MAX_TRANSITION = 200.0  # octaves per second pYIN's pitch track may move (librosa's
#                              default, 36, lets wide leaps lock onto the octave below)
SILENCE_DB = 40.0  # frames this far below the loudest frame are silence
MIN_VOICED_PROBABILITY = 0.15  # pYIN voicing probability below which a frame is unvoiced
SILENT_PEAK = 1e-4  # a file whose peak stays below this (-80 dBFS) has no sound
SUPERFLUX_MAX_BANDS = 3  # onset strength: maximum filter over this many mel bands
PITCH_MOVE = 0.6  # semitones from the recent median that count as a new pitch ...
PITCH_MOVE_S = 0.045  # ... when every frame of this long stays there
PITCH_REFERENCE_S = 0.17  # the recent median covers this long (about one vibrato cycle)
GLIDE_IN_S = 0.06  # a note's pitch leaves out this much of its start, if long enough
MIN_NOTE_S = 0.06  # pieces shorter than this are blips (glides, attacks), not notes
PASSING_S = 0.12  # a piece this short between a lower and a higher note is a glide's
#                   passing pitch (a 16th note lasts longer up to 125 qpm)
OCTAVE_BLIP_S = 0.15  # a piece this short an octave or two off its neighbour is that note
ONSET_SNAP_S = (0.10, 0.03)  # an onset this long before / after a pitch change marks
#                              where the note really begins
REARTICULATION_RATIO = 2.0  # a dip in the 12 ms level inside one pitch, this many times
#                             below the level on both sides ...
REARTICULATION_WINDOW_S = 0.1  # ... within this long, ...
REARTICULATION_STRENGTH = 2.0  # ... rising with an onset this many times stronger than the
#                                note's median onset strength: a repeated note
TEMPO_RANGE = (60.0, 180.0)  # qpm; estimates are folded by octaves into [low, high)
TEMPO_WINDOW_S = 8.0  # seconds of onset strength each tempogram frame looks at (librosa's)
BLOCK_FRAMES = 2048  # frames analysed at once (23.8 s): the work memory of one block
MARGIN_FRAMES = 128  # frames of context on each side of a block (1.5 s; pYIN's pitch track
#                      settles well within it, so a block's frames match a whole analysis)


class NoNotesError(AudioError):
    """Sound, but no pitched notes in it."""


@dataclass(frozen=True)
class Transcription:
    """A transcribed melody and how it was found."""

    melody: Melody  # on the 16th grid, 16 steps per bar, at ``qpm``
    qpm: float  # the tempo used for the grid
    tempo_estimated: bool  # True when qpm was estimated from the audio
    seconds: float  # length of the input
    sample_rate: int  # the input's sample rate
    channels: int  # the input's channels
    onset_seconds: tuple[float, ...]  # note onsets found, before quantizing


@dataclass(frozen=True)
class Frames:
    """What :func:`analyse` hears, one value per frame (``HOP`` samples)."""

    midi: np.ndarray  # (n,) fractional MIDI pitch; NaN where nothing is sung or played
    rms: np.ndarray  # (n,) level, 46 ms window
    short_rms: np.ndarray  # (n,) level, 12 ms window: attacks and dips
    strength: np.ndarray  # (n,) onset strength (SuperFlux)
    onsets: np.ndarray  # frames where the onset strength peaks
    sample_rate: int  # Hz of the analysed signal

    @property
    def seconds_per_frame(self) -> float:
        return HOP / self.sample_rate

    def frames(self, seconds: float) -> int:
        """How many frames make ``seconds`` (at least one)."""
        return max(1, round(seconds / self.seconds_per_frame))


@dataclass(frozen=True)
class _Segment:
    start: int  # first frame
    end: int  # frame after the last
    pitch: int  # MIDI pitch, -1 for silence


# ------------------------------------------------------------------ 1. prepare


def prepare(audio: np.ndarray, sample_rate: int, name: str = "<audio>") -> np.ndarray:
    """(n,) or (n, channels) float audio -> mono at ``ANALYSIS_SAMPLE_RATE``, peak 0 dBFS."""
    import librosa

    frames = audio if audio.ndim == 2 else audio[:, None]
    mono = frames.astype(np.float32).mean(axis=1)
    if mono.size == 0 or float(np.max(np.abs(mono))) < SILENT_PEAK:
        raise SilentAudioError(f"{name}: silent, nothing to transcribe")
    if sample_rate != ANALYSIS_SAMPLE_RATE:
        mono = librosa.resample(mono, orig_sr=sample_rate, target_sr=ANALYSIS_SAMPLE_RATE)
    return _padded(normalise(mono, 0.0))


def _padded(y: np.ndarray) -> np.ndarray:
    return np.pad(y, (0, FRAME - y.size)) if y.size < FRAME else y


def prepare_mono(sound: limits.MonoAudio, name: str = "<audio>") -> np.ndarray:
    """Mono audio already at ``ANALYSIS_SAMPLE_RATE`` (as :func:`melodyvae.limits.read_audio_mono`
    reads it) peak-normalised in place: no copy of the recording is made."""
    if sound.sample_rate != ANALYSIS_SAMPLE_RATE:
        raise ValueError(f"wants audio at {ANALYSIS_SAMPLE_RATE} Hz, not {sound.sample_rate}")
    y = sound.samples
    if y.size == 0 or sound.peak < SILENT_PEAK:
        raise SilentAudioError(f"{name}: silent, nothing to transcribe")
    peak = max(float(y.max()), -float(y.min()))  # no |y| temporary the size of the recording
    if peak > 0.0:
        y *= np.float32(1.0 / peak)
    return _padded(y)


# ------------------------------------------------------------------ 2. analyse


def _frame_features(y: np.ndarray, sr: int) -> np.ndarray:
    """(6, frames): pYIN's f0 (Hz, NaN unvoiced), voiced flag, voicing probability, the
    46 ms and 12 ms levels and the onset strength, one column per ``HOP`` samples, frame
    ``t`` centred on sample ``t * HOP``."""
    import librosa

    f0, voiced, probability = librosa.pyin(y, fmin=FMIN_HZ, fmax=FMAX_HZ, sr=sr,
                                           frame_length=FRAME, hop_length=HOP,
                                           resolution=PYIN_RESOLUTION,
                                           max_transition_rate=PYIN_MAX_TRANSITION)
    rms = librosa.feature.rms(y=y, frame_length=FRAME, hop_length=HOP)[0]
    short_rms = librosa.feature.rms(y=y, frame_length=FRAME // 4, hop_length=HOP)[0]
    strength = librosa.onset.onset_strength(y=y, sr=sr, hop_length=HOP,
                                            max_size=SUPERFLUX_MAX_BANDS)
    rows = (f0, voiced, probability, rms, short_rms, strength)
    n = min(len(values) for values in rows)
    return np.stack([np.asarray(values[:n], np.float64) for values in rows])


def analyse(y: np.ndarray, sr: int = ANALYSIS_SAMPLE_RATE) -> Frames:
    """Pitch, voicing, levels and onsets of a prepared signal, frame by frame (over blocks
    of :data:`BLOCK_FRAMES`; see the module docstring)."""
    import librosa

    features = limits.framewise_in_blocks(y, HOP, lambda x: _frame_features(x, sr),
                                          BLOCK_FRAMES, MARGIN_FRAMES)  # (6, n)
    f0, voiced, probability, rms, short_rms, strength = features
    n = len(f0)
    voiced = voiced > 0.5
    rms, short_rms, strength = (np.asarray(v, np.float32) for v in (rms, short_rms, strength))
    loud = rms > rms.max() * 10 ** (-SILENCE_DB / 20)
    # pYIN's Viterbi path can stay "voiced" through noise whose voicing probability is ~0
    sung = voiced & (probability >= MIN_VOICED_PROBABILITY) & loud & np.isfinite(f0)
    midi = np.full(n, np.nan)
    midi[sung] = librosa.hz_to_midi(f0[sung])
    onsets = librosa.onset.onset_detect(onset_envelope=strength, sr=sr, hop_length=HOP,
                                        units="frames")
    return Frames(midi, rms, short_rms, strength, np.asarray(onsets, dtype=np.int64), sr)


# ------------------------------------------------------------------ 3. segment


def segment(frames: Frames) -> list[_Segment]:
    """Notes and rests as frame ranges (see the module docstring, stage 3)."""
    min_frames = frames.frames(MIN_NOTE_S)
    segments = _pitch_pieces(frames.midi, frames.frames(PITCH_MOVE_S),
                             frames.frames(PITCH_REFERENCE_S), frames.frames(GLIDE_IN_S))
    segments = _absorb_blips(segments, min_frames)
    segments = _absorb_passing(segments, frames.midi, frames.frames(PASSING_S))
    segments = _absorb_octave_errors(segments, frames.frames(OCTAVE_BLIP_S))
    segments = _fill_gaps(segments, min_frames)
    segments = _snap_to_onsets(segments, frames.onsets, frames.frames(ONSET_SNAP_S[0]),
                               frames.frames(ONSET_SNAP_S[1]), min_frames)
    return _split_rearticulations(segments, frames.short_rms, frames.strength, min_frames,
                                  frames.frames(REARTICULATION_WINDOW_S))


def _runs(values: np.ndarray) -> list[_Segment]:
    segments: list[_Segment] = []
    start = 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[start]:
            segments.append(_Segment(start, i, int(values[start])))
            start = i
    return segments


def _pitch_moves(midi: np.ndarray, sustain: int, reference: int) -> list[int]:
    """Frames of one voiced stretch where the pitch leaves the median of the last
    ``reference`` frames by more than ``PITCH_MOVE`` semitones and stays away on one side
    for ``sustain`` frames: where a new note (or the glide into it) begins."""
    cuts: list[int] = []
    start = 0
    for i in range(1, len(midi) - sustain + 1):
        if i == start:
            continue
        ref = float(np.median(midi[max(start, i - reference):i]))
        ahead = midi[i:i + sustain] - ref
        if np.all(ahead > PITCH_MOVE) or np.all(ahead < -PITCH_MOVE):
            cuts.append(i)
            start = i
    return cuts


def _pitch_pieces(midi: np.ndarray, sustain: int, reference: int, glide_in: int
                  ) -> list[_Segment]:
    """Voiced stretches cut where the pitch moves, unvoiced stretches as rests. A piece's
    pitch is the rounded median of its frames without the first ``glide_in`` (the glide or
    scoop into it) and, before a move, the last ``sustain`` (where the glide out begins),
    when at least ``glide_in`` frames remain."""
    segments: list[_Segment] = []
    for run in _runs(np.isfinite(midi).astype(np.int64)):
        if run.pitch == 0:
            segments.append(_Segment(run.start, run.end, -1))
            continue
        stretch = midi[run.start:run.end]
        bounds = [0, *_pitch_moves(stretch, sustain, reference), len(stretch)]
        for a, b in zip(bounds, bounds[1:], strict=False):
            # leave out the glide in, and the start of the glide out before a move
            tail = sustain if b < len(stretch) else 0
            body = stretch[a + glide_in:b - tail]
            if len(body) < glide_in:
                body = stretch[a:b]
            segments.append(_Segment(run.start + a, run.start + b,
                                     int(np.rint(np.median(body)))))
    return _merge_equal(segments)


def _absorb_passing(segments: list[_Segment], midi: np.ndarray, max_frames: int
                    ) -> list[_Segment]:
    """Give a piece whose pitch lies strictly between the pitches of the pieces touching it
    on both sides to the piece after it when it is shorter than ``max_frames``, or shorter
    than twice that and still gliding (a line fitted to its pitch climbs or falls by more
    than ``PITCH_MOVE`` towards the next piece): the pitches a portamento passes on its
    way, not notes."""
    out = list(segments)
    i = 1
    while i < len(out) - 1:
        prev, seg, nxt = out[i - 1], out[i], out[i + 1]
        length = seg.end - seg.start
        between = (seg.pitch >= 0 and prev.pitch >= 0 and nxt.pitch >= 0
                   and prev.end == seg.start and seg.end == nxt.start
                   and min(prev.pitch, nxt.pitch) < seg.pitch < max(prev.pitch, nxt.pitch))
        if between and length >= max_frames and length < 2 * max_frames:
            track = midi[seg.start:seg.end]
            known = np.isfinite(track)
            slope = np.polyfit(np.flatnonzero(known), track[known], 1)[0]
            between = slope * length * np.sign(nxt.pitch - prev.pitch) > PITCH_MOVE
        if between and length < 2 * max_frames:
            out[i + 1] = dataclasses.replace(nxt, start=seg.start)
            del out[i]
            continue
        i += 1
    return out


def _absorb_blips(segments: list[_Segment], min_frames: int) -> list[_Segment]:
    """Give pitched pieces shorter than ``min_frames`` to the pitched piece right after them
    (a glide into a note) or, before silence, to the piece before them (a blip at a note's
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
    """Give pieces shorter than ``max_frames`` that sit whole octaves from the piece right
    after (or else right before) them to that piece: pitch trackers slip an octave at
    attacks."""
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


def _split_rearticulations(segments: list[_Segment], level: np.ndarray,
                           strength: np.ndarray, min_frames: int, window: int
                           ) -> list[_Segment]:
    """Split a note where it is sung or played again: at a dip in ``level`` that both sides
    rise ``REARTICULATION_RATIO``-fold above within ``window`` frames, when the onset
    strength of the rise reaches ``REARTICULATION_STRENGTH`` times the note's median (a
    level that swells and falls, and a pitch that wobbles, raise the onset strength little
    against the note's own). The note restarts where that strength peaks."""
    out: list[_Segment] = []
    for seg in segments:
        if seg.pitch < 0:
            out.append(seg)
            continue
        typical = max(float(np.median(strength[seg.start:seg.end])), 1e-6)
        start = seg.start
        for d in range(seg.start + min_frames, seg.end - min_frames):
            if d - start < min_frames or level[d] > level[d - 1] or level[d] > level[d + 1]:
                continue
            floor = REARTICULATION_RATIO * max(float(level[d]), 1e-9)
            if (level[max(start, d - window):d].max() <= floor
                    or level[d + 1:min(seg.end, d + window + 1)].max() <= floor):
                continue
            rise = strength[d:min(seg.end, d + window)]
            attack = d + int(np.argmax(rise))
            if (rise.max() >= REARTICULATION_STRENGTH * typical and attack - start >= min_frames
                    and seg.end - attack >= min_frames):
                out.append(_Segment(start, attack, seg.pitch))
                start = attack
        out.append(_Segment(start, seg.end, seg.pitch))
    return out


def _snap_to_onsets(segments: list[_Segment], onsets: np.ndarray, before: int, after: int,
                    min_frames: int) -> list[_Segment]:
    """Move each note's start to the nearest onset from ``before`` frames earlier to
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


# ------------------------------------------------------------------ 4. quantize


def fold_tempo(qpm: float, low: float = TEMPO_RANGE[0], high: float = TEMPO_RANGE[1]) -> float:
    """Move a tempo by factors of two into [low, high)."""
    if qpm <= 0 or not math.isfinite(qpm):
        return 120.0
    while qpm < low:
        qpm *= 2
    while qpm >= high:
        qpm /= 2
    return qpm


def mean_tempogram(strength: np.ndarray, sr: int, block_frames: int | None = None
                   ) -> np.ndarray:
    """librosa's autocorrelation tempogram of an onset strength, averaged over frames:
    (window,) where window covers ``TEMPO_WINDOW_S``. Computed over blocks of
    ``block_frames`` frames (default :data:`BLOCK_FRAMES`) with half a window of context
    on each side: the same average as
    over the whole envelope (each frame is normalised on its own), in the memory of one
    block (a whole tempogram costs ~2.5 MB per second of sound)."""
    import librosa

    block_frames = block_frames or BLOCK_FRAMES
    window = int(librosa.time_to_frames(TEMPO_WINDOW_S, sr=sr, hop_length=HOP))
    half = window // 2 + 1
    n = len(strength)
    total = np.zeros(window)
    for first in range(0, n, block_frames):
        last = min(n, first + block_frames)
        lo, hi = max(0, first - half), min(n, last + half)
        tg = librosa.feature.tempogram(onset_envelope=strength[lo:hi], sr=sr,
                                       hop_length=HOP, win_length=window)  # (window, hi-lo)
        total += tg[:, first - lo:last - lo].sum(axis=1)
    return total / max(1, n)


def estimate_tempo(frames: Frames) -> float:
    """librosa's tempo from the onset strength, folded into ``TEMPO_RANGE``, whole qpm."""
    import librosa

    tg = mean_tempogram(frames.strength, frames.sample_rate)
    tempo = librosa.feature.tempo(tg=tg[:, None], sr=frames.sample_rate, hop_length=HOP)
    return float(round(fold_tempo(float(np.atleast_1d(tempo)[0]))))


def quantize(notes: list[tuple[float, float, int, float]], qpm: float) -> Melody:
    """(start s, end s, pitch, level) notes -> a melody on the 16th grid at ``qpm``, counted
    from the first note; velocity follows the level (square root, 30-127)."""
    step = 60.0 / qpm / STEPS_PER_QUARTER
    origin = notes[0][0]
    peak = max(level for *_, level in notes)
    by_step: dict[int, tuple[float, Note]] = {}  # onset step -> (seconds held, note)
    for start, end, p, level in notes:
        first = round((start - origin) / step)
        last = max(first + 1, round((end - origin) / step))
        velocity = int(np.clip(round(127 * math.sqrt(level / peak)), 30, 127))
        note = Note(first, last, int(np.clip(p, 0, 127)), velocity)
        if first not in by_step or end - start > by_step[first][0]:
            by_step[first] = (end - start, note)  # two onsets on one step: the longer wins
    line = monophonic([note for _, note in by_step.values()], 0, 16, qpm)
    total = -(-line.total_steps // 16) * 16
    return Melody(line.notes, total, 16, qpm, (4, 4))


# ------------------------------------------------------------------ the whole way


def transcribe_array(audio: np.ndarray, sample_rate: int, qpm: float | None = None,
                     name: str = "<audio>") -> Transcription:
    """Transcribe (n,) or (n, channels) float audio; see the module docstring."""
    _check_tempo(qpm)
    channels = audio.shape[1] if audio.ndim == 2 else 1
    seconds = audio.shape[0] / sample_rate
    return _transcribe(prepare(audio, sample_rate, name), qpm, name, seconds, sample_rate,
                       channels)


def transcribe_file(path: str | os.PathLike[str], qpm: float | None = None, *,
                    max_seconds: float = limits.MAX_AUDIO_SECONDS,
                    root: str | os.PathLike[str] | None = None,
                    follow_links: bool = True) -> Transcription:
    """Transcribe an audio file (WAV, FLAC, Ogg, AIFF), with what was found on the way.

    The file is opened and checked by :func:`melodyvae.limits.read_audio_mono` (with
    ``root`` and ``follow_links`` as there): refused from its header when longer than
    ``max_seconds``, else read in blocks straight to mono at ``ANALYSIS_SAMPLE_RATE``.
    Peak memory grows by about 0.1 MB per second of sound (docs/benchmarks.md).
    """
    _check_tempo(qpm)
    sound = limits.read_audio_mono(path, target_rate=ANALYSIS_SAMPLE_RATE,
                                   max_seconds=max_seconds, root=root,
                                   follow_links=follow_links)
    name = str(path)
    header = sound.header
    seconds = header.frames / header.sample_rate
    return _transcribe(prepare_mono(sound, name), qpm, name, seconds, header.sample_rate,
                       header.channels)


def transcribe(path: str | os.PathLike[str], qpm: float | None = None) -> Melody:
    """The melody of an audio file (WAV, FLAC, Ogg, AIFF); see the module docstring."""
    return transcribe_file(path, qpm).melody


def _check_tempo(qpm: float | None) -> None:
    if qpm is not None and not (0 < qpm < 1000):
        raise AudioError(f"tempo {qpm} qpm is out of range")


def _transcribe(y: np.ndarray, qpm: float | None, name: str, seconds: float,
                sample_rate: int, channels: int) -> Transcription:
    frames = analyse(y)
    min_frames = frames.frames(MIN_NOTE_S)
    hop_s = frames.seconds_per_frame
    notes = [(s.start * hop_s, s.end * hop_s, s.pitch, float(frames.rms[s.start:s.end].max()))
             for s in segment(frames) if s.pitch >= 0 and s.end - s.start >= min_frames]
    if not notes:
        raise NoNotesError(f"{name}: no sung or played notes found")
    estimated = qpm is None
    qpm = estimate_tempo(frames) if qpm is None else qpm
    melody = quantize(notes, qpm)
    _LOGGER.info("%s: %d notes at %.1f qpm%s", name, len(melody.notes), qpm,
                 " (estimated)" if estimated else "")
    return Transcription(melody, float(qpm), estimated, seconds, sample_rate, channels,
                         tuple(start for start, *_ in notes))
