"""A performer's live session: the clock that places bar lines in time, the notes played
on it, and the answer settings (see live.py for how answers are scheduled)."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from melodyvae.melody import Melody, Note, monophonic
from melodyvae.server.state import ClientState

if TYPE_CHECKING:
    from melodyvae.server.answers import Pending

DEFAULT_AMOUNT = 0.3  # echo: standard deviations of noise added to the phrase's z
DEFAULT_ATTRIBUTE_AMOUNT = 1.0  # contrast: how far along the attribute vector
DEFAULT_MIX = 0.5  # blend: 0 = the phrase played, 1 = the client's current z
MAX_NOTES = 512  # performer notes kept per client (the newest)


@dataclass
class LiveClock:
    """Bar lines in Unix time: step ``s`` (a 16th) sounds at ``origin + s * seconds_per_step``;
    step 0 is a bar line."""

    qpm: float  # quarter notes per minute
    origin: float  # Unix seconds of step 0

    @property
    def seconds_per_step(self) -> float:
        return 60.0 / self.qpm / 4

    def time_of(self, step: float) -> float:
        return self.origin + step * self.seconds_per_step

    def position(self, at: float) -> float:
        """Where time ``at`` falls, in (fractional) steps."""
        return (at - self.origin) / self.seconds_per_step

    def set_tempo(self, qpm: float, step: float, at: float) -> None:
        """Change the tempo so that ``step`` still falls at ``at``."""
        self.qpm = qpm
        self.origin = at - step * self.seconds_per_step


@dataclass
class Played:
    """A performer's note; times are positions on the live clock in steps (not rounded)."""

    pitch: int
    velocity: int
    on: float
    off: float | None = None  # None while held


@dataclass
class Session:
    """One client's listening state and answer settings."""

    client: ClientState
    clock: LiveClock
    listening: bool = False
    synced: bool = False  # the clock was set by /mvae/sync (listening does not move it)
    mode: str = "echo"
    amount: float = DEFAULT_AMOUNT
    attribute: str | None = None
    attribute_amount: float = DEFAULT_ATTRIBUTE_AMOUNT
    mix: float = DEFAULT_MIX
    notes: deque[Played] = field(default_factory=lambda: deque(maxlen=MAX_NOTES))
    held: dict[int, Played] = field(default_factory=dict)  # sounding notes by pitch
    next_line: int = 0  # the next phrase line (absolute step) to answer
    last_line: int | None = None  # the last line answered (never answered twice)
    requested: int | None = None  # a bar line /mvae/answer asked for
    pending: dict[int, Pending] = field(default_factory=dict)  # answers being composed, by line
    count: int = 0  # answers begun (numbers their seeds)
    answered: int = 0
    dropped: int = 0  # not ready one lookahead before their bar line
    silent: int = 0  # phrase lines where nothing had been played
    failed: int = 0  # the model failed, or its answer stayed silent
    drafts_sent: int = 0  # answered with a draft: the phrase's last notes came too late
    worst_margin: float = math.inf  # seconds: the least time an answer was sent early
    least_spare: float = math.inf  # seconds: the least time an answer sent was ready
    #                                before it had to be (one lookahead before its line)

    def press(self, pitch: int, velocity: int, at: float) -> None:
        self.release(pitch, at)
        played = Played(pitch, velocity, at)
        self.notes.append(played)
        self.held[pitch] = played

    def release(self, pitch: int, at: float) -> None:
        played = self.held.pop(pitch, None)
        if played is not None:
            played.off = at

    def forget_notes(self) -> None:
        self.notes.clear()
        self.held.clear()
        self.pending.clear()

    def call(self, line: int, steps: int, steps_per_bar: int) -> Melody | None:
        """What was played in the ``steps`` before step ``line``, on the 16th grid and made
        monophonic; notes still sounding end at ``line``. None when nothing was played."""
        start = line - steps
        grid = []
        for played in self.notes:
            on = round(played.on)
            if not start <= on < line:
                continue
            off = line if played.off is None else min(line, round(played.off))
            grid.append(Note(on - start, max(on + 1, off) - start, played.pitch,
                             max(1, played.velocity)))
        if not grid:
            return None
        return monophonic(grid, steps, steps_per_bar, self.clock.qpm)
