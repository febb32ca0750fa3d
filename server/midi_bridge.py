"""The server's MIDI side: playback out on a port, knobs, keys and the host's clock in.

The MIDI input is one more client of the server, under the address :data:`MIDI_KEY`: its
knobs become ``/mvae/axis`` messages and its keys ``/mvae/listen`` / ``/mvae/in/noteon`` /
``/mvae/in/noteoff``, handled by the same handlers as over OSC (bundle times are the times
the MIDI system stamped), so latest-wins decoding, bar-line takeovers and live answers work
exactly as they do for an OSC client. It is attached to the core (as a browser tab is), so
its replies never reach the network: they come back to :meth:`MidiBridge.reply`. Its
stream's lease is renewed while the ports are open: a loop started by a knob plays on
until the host stops it or the server stops.

Every client's playback goes out on the MIDI output (the player's note tap). Without
``--midi-clock`` the MIDI client's loop starts with the first knob turned, at
``--midi-tempo``. With it, the host's transport drives that loop: it starts on the next
bar line after MIDI Start or Continue, follows the clock's tempo and phase (its notes are
queued by song tick and sent at the clock's latest prediction), and stops on Stop — or when
the clock goes quiet, or its port vanishes.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mido

from melodyvae.errors import MelodyVAEError
from melodyvae.server.engine import DecodeJob
from melodyvae.server.midi_clock import (
    TICKS_PER_QUARTER,
    TICKS_PER_STEP,
    TickClock,
    Transport,
    seconds_per_tick,
)
from melodyvae.server.midi_map import CCMap, check_map, default_map
from melodyvae.server.midi_port import (
    MidiInput,
    MidiOutput,
    NoteEvent,
    Port,
    api_name,
    choose_api,
    open_port,
)
from melodyvae.server.protocol import PREFIX, Args, Message, parse_packet
from melodyvae.server.state import Addr

if TYPE_CHECKING:
    from melodyvae.server.core import ServerCore

_LOGGER = logging.getLogger(__name__)

MIDI_KEY: Addr = ("midi", 0)  # the MIDI input's client (no network address looks like it)
POLL = 0.001  # seconds between reads of the input port
START_MARGIN = 0.03  # seconds: a loop starts on a bar line at least lookahead + this away
AHEAD_TICKS = 4  # notes are sent at most this many ticks past the last tick received
STALL_TICKS = 24  # a running clock silent for this many ticks (and ...
STALL_SECONDS = 0.5  # ... at least this long) has stopped
LEASE_RENEWAL = 0.25  # seconds between renewals of the MIDI client's stream lease (--lease
# is at least 1 s)
SWITCH_INTERVAL = 0.001  # seconds a Python thread may hold the interpreter while the MIDI
# output waits for it (Python's default is 0.005: up to 5 ms late)
TEMPO_STEP = 0.05  # qpm: the host's tempo is passed on when it moved more than this
MAX_REPLIES = 1024  # replies to the MIDI client waiting to be read
DEFAULT_QPM = 120.0


@dataclass(frozen=True)
class MidiSettings:
    """``melodyvae serve`` MIDI options, checked."""

    name: str = "melodyvae"  # virtual ports: NAME (out) and "NAME in"
    out_port: str | None = None  # an existing output port instead of the virtual one
    in_port: str | None = None  # an existing input port instead of the virtual one
    channel: int = 1  # 1..16, for the notes sent
    clock: bool = False  # follow the input's MIDI clock and transport
    cc_map: CCMap | None = None  # None: the defaults
    api: str = "auto"
    tempo: float = DEFAULT_QPM  # the MIDI client's tempo without --midi-clock


@dataclass
class MidiPorts:
    """The opened ports (before the model loads: a bad port fails first)."""

    api: int
    output: Port
    input: Port

    def close(self) -> None:
        self.output.close()
        self.input.close()

    def describe(self) -> str:
        return (f"MIDI out {self.output.name!r}, in {self.input.name!r} "
                f"({api_name(self.api)})")


def open_ports(settings: MidiSettings) -> MidiPorts:
    """Open the output and input ports the settings ask for."""
    api = choose_api(settings.api)
    output = open_port(api, "output", settings.out_port, settings.name)
    try:
        in_port = open_port(api, "input", settings.in_port, f"{settings.name} in")
    except BaseException:
        output.close()
        raise
    return MidiPorts(api, output, in_port)


@dataclass
class MidiStats:
    received: int = 0  # messages read
    bad: int = 0  # not MIDI (garbage bytes), ignored
    ignored: int = 0  # MIDI the server does not use (unmapped CCs, program changes, ...)
    ticks: int = 0
    knobs: int = 0  # CCs that moved an axis
    notes: int = 0  # note-ons fed to the listener
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=32))  # latest distinct
    # problems reported (/mvae/error replies, refused messages)


class MidiBridge:
    """MIDI ports on a :class:`ServerCore`: start, then close."""

    def __init__(self, core: ServerCore, ports: MidiPorts, settings: MidiSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.ports = ports
        self.settings = settings
        self.clock = clock
        axes = core.axes
        if settings.cc_map is None:
            self.knobs = default_map(axes.pc_names, list(axes.attributes))
            if not self.knobs:
                _LOGGER.warning("the model has no latent axes: MIDI knobs move nothing "
                                "(run melodyvae axes MODEL)")
        else:
            check_map(settings.cc_map, axes.names)
            self.knobs = dict(settings.cc_map)
        self.ticks = TickClock(settings.tempo)
        self.transport = Transport()
        self.following = False  # the MIDI client's loop is on the host's song grid
        self.want_start = False  # the host is running and the loop should (re)start
        self._asked = False  # a melody to start with is being decoded
        self.stats = MidiStats()
        self.lock = threading.Lock()  # clock and transport (input thread, output thread)
        self.output = MidiOutput(ports.output, settings.channel - 1, self.song_tick_time,
                                 clock)
        self.input = MidiInput(ports.input, clock)
        self._replies: deque[bytes] = deque(maxlen=MAX_REPLIES)
        self._held: set[int] = set()  # keys held on the input
        self._listening = False
        self._stalled = False
        self._renewed = -math.inf  # when the MIDI client's lease was last renewed
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._switch = sys.getswitchinterval()
        core.player.note_tap = self._tap

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.core.attach(MIDI_KEY, self.reply)
        if not self.settings.clock:
            self._dispatch("/mvae/tempo", "f", [self.settings.tempo])
        self._switch = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch, SWITCH_INTERVAL))
        self.output.start()
        self._thread = threading.Thread(target=self._loop, name="mvae-midi-in", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop reading, release every sounding note, close the ports."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(2.0)
        self.core.detach(MIDI_KEY)  # its loop stops; the note-off still goes to the output
        self.core.player.note_tap = None
        self.output.close()
        self.input.close()
        sys.setswitchinterval(self._switch)

    # ------------------------------------------------------------ the core's side
    def reply(self, data: bytes) -> None:
        """A datagram the server sent the MIDI client (any thread; read later)."""
        self._replies.append(data)

    # ------------------------------------------------------------ playback's side
    def _tap(self, key: Addr, step: int, at: float, notes: Sequence[NoteEvent]) -> None:
        """Every note playback sends (player lock held: only queue it)."""
        if key == MIDI_KEY and self.following:
            self.output.schedule(key, notes, tick=step * TICKS_PER_STEP)
        else:
            self.output.schedule(key, notes, at=at)

    def song_tick_time(self, tick: float) -> float | None:
        """When song tick ``tick`` falls by the host clock's latest estimate; None while the
        clock has not come within :data:`AHEAD_TICKS` of it (a clock that stops stops the
        notes at once, not after the stall timeout)."""
        with self.lock:
            offset = self.transport.offset
            if offset is None or tick > self.transport.next_tick - 1 + AHEAD_TICKS:
                return None
            return self.ticks.predict(tick + offset)

    # ------------------------------------------------------------ the input thread
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self.poll()
            except Exception:  # a bug must not leave the port deaf
                _LOGGER.exception("MIDI input failed; going on")
            self._stopping.wait(POLL)

    def poll(self) -> int:
        """Read and handle what came in; the number of messages (the thread's step)."""
        change = self.input.watch()
        if change == "vanished":
            self._lost_input()
        messages = self.input.read() if self.input.present else []
        for data, at in messages:
            try:
                self.handle(data, at)
            except Exception:  # a bug for one message must not lose the others
                _LOGGER.exception("handling MIDI %s failed", bytes(data[:8]).hex(" "))
        self._read_replies()
        self._check_stall()
        now = self.clock()
        if now - self._renewed >= LEASE_RENEWAL:
            self._renewed = now
            self.core.player.touch(MIDI_KEY)
        return len(messages)

    def handle(self, data: Sequence[int], at: float) -> None:
        """One MIDI message that arrived at ``at`` (server time); never raises for bad
        bytes."""
        self.stats.received += 1
        try:
            message = mido.Message.from_bytes(list(data))
        except (ValueError, TypeError, IndexError, KeyError):
            self.stats.bad += 1
            return
        kind = message.type
        if kind == "clock":
            self._tick(at)
        elif kind in ("start", "continue", "stop", "songpos"):
            self._transport(kind, getattr(message, "pos", 0), at)
        elif kind == "note_on" and message.velocity > 0:
            self._note(message.note, message.velocity, at)
        elif kind in ("note_on", "note_off"):
            self._note(message.note, 0, at)
        elif kind == "control_change":
            self._knob(message.control, message.value)
        else:
            self.stats.ignored += 1

    # ------------------------------------------------------------ knobs and keys
    def _knob(self, control: int, value: int) -> None:
        knob = self.knobs.get(control)
        if knob is None:
            self.stats.ignored += 1
            return
        self.stats.knobs += 1
        self._dispatch("/mvae/axis", "sf", [knob.axis, knob.value(value)])
        if not self.settings.clock and not self.core.player.is_playing(MIDI_KEY):
            self._dispatch("/mvae/play", "", [])

    def _note(self, pitch: int, velocity: int, at: float) -> None:
        if velocity:
            if not self._listening:
                self._listening = True
                self._dispatch("/mvae/listen", "i", [1], at)
            self.stats.notes += 1
            self._held.add(pitch)
            self._dispatch("/mvae/in/noteon", "ii", [pitch, velocity], at)
        elif pitch in self._held:
            self._held.discard(pitch)
            self._dispatch("/mvae/in/noteoff", "i", [pitch], at)

    def _lost_input(self) -> None:
        """The input port vanished: held keys are released, a followed host stops."""
        now = self.clock()
        for pitch in sorted(self._held):
            self._dispatch("/mvae/in/noteoff", "i", [pitch], now)
        self._held.clear()
        with self.lock:
            self.ticks.reset()
        if self.transport.running:
            self._transport("stop", 0, now)

    # ------------------------------------------------------------ the host's clock
    def _tick(self, at: float) -> None:
        self.stats.ticks += 1
        if not self.settings.clock:
            return
        with self.lock:
            song = self.transport.tick(self.ticks.tick(at))
            ready = self.ticks.ready
        self._stalled = False
        self.output.wake()
        if song is None:
            return
        if self.want_start and ready:
            self._start_loop(at, song)
        elif self.following:
            self._follow(song)

    def _transport(self, kind: str, position: int, at: float) -> None:
        if not self.settings.clock:
            self.stats.ignored += 1
            return
        with self.lock:
            if kind == "songpos":
                self.transport.song_position(position)
                return
            if kind == "stop":
                self.transport.stop()
            elif kind == "start":
                self.transport.start()
            else:
                self.transport.resume()
        self._stop_loop()
        self.want_start = kind != "stop"

    def _song_origin(self) -> tuple[float, float] | None:
        """(Unix time of song step 0, qpm) by the latest estimate."""
        with self.lock:
            offset = self.transport.offset
            if offset is None:
                return None
            return self.ticks.predict(offset), self.ticks.qpm

    def _start_loop(self, now: float, song: int) -> None:
        """Start the MIDI client's loop on the first bar line it can still make (``song``:
        the latest song tick)."""
        estimate = self._song_origin()
        if estimate is None:
            return
        origin, qpm = estimate
        core = self.core
        with core.lock:
            client = core.client(MIDI_KEY)
            melody, lookahead = client.melody, client.lookahead
        if melody is None:  # decode one first; its reply starts the loop
            if not self._asked:
                self._asked = True
                core.engine.submit_decode(DecodeJob(client, f"{PREFIX}/play",
                                                    client.temperature, client.seed))
            return
        step_seconds = seconds_per_tick(qpm) * TICKS_PER_STEP
        position = (max(now, self.clock()) + lookahead + START_MARGIN - origin) / step_seconds
        bar = melody.steps_per_bar
        start = max(0, math.ceil(position / bar) * bar)
        self.want_start = False
        self._sync_listener(song, qpm)
        self.following = True
        core.player.play_from(MIDI_KEY, melody, origin, qpm, start, lookahead)

    def _follow(self, song: int) -> None:
        estimate = self._song_origin()
        if estimate is None:
            return
        origin, qpm = estimate
        self.core.player.follow(MIDI_KEY, origin, qpm)
        if song % (TICKS_PER_QUARTER * 4) == 0:  # every bar
            self._sync_listener(song, qpm)
            if not self.core.player.is_playing(MIDI_KEY):  # an answer played and ended
                self.want_start = True

    def _sync_listener(self, song: int, qpm: float) -> None:
        """Put the MIDI client's tempo and live clock on the host's bars: song tick ``song``
        (a recent one: /mvae/sync takes times near now) falls where the clock says."""
        at = self.song_tick_time(song)
        if at is None:
            return
        qpm = min(400.0, max(20.0, qpm))
        with self.core.lock:
            client = self.core.client(MIDI_KEY)
            changed = abs(client.qpm - qpm) > TEMPO_STEP
        if changed:
            self._dispatch("/mvae/tempo", "f", [qpm])
        self._dispatch("/mvae/sync", "f", [song / TICKS_PER_QUARTER], at)

    def _stop_loop(self) -> None:
        self.following = False
        self.core.player.stop(MIDI_KEY)
        self.output.release(MIDI_KEY)

    def _check_stall(self) -> None:
        if not (self.settings.clock and self.transport.running):
            return
        with self.lock:
            last, period = self.ticks.last, self.ticks.period
        if last is None or self._stalled:
            return
        if self.clock() - last > max(STALL_SECONDS, STALL_TICKS * period):
            self._stalled = True
            _LOGGER.warning("the MIDI clock stopped without a Stop; stopping playback")
            self._transport("stop", 0, self.clock())

    # ------------------------------------------------------------ the server's replies
    def _read_replies(self) -> None:
        while self._replies:
            data = self._replies.popleft()
            for item in parse_packet(data):
                if not isinstance(item, Message):
                    continue
                if item.address == f"{PREFIX}/melody/end":
                    self._asked = False
                if item.address == f"{PREFIX}/melody/end" and self.want_start \
                        and self.transport.running:
                    with self.lock:
                        ready = self.ticks.ready and self.transport.offset is not None
                        song = self.transport.next_tick - 1
                    if ready:
                        self._start_loop(self.clock(), song)
                elif item.address == f"{PREFIX}/error" and len(item.args) == 2:
                    self.reply_error(str(item.args[0]), str(item.args[1]))

    # ------------------------------------------------------------ dispatch
    def _dispatch(self, address: str, tags: str, args: list[object],
                  at: float | None = None) -> None:
        """Handle a message as if the MIDI client had sent it over OSC (at time ``at``)."""
        message = Message(address, tuple(args), tags, at)
        handler = self.core.handlers[address]
        try:
            with self.core.lock:
                handler(self.core.client(MIDI_KEY), Args(message))
        except MelodyVAEError as e:
            self.reply_error(address, str(e))

    def reply_error(self, address: str, reason: str) -> None:
        text = f"{address}: {reason}"
        if text not in self.stats.errors:
            self.stats.errors.append(text)
            _LOGGER.warning("MIDI: %s", text)

