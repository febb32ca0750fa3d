"""Audio out: render MIDI files and melodies to WAV (or any format soundfile writes).

FluidSynth with a General MIDI soundfont renders when both are installed (Debian's
``fluidsynth`` package brings ``TimGM6mb.sf2``); otherwise a small built-in synth does. The
result is peak-normalised to -1 dBFS and written as 16-bit PCM with soundfile.
"""

from __future__ import annotations

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

from melodyvae.audiofile import AudioError, normalise, read_audio, write_audio
from melodyvae.limits import MAX_AUDIO_SECONDS, MAX_MIDI_BYTES, AudioTooLongError
from melodyvae.melody import Melody

_LOGGER = logging.getLogger(__name__)

RENDER_SAMPLE_RATE = 44_100  # Hz, WAV previews
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


class SynthError(AudioError):
    """FluidSynth or the soundfont asked for is missing or failed."""


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


def _midi_notes(midi_path: Path, max_bytes: int = MAX_MIDI_BYTES
                ) -> tuple[list[tuple[float, float, int, int]], float]:
    """Pitched notes (start s, end s, pitch, velocity) of a MIDI file, and its end time."""
    from melodyvae.midi import load_pretty_midi

    pm = load_pretty_midi(midi_path, max_bytes=max_bytes)
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
                sample_rate: int = RENDER_SAMPLE_RATE, *, max_bytes: int = MAX_MIDI_BYTES,
                max_seconds: float = MAX_AUDIO_SECONDS) -> RenderResult:
    """Render a MIDI file to an audio file (see :func:`choose_synth` for ``synth``).

    A file over ``max_bytes`` is refused before it is read, and one that plays for longer
    than ``max_seconds`` before anything is synthesized (a few bytes of MIDI can ask for
    hours of sound)."""
    midi_path, out_path = Path(midi_path), Path(out_path)
    notes, end = _midi_notes(midi_path, max_bytes)  # checks the file is MIDI first
    if not notes:
        from melodyvae.midi import EmptyMidiError

        raise EmptyMidiError(f"{midi_path}: no pitched notes to render")
    if end > max_seconds:
        raise AudioTooLongError(f"{midi_path}: plays for {end:.1f} s, the limit is "
                                f"{max_seconds:g} s")
    engine, sf2 = choose_synth(synth, soundfont)
    if engine == "fluidsynth" and sf2 is not None:
        audio = _run_fluidsynth(midi_path, sf2, sample_rate)
    else:
        audio = synthesize(notes, sample_rate)
    write_audio(out_path, normalise(audio), sample_rate)
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
