"""Piano-roll pictures of melodies (PNG), drawn with matplotlib's Agg canvas.

No pyplot: each picture is its own ``Figure`` on a ``FigureCanvasAgg``, so nothing depends
on a display or on a global backend, and drawing is safe from any thread. Time runs left to
right in bars (dark lines on bar lines, light ones on beats), pitch bottom to top with
every octave's C and every pitch the melody uses labelled (the C rows a melody does not use
in grey), and a note's shade follows its velocity. :func:`roll_title` writes the titles the
command line gives its rolls: what made the melody (model, temperature, seed) or where it
came from.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from melodyvae.melody import Melody

_LOGGER = logging.getLogger(__name__)

NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
INCHES_PER_BAR = 1.6  # picture width per bar
MIN_WIDTH = 4.0  # inches
ROLL_HEIGHT = 3.0  # inches per melody, at least
INCHES_PER_PITCH = 0.12  # rolls with a wide range grow taller, so every label stays legible
DPI = 100  # pixels per inch
UNUSED_C_COLOUR = "#888888"  # labels of C rows the melody does not use


def pitch_name(pitch: int) -> str:
    """MIDI pitch -> scientific name (60 -> C4)."""
    return f"{NOTE_NAMES[pitch % 12]}{pitch // 12 - 1}"


def pitch_range(melody: Melody) -> tuple[int, int]:
    """The lowest and highest row drawn: two pitches beyond the melody, at least an octave."""
    pitches = [n.pitch for n in melody.notes] or [60]
    low, high = min(pitches) - 2, max(pitches) + 2
    if high - low < 12:  # show at least an octave
        low -= (12 - (high - low)) // 2
        high = low + 12
    return low, high


def pitch_ticks(melody: Melody) -> list[tuple[int, str, bool]]:
    """The labelled rows, bottom to top: (pitch, name, used by the melody) for every C in
    the drawn range and every pitch the melody plays."""
    low, high = pitch_range(melody)
    used = {n.pitch for n in melody.notes}
    rows = sorted(used | {p for p in range(low, high + 1) if p % 12 == 0})
    return [(p, pitch_name(p), p in used) for p in rows]


def roll_title(name: str, model: str | None = None, temperature: float | None = None,
               seed: int | None = None, source: str | None = None) -> str:
    """A roll's title: the melody's name, then what made it or where it came from, e.g.
    'melody_003 — hier-4bar, temperature 0.5, seed 7' or 'hum — transcribed from hum.wav'."""
    parts = [part for part in (
        model,
        None if temperature is None else f"temperature {temperature:g}",
        None if seed is None else f"seed {seed}",
        source) if part]
    return f"{name} — {', '.join(parts)}" if parts else name


def _roll_height(melody: Melody) -> float:
    low, high = pitch_range(melody)
    return max(ROLL_HEIGHT, INCHES_PER_PITCH * (high - low + 1) + 1.0)


def _draw(ax: Any, melody: Melody, title: str | None) -> None:
    from matplotlib.patches import Rectangle

    spb, spq = melody.steps_per_bar, melody.steps_per_quarter
    bars = max(1, melody.n_bars)
    low, high = pitch_range(melody)
    for pitch in range(low, high + 1):  # black-key rows shaded like a keyboard
        if NOTE_NAMES[pitch % 12].endswith("#"):
            ax.axhspan(pitch - 0.5, pitch + 0.5, color="#f0f0f0", zorder=0, lw=0)
    for step in range(0, bars * spb + 1, spq):
        bar_line = step % spb == 0
        ax.axvline(step, color="#555555" if bar_line else "#dddddd",
                   lw=1.0 if bar_line else 0.5, zorder=1)
    for note in melody.notes:
        shade = 0.35 + 0.65 * note.velocity / 127
        ax.add_patch(Rectangle((note.start, note.pitch - 0.4), note.duration, 0.8,
                               facecolor=(0.15, 0.2 + 0.35 * shade, 0.55 + 0.4 * shade),
                               edgecolor="#1a2a40", lw=0.5, zorder=2))
    ax.set_xlim(0, bars * spb)
    ax.set_ylim(low - 0.5, high + 0.5)
    ax.set_xticks([b * spb for b in range(bars)])
    ax.set_xticklabels([str(b + 1) for b in range(bars)])
    ticks = pitch_ticks(melody)
    ax.set_yticks([p for p, _, _ in ticks])
    labels = ax.set_yticklabels([name for _, name, _ in ticks], fontsize=7)
    for label, (_, _, used) in zip(labels, ticks, strict=True):
        if not used:
            label.set_color(UNUSED_C_COLOUR)
    ax.set_xlabel("bar")
    if title:
        ax.set_title(title, fontsize=9)


def roll_figure(melodies: Sequence[Melody], titles: Sequence[str] | None = None) -> Any:
    """Melodies as piano rolls stacked top to bottom on one matplotlib ``Figure``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not melodies:
        raise ValueError("no melodies to draw")
    if titles is not None and len(titles) != len(melodies):
        raise ValueError(f"{len(titles)} titles for {len(melodies)} melodies")
    bars = max(max(1, m.n_bars) for m in melodies)
    heights = [_roll_height(m) for m in melodies]
    fig = Figure(figsize=(max(MIN_WIDTH, INCHES_PER_BAR * bars), sum(heights)), dpi=DPI)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(melodies), 1, height_ratios=heights)
    for i, melody in enumerate(melodies):
        _draw(fig.add_subplot(grid[i, 0]), melody,
              titles[i] if titles is not None else None)
    fig.tight_layout()
    return fig


def plot_melodies(melodies: Sequence[Melody], path: str | os.PathLike[str],
                  titles: Sequence[str] | None = None) -> Path:
    """Draw melodies as piano rolls stacked top to bottom and write one PNG."""
    path = Path(path)
    roll_figure(melodies, titles).savefig(str(path), format="png",
                                          metadata={"Software": None})
    _LOGGER.debug("piano roll written to %s", path)
    return path


def save_pianoroll(melody: Melody, path: str | os.PathLike[str], title: str | None = None
                   ) -> Path:
    """Draw one melody as a piano roll and write it as a PNG."""
    return plot_melodies([melody], path, None if title is None else [title])
