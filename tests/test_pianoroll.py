"""Piano rolls: every octave's C and every pitch the melody plays are labelled, legibly,
and titles say what made the melody."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from melodyvae.melody import Melody, Note
from melodyvae.pianoroll import (
    UNUSED_C_COLOUR,
    pitch_name,
    pitch_ticks,
    plot_melodies,
    roll_figure,
    roll_title,
)


def melody_of(pitches: list[int]) -> Melody:
    return Melody(tuple(Note(2 * i, 2 * i + 2, p) for i, p in enumerate(pitches)), 64, 16,
                  120.0)


def test_every_c_and_every_used_pitch_is_labelled() -> None:
    melody = melody_of([62, 66, 69, 74, 62])  # D4 F#4 A4 D5: spans C5, near C4
    ticks = pitch_ticks(melody)
    assert [p for p, _, _ in ticks] == [60, 62, 66, 69, 72, 74]
    assert [(name, used) for _, name, used in ticks] == [
        ("C4", False), ("D4", True), ("F#4", True), ("A4", True), ("C5", False), ("D5", True)]
    ax = roll_figure([melody]).axes[0]
    labels = ax.get_yticklabels()
    assert [label.get_text() for label in labels] == ["C4", "D4", "F#4", "A4", "C5", "D5"]
    grey = [label.get_text() for label in labels if label.get_color() == UNUSED_C_COLOUR]
    assert grey == ["C4", "C5"]


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(36, 96), min_size=1, max_size=32))
def test_labels_never_overlap(pitches: list[int]) -> None:
    """However wide the range, the roll grows so no two pitch labels collide."""
    fig = roll_figure([melody_of(pitches)])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    boxes = sorted((label.get_window_extent(renderer) for label in
                    fig.axes[0].get_yticklabels()), key=lambda box: box.y0)
    assert all(a.y1 <= b.y0 + 0.5 for a, b in zip(boxes, boxes[1:], strict=False)), \
        [(round(b.y0), round(b.y1)) for b in boxes]
    assert {label.get_text() for label in fig.axes[0].get_yticklabels()} >= {
        pitch_name(p) for p in pitches}


def test_titles_say_what_made_the_melody() -> None:
    assert roll_title("melody_003", "hier-4bar", 0.5, 7) == \
        "melody_003 — hier-4bar, temperature 0.5, seed 7"
    assert roll_title("melody_000", "hier-4bar", 0.0, 0) == \
        "melody_000 — hier-4bar, temperature 0, seed 0"
    assert roll_title("hum", source="transcribed from hum.wav at 96 qpm") == \
        "hum — transcribed from hum.wav at 96 qpm"
    assert roll_title("plain") == "plain"


def test_stacked_rolls_are_written(tmp_path: Path) -> None:
    path = plot_melodies([melody_of([60, 64]), melody_of([40, 90])], tmp_path / "r.png",
                         titles=["a", "b"])
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="2 titles for 1 melodies"):
        plot_melodies([melody_of([60])], tmp_path / "x.png", titles=["a", "b"])
