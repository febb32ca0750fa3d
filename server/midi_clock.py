"""Following a host's MIDI clock: 24 ticks per quarter note, Start / Continue / Stop and the
song position pointer. No ports here: times come in, predictions go out (tests drive it
with made-up times).

:class:`TickClock` fits a straight line through the times of the recent ticks and predicts
when any tick falls. A host's clock jitters (a DAW sends it from a busy thread; JACK
delivers it once per period), so one late tick only counts as an outlier. Three ticks in a
row off the line on the same side, each further off, on a clean line of their own, are a
tempo change and the fit starts again from them. Twelve in a row equally far off are a new
phase, or, a whole number of ticks off, ticks lost on the way (a busy system drops MIDI):
those are counted, so the song position stays right. Anything else (ticks held up on the
way and delivered bunched) is ignored — for a quarter note at most: then the line is fitted
again from the latest twelve ticks, whatever they are. After half a second without a tick (or a
quarter note) a new line starts.

:class:`Transport` numbers the ticks as the host's song does: after Start the next tick is
tick 0 (bar 1's downbeat), after Continue it is the song position pointer's.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from melodyvae.melody import STEPS_PER_QUARTER

TICKS_PER_QUARTER = 24  # MIDI clock resolution
TICKS_PER_STEP = TICKS_PER_QUARTER // STEPS_PER_QUARTER  # 6 ticks per 16th
TICKS_PER_SPP = 6  # a song position pointer counts 16ths ("MIDI beats")
WINDOW = 48  # ticks in the fit (two quarter notes)
TOLERANCE = 0.003  # seconds off the line a tick may fall before it is an outlier ...
RELATIVE_TOLERANCE = 0.15  # ... or this share of a tick, whichever is larger
CONFIRM = 3  # outliers in a row on one side, ever further off, that mean a new tempo ...
CLEAN = 0.0015  # ... if they lie this close (seconds) to a line of their own
STEADY = 12  # outliers in a row equally far off that mean lost ticks or a new phase
LOST_LOCK = 24  # outliers in a row, whatever their pattern, after which the line is refitted
GAP, GAP_TICKS = 0.5, 24  # silence (seconds, and ticks) after which a new line starts
MIN_QPM, MAX_QPM = 20.0, 400.0  # tempi a host may plausibly send


def qpm_of(seconds_per_tick: float) -> float:
    return 60.0 / (seconds_per_tick * TICKS_PER_QUARTER)


def seconds_per_tick(qpm: float) -> float:
    return 60.0 / (qpm * TICKS_PER_QUARTER)


class TickClock:
    """When each tick falls: ``predict(n)`` for tick ``n`` (counted from the first tick
    seen, whatever the transport did)."""

    def __init__(self, qpm: float = 120.0, window: int = WINDOW) -> None:
        self.points: deque[tuple[int, float]] = deque(maxlen=window)  # (tick, seconds)
        self.period = seconds_per_tick(qpm)  # seconds per tick, the latest estimate
        self.count = 0  # ticks seen; the next one is number ``count``
        self.last: float | None = None  # time of the latest tick
        self._a = 0.0  # the line: t = a + period * n
        self._outliers: list[tuple[int, float]] = []
        self._recent: deque[tuple[int, float]] = deque(maxlen=STEADY)  # the latest ticks
        self._off_line = 0  # outliers since the last tick on the line
        self.resets = 0  # tempo changes detected
        self.lost = 0  # ticks that never came (counted by the time the next ones came)
        self.bursts = 0  # runs of ticks that came bunched up (a stalled system), ignored

    def tick(self, at: float) -> int:
        """A tick arrived at ``at`` (seconds); its number."""
        n = self.count
        self.count += 1
        if self.last is not None and at - self.last > max(GAP, GAP_TICKS * self.period):
            self.points.clear()  # the clock stopped a while: start a new line
            self._outliers, self._off_line = [], 0
        self.last = at
        self._recent.append((n, at))
        if len(self.points) >= 2:
            error = at - (self._a + self.period * n)
            if abs(error) > self._tolerance():
                self._off_line += 1
                if self._off_line >= LOST_LOCK:  # whatever it is, it lasts: follow it
                    self._outliers, self._off_line = [], 0
                    self._refit(list(self._recent))
                    return n
                same_side = all((e - (self._a + self.period * k)) * error > 0
                                for k, e in self._outliers)
                self._outliers = [*self._outliers, (n, at)] if same_side else [(n, at)]
                if len(self._outliers) < CONFIRM:
                    return n
                return self._confirmed(n)
        self._outliers, self._off_line = [], 0
        self.points.append((n, at))
        self._fit()
        return n

    def _tolerance(self) -> float:
        return max(TOLERANCE, RELATIVE_TOLERANCE * self.period)

    def _confirmed(self, n: int) -> int:
        """:data:`CONFIRM` or more ticks in a row off the line, on one side; the number of
        tick ``n`` (renumbered if ticks were lost). What they mean:

        * the same distance off the line, :data:`STEADY` ticks long: a whole number of
          ticks — ticks were lost on the way, so count them; any other — the host's phase
          moved, so fit again from them;
        * further off the line at every tick, on a clean line of their own at a plausible
          tempo: a new tempo, so fit again from them;
        * anything else (ticks held up on the way, then delivered bunched): forget them.
        """
        outliers = self._outliers
        periods = [(t - (self._a + self.period * k)) / self.period for k, t in outliers]
        mean = sum(periods) / len(periods)
        tolerance = self._tolerance() / self.period
        if all(abs(p - mean) <= tolerance for p in periods):  # steady: lost ticks or phase
            if len(outliers) < STEADY:
                return n  # or the system held them up a moment: wait and see
            self._outliers = []
            shift = round(mean)
            if shift and abs(mean - shift) <= tolerance:
                self.count += shift
                self.lost += shift
                self.points.extend((k + shift, t) for k, t in outliers)
                self._fit()
                return n + shift
            self._refit(outliers)
            return n
        recent = outliers[-CONFIRM:]
        last = periods[-CONFIRM:]
        drifting = all(abs(b) > abs(a) for a, b in zip(last, last[1:], strict=False))
        slope, intercept = _line(recent)
        clean = all(abs(t - intercept - slope * k) <= CLEAN for k, t in recent)
        self._outliers = []
        if drifting and clean and self.period / 2 <= slope <= self.period * 2:
            self._refit(recent)
        else:
            self.bursts += 1
        return n

    def _refit(self, points: list[tuple[int, float]]) -> None:
        """A new tempo or phase: fit from these ticks only."""
        self.points.clear()
        self.points.extend(points)
        self.resets += 1
        self._fit()

    def _fit(self) -> None:
        points = self.points
        if len(points) == 1:
            n0, t0 = points[0]
            self._a = t0 - self.period * n0
            return
        slope, intercept = _line(points)
        low, high = seconds_per_tick(MAX_QPM), seconds_per_tick(MIN_QPM)
        if not math.isfinite(slope) or not low <= slope <= high:
            slope = min(high, max(low, slope)) if math.isfinite(slope) else self.period
            intercept = sum(t - slope * n for n, t in points) / len(points)
        self.period, self._a = slope, intercept

    @property
    def ready(self) -> bool:
        """At least two ticks on the current line: the tempo is measured, not assumed."""
        return len(self.points) >= 2

    @property
    def qpm(self) -> float:
        return qpm_of(self.period)

    def predict(self, n: float) -> float:
        """The time of tick ``n`` (may be fractional or in the past)."""
        return self._a + self.period * n

    def reset(self) -> None:
        """Forget the ticks (the source went away); keep the tempo as a first guess."""
        self.points.clear()
        self._outliers, self._off_line = [], 0
        self.last = None


def _line(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least squares ``t = intercept + slope * n`` through (n, t) points: (slope,
    intercept)."""
    mean_n = sum(n for n, _ in points) / len(points)
    mean_t = sum(t for _, t in points) / len(points)
    sxx = sum((n - mean_n) ** 2 for n, _ in points)
    sxy = sum((n - mean_n) * (t - mean_t) for n, t in points)
    slope = sxy / sxx if sxx else math.nan
    return slope, mean_t - (slope if math.isfinite(slope) else 0.0) * mean_n


@dataclass
class Transport:
    """The host's song position: which tick of the song the next clock tick is."""

    running: bool = False
    next_tick: int = 0  # song tick the next clock tick stands for (while running)
    offset: int | None = None  # clock tick number minus song tick; None until a tick came
    pointer: int = 0  # song position (16ths) set by a song position pointer while stopped

    def start(self) -> None:
        """MIDI Start: the next tick is bar 1's downbeat."""
        self.running, self.next_tick, self.offset, self.pointer = True, 0, None, 0

    def resume(self) -> None:
        """MIDI Continue: the next tick is at the song position pointer."""
        self.running, self.next_tick, self.offset = True, self.pointer * TICKS_PER_SPP, None

    def stop(self) -> None:
        self.running = False
        self.offset = None

    def song_position(self, sixteenths: int) -> None:
        self.pointer = sixteenths
        if not self.running:
            self.next_tick = sixteenths * TICKS_PER_SPP

    def tick(self, clock_tick: int) -> int | None:
        """A clock tick numbered ``clock_tick`` came; its song tick (None while stopped).
        Song ticks follow the clock's numbers, so ticks it counted as lost are skipped."""
        if not self.running:
            return None
        if self.offset is None:
            self.offset = clock_tick - self.next_tick
        song = clock_tick - self.offset
        self.next_tick = song + 1
        return song
