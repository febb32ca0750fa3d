"""MIDI ports: find and open them (python-rtmidi), send notes on time, read with timestamps.

Messages are built and parsed with mido; ports are python-rtmidi objects, used directly
rather than through mido's rtmidi backend because the server needs two things it hides:
the time each input message arrived (rtmidi's delta times, taken where the MIDI system
delivers them, not where a Python thread gets around to reading them) and reading without a
callback (with JACK an rtmidi callback runs on JACK's process thread, which must never wait
for Python's interpreter lock).

:class:`MidiOutput` holds note events until their time and sends them from its own thread;
it remembers every note-on it sent, so each gets exactly one note-off — when the melody
says, when a client stops, when the server closes, or when a port that vanished comes back.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import mido
import rtmidi

from melodyvae.errors import MelodyVAEError

_LOGGER = logging.getLogger(__name__)

WATCH = 1.0  # seconds between checks that an opened port is still there
QUEUE_LIMIT = 8192  # messages rtmidi keeps between two reads of an input
STAMP_WINDOW = 5.0  # seconds of arrivals the input's clock offset is taken over
SPIN = 0.0015  # seconds before an event the output thread stops waiting and sleeps exactly
REALTIME_PRIORITY = 5  # SCHED_FIFO priority asked for the output thread (JACK's is 10)
Key = Any  # who a note belongs to (a client's address)
NoteEvent = tuple[int, int]  # (pitch, velocity); velocity 0 is a note-off


class MidiError(MelodyVAEError):
    """No MIDI system, or a port that cannot be found or opened."""


# ---------------------------------------------------------------------------- systems


def compiled_apis() -> dict[str, int]:
    """The MIDI systems this python-rtmidi was built with, by short name, in its order."""
    return {rtmidi.get_api_name(api): api for api in rtmidi.get_compiled_api()}


def _client(kind: type[Any], api: int, name: str | None = None) -> Any:
    try:
        return kind(api, name=name) if kind is rtmidi.MidiOut else \
            kind(api, name=name, queue_size_limit=QUEUE_LIMIT)
    except rtmidi.RtMidiError as e:
        raise MidiError(f"{rtmidi.get_api_display_name(api)}: {e}") from e


def choose_api(name: str = "auto") -> int:
    """The rtmidi API to use: the one named, or the first that works (ALSA before JACK)."""
    apis = compiled_apis()
    if name != "auto":
        if name not in apis:
            raise MidiError(f"--midi-api {name}: this python-rtmidi has only "
                            f"{', '.join(apis) or 'no MIDI system'}")
        _client(rtmidi.MidiOut, apis[name]).delete()
        return apis[name]
    problems = []
    for api in apis.values():
        try:
            _client(rtmidi.MidiOut, api).delete()
            return api
        except MidiError as e:
            problems.append(str(e))
    raise MidiError("no MIDI system to open ports on ("
                    + "; ".join(problems or ["python-rtmidi has none"])
                    + "); on Linux start JACK or load ALSA's snd-seq module")


def api_name(api: int) -> str:
    return str(rtmidi.get_api_display_name(api))


def has_virtual_ports(api: int) -> bool:
    """Windows' MIDI system cannot create ports; the others can."""
    return api not in (rtmidi.API_WINDOWS_MM, rtmidi.API_RTMIDI_DUMMY)


def list_ports(api: int) -> tuple[list[str], list[str]]:
    """(inputs, outputs): the ports melodyvae could read from and send to."""
    midi_in, midi_out = _client(rtmidi.MidiIn, api), _client(rtmidi.MidiOut, api)
    try:
        return list(midi_in.get_ports()), list(midi_out.get_ports())
    finally:
        midi_in.delete()
        midi_out.delete()


def find_port(names: Sequence[str], spec: str, kind: str) -> int:
    """The index of the port ``spec`` names: an index, an exact name (Windows' number after
    it optional), or a unique part of one (case ignored)."""
    if spec.isdigit():
        index = int(spec)
        if index < len(names):
            return index
        raise MidiError(f"no MIDI {kind} number {index} (there are {len(names)}; "
                        f"melodyvae midi ports lists them)")
    if spec in names:
        return list(names).index(spec)
    numbered = [i for i, name in enumerate(names)  # Windows numbers its ports: "name 2"
                if re.fullmatch(re.escape(spec) + r" \d+", name)]
    if len(numbered) == 1:
        return numbered[0]
    matches = [i for i, name in enumerate(names) if spec.lower() in name.lower()]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise MidiError(f"no MIDI {kind} named {spec!r} (melodyvae midi ports lists them)")
    raise MidiError(f"MIDI {kind} {spec!r} is ambiguous: "
                    + ", ".join(repr(names[i]) for i in matches))


@dataclass
class Port:
    """An open rtmidi port and how to find it again."""

    rt: Any  # rtmidi.MidiIn or rtmidi.MidiOut
    name: str  # what it is called (a virtual port: the name it was given)
    virtual: bool  # ours (it vanishes only with the MIDI system)
    kind: str  # "input" or "output"

    def present(self) -> bool:
        """Whether the port it is connected to is still there (virtual ports always are)."""
        return self.virtual or self.name in self.rt.get_ports()

    def reopen(self) -> bool:
        """Connect again to a port that came back; False when it has not."""
        ports = self.rt.get_ports()
        if self.name not in ports:
            return False
        self.rt.close_port()
        self.rt.open_port(ports.index(self.name))
        return True

    def close(self) -> None:
        self.rt.close_port()
        self.rt.delete()


def open_port(api: int, kind: str, spec: str | None, virtual_name: str) -> Port:
    """An existing port (``spec``: name, part of a name, or index) or a virtual port named
    ``virtual_name`` (its client is named the same)."""
    cls = rtmidi.MidiIn if kind == "input" else rtmidi.MidiOut
    rt = _client(cls, api, virtual_name)
    try:
        if spec is None:
            if not has_virtual_ports(api):
                flag = "--midi-in" if kind == "input" else "--midi-out"
                raise MidiError(f"{api_name(api)} cannot create MIDI ports; open an existing "
                                f"one (e.g. a loopMIDI port) with {flag} PORT "
                                f"(melodyvae midi ports lists them)")
            rt.open_virtual_port(virtual_name)
            port = Port(rt, virtual_name, True, kind)
        else:
            names = list(rt.get_ports())
            index = find_port(names, spec, kind)
            rt.open_port(index)
            port = Port(rt, names[index], False, kind)
    except rtmidi.RtMidiError as e:
        rt.delete()
        raise MidiError(f"cannot open MIDI {kind} {spec or virtual_name!r}: {e}") from e
    except BaseException:
        rt.delete()
        raise
    if kind == "input":
        rt.ignore_types(sysex=True, timing=False, active_sense=True)
    return port


def note_message(channel: int, pitch: int, velocity: int) -> list[int]:
    """Note-on (velocity > 0) or note-off bytes on ``channel`` (0..15)."""
    kind = "note_on" if velocity else "note_off"
    return list(mido.Message(kind, channel=channel, note=pitch, velocity=velocity).bytes())


# ---------------------------------------------------------------------------- output


@dataclass(order=True)
class _Event:
    when: float  # seconds (timed events) or a song tick (ticked events)
    seq: int
    key: Key
    pitch: int
    velocity: int


class MidiOutput:
    """A thread sending note events at their times on one port and channel.

    Events come timed (Unix seconds, as playback's timetags) or, for playback that follows
    a host's MIDI clock, by song tick: those are sent at ``tick_time(tick)``, the clock's
    latest prediction, so a tempo change moves notes already queued; they wait while it
    says None (the clock has not come that far), and :meth:`wake` asks again.
    """

    def __init__(self, port: Port, channel: int = 0,
                 tick_time: Callable[[float], float | None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.port = port
        self.channel = channel  # 0..15
        self.tick_time = tick_time
        self.clock = clock
        self.cond = threading.Condition()
        self._timed: list[_Event] = []
        self._ticked: list[_Event] = []
        self._seq = itertools.count()
        self.sounding: dict[Key, Counter[int]] = {}  # note-ons sent and not yet released
        self.present = True
        self.sent = 0  # messages sent
        self.dropped = 0  # note-ons not sent (the port was gone)
        self._closed = False
        self._thread: threading.Thread | None = None
        self._next_watch = 0.0

    # ------------------------------------------------------------ from other threads
    def schedule(self, key: Key, events: Sequence[NoteEvent], at: float | None = None,
                 tick: float | None = None) -> None:
        """Queue note events (in order) at Unix time ``at`` or at song tick ``tick``."""
        with self.cond:
            if self._closed:
                return
            heap, when = (self._timed, at) if tick is None else (self._ticked, tick)
            assert when is not None
            for pitch, velocity in events:
                heapq.heappush(heap, _Event(when, next(self._seq), key, pitch, velocity))
            self.cond.notify()

    def wake(self) -> None:
        """Predictions moved (a clock tick came): recompute the next event's time."""
        with self.cond:
            self.cond.notify()

    def release(self, key: Key | None = None) -> None:
        """Drop the queued events of ``key`` (None: everyone's) and release its sounding
        notes now."""
        with self.cond:
            self._release(key)

    def _release(self, key: Key | None) -> None:
        for heap in (self._timed, self._ticked):
            heap[:] = [e for e in heap if key is not None and e.key != key]
            heapq.heapify(heap)
        for owner in list(self.sounding) if key is None else [key]:
            for pitch, count in list(self.sounding.get(owner, Counter()).items()):
                for _ in range(count):
                    self._send(owner, pitch, 0)

    # ------------------------------------------------------------ sending (cond held)
    def _send(self, key: Key, pitch: int, velocity: int) -> None:
        held = self.sounding.setdefault(key, Counter())
        if velocity == 0:
            if held[pitch] <= 0:
                return  # its note-on was never sent
            if not self.present:
                return  # sent when the port returns
            held[pitch] -= 1
            if not held[pitch]:
                del held[pitch]
        elif not self.present:
            self.dropped += 1
            return
        else:
            held[pitch] += 1
        if not held:
            del self.sounding[key]
        try:
            self.port.rt.send_message(note_message(self.channel, pitch, velocity))
            self.sent += 1
        except rtmidi.RtMidiError as e:
            _LOGGER.warning("MIDI output %r: %s", self.port.name, e)

    def _tick_time(self, tick: float) -> float | None:
        return None if self.tick_time is None else self.tick_time(tick)

    def _next(self) -> tuple[float, list[_Event]] | None:
        """The earliest event's time and heap."""
        best: tuple[float, list[_Event]] | None = None
        if self._timed:
            best = (self._timed[0].when, self._timed)
        if self._ticked:
            at = self._tick_time(self._ticked[0].when)
            if at is not None and (best is None or at < best[0]):
                best = (at, self._ticked)
        return best

    # ------------------------------------------------------------ thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="mvae-midi-out", daemon=True)
        self._thread.start()

    def close(self, timeout: float = 2.0) -> None:
        """Release every sounding note now, stop the thread, close the port."""
        with self.cond:
            self._release(None)
            self._closed = True
            self.cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self.port.close()

    def _loop(self) -> None:
        realtime()
        while True:
            with self.cond:
                if self._closed:
                    return
                try:
                    self._watch()
                    wait = self._fire_due()
                except Exception:  # a bug must not silence the port for good
                    _LOGGER.exception("MIDI output failed; going on")
                    wait = 0.01
                if wait is None or wait > SPIN:
                    self.cond.wait(WATCH if wait is None else min(WATCH, wait - SPIN))
                    continue
            time.sleep(max(0.0, wait))

    def _fire_due(self) -> float | None:
        """Send every event that is due; seconds to the next one (None: nothing queued)."""
        while True:
            nxt = self._next()
            if nxt is None:
                return None
            at, heap = nxt
            now = self.clock()
            if at > now:
                return at - now
            event = heapq.heappop(heap)
            self._send(event.key, event.pitch, event.velocity)

    def _watch(self) -> None:
        now = time.monotonic()
        if now < self._next_watch or self.port.virtual:
            return
        self._next_watch = now + WATCH
        if self.present and not self.port.present():
            self.present = False
            _LOGGER.warning("MIDI output %r vanished; notes are dropped until it returns",
                            self.port.name)
        elif not self.present and self.port.reopen():
            self.present = True
            _LOGGER.warning("MIDI output %r is back", self.port.name)
            for owner, held in list(self.sounding.items()):  # what hung when it vanished
                for pitch, count in list(held.items()):
                    for _ in range(count):
                        self._send(owner, pitch, 0)


def realtime(priority: int = REALTIME_PRIORITY) -> bool:
    """Ask for real-time scheduling of the calling thread (Linux: SCHED_FIFO, as audio
    threads have; allowed for root and for users with an rtprio limit). Whether it was
    granted: without it the thread runs as any other, and a busy machine delays it more."""
    if not hasattr(os, "sched_setscheduler"):
        return False
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:
        _LOGGER.info("no real-time scheduling for MIDI output (%s)", e)
        return False
    return True


# ---------------------------------------------------------------------------- input


class Stamps:
    """rtmidi's delta times turned into the server's clock.

    The deltas add up to the MIDI system's own time line; its offset from the server's
    clock is the smallest (arrival - stamp) seen over the last :data:`STAMP_WINDOW` seconds,
    as every message reaches the reader at or after the time it was stamped.
    """

    def __init__(self) -> None:
        self.total: float | None = None
        self.offsets: deque[tuple[float, float]] = deque()  # (arrival, arrival - total)

    def stamp(self, delta: float, arrival: float) -> float:
        self.total = 0.0 if self.total is None else self.total + max(0.0, delta)
        offset = arrival - self.total
        while self.offsets and self.offsets[0][0] < arrival - STAMP_WINDOW:
            self.offsets.popleft()
        while self.offsets and self.offsets[-1][1] >= offset:
            self.offsets.pop()  # a monotonic deque: its front is the window's minimum
        self.offsets.append((arrival, offset))
        return self.total + self.offsets[0][1]


class MidiInput:
    """Reads an input port when asked (:meth:`read`); messages come with their times."""

    def __init__(self, port: Port, clock: Callable[[], float] = time.time) -> None:
        self.port = port
        self.clock = clock
        self.stamps = Stamps()
        self.present = True
        self._next_watch = 0.0

    def read(self, limit: int = 4096) -> list[tuple[list[int], float]]:
        """Every message waiting (at most ``limit``), as (bytes, server time)."""
        out = []
        for _ in range(limit):
            item = self.port.rt.get_message()
            if item is None:
                break
            data, delta = item
            out.append((data, self.stamps.stamp(delta, self.clock())))
        return out

    def watch(self) -> str | None:
        """"vanished" or "back" when the port came or went since the last call."""
        now = time.monotonic()
        if now < self._next_watch or self.port.virtual:
            return None
        self._next_watch = now + WATCH
        if self.present and not self.port.present():
            self.present = False
            _LOGGER.warning("MIDI input %r vanished; waiting for it to return",
                            self.port.name)
            return "vanished"
        if not self.present and self.port.reopen():
            self.present = True
            self.stamps = Stamps()
            _LOGGER.warning("MIDI input %r is back", self.port.name)
            return "back"
        return None

    def close(self) -> None:
        self.port.close()
