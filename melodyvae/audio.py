"""Audio in and out behind one import: rendering (:mod:`melodyvae.render`), transcription
(:mod:`melodyvae.transcribe`) and audio files (:mod:`melodyvae.audiofile`). The command line
and the server import from here; code that needs only one side can import that module."""

from melodyvae.audiofile import (
    AUDIO_SUFFIXES,
    AudioError,
    NotAudioError,
    SilentAudioError,
    looks_like_audio,
    read_audio,
    write_audio,
)
from melodyvae.render import (
    RENDER_SAMPLE_RATE,
    RenderResult,
    SynthError,
    choose_synth,
    find_soundfont,
    fluidsynth_path,
    render_melody,
    render_midi,
    synthesize,
)
from melodyvae.transcribe import (
    NoNotesError,
    Transcription,
    transcribe,
    transcribe_array,
    transcribe_file,
)

__all__ = [
    "AUDIO_SUFFIXES",
    "RENDER_SAMPLE_RATE",
    "AudioError",
    "NoNotesError",
    "NotAudioError",
    "RenderResult",
    "SilentAudioError",
    "SynthError",
    "Transcription",
    "choose_synth",
    "find_soundfont",
    "fluidsynth_path",
    "looks_like_audio",
    "read_audio",
    "render_melody",
    "render_midi",
    "synthesize",
    "transcribe",
    "transcribe_array",
    "transcribe_file",
    "write_audio",
]
