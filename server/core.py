"""The server without its socket: the address space, per-client state and the replies.

:meth:`ServerCore.handle_datagram` is the dispatch function. It runs on the network
thread, parses and checks a datagram, updates the sender's state and either answers at
once (``/mvae/pong``, ``/mvae/status``, ``/mvae/error``...) or leaves a job for the engine,
whose results come back through :meth:`melody_ready` / :meth:`z_ready` on the worker
thread. The live messages (``/mvae/listen``, ``/mvae/in/...``, ``/mvae/answer...``) are
handled by the :class:`~melodyvae.server.live.Listener`. Tests drive it without sockets: a
list as ``send``, ``live.run_due()``, ``engine.run_pending()`` and ``player.tick()``.

Clients are told apart by where their replies go: the sender's address, unless
``--reply-host`` / ``--reply-port`` or a ``/mvae/reply`` message say otherwise (so several
one-shot ``oscsend`` calls against a server with ``--reply-port`` share one state).

Before any of that, the :class:`~melodyvae.server.guard.Guard` decides whether a datagram
is read at all and whether a reply may go out (never to the server itself, never more than
a request justifies to an unverified address, never past a byte cap per destination).
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from melodyvae.errors import MelodyVAEError
from melodyvae.melody import Melody, from_note_list
from melodyvae.server.clients import ClientTable
from melodyvae.server.engine import DecodeJob, EncodeJob, Engine
from melodyvae.server.files import FileJob, FileLoader, allowed_path
from melodyvae.server.guard import (
    DEFAULT_LEASE_S,
    DEFAULT_REPLY_RATE,
    REPLY_ONLY,
    VERIFY_ADDRESS,
    Guard,
    Network,
)
from melodyvae.server.live import Listener
from melodyvae.server.playback import Player
from melodyvae.server.protocol import (
    PREFIX,
    Args,
    Message,
    OscProtocolError,
    encode_bundle,
    encode_message,
    error_message,
    parse_packet,
)
from melodyvae.server.state import Addr, AxesError, BoundedMap, ClientState, SectionEdit

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE

_LOGGER = logging.getLogger(__name__)

MAX_TEMPERATURE = 10.0
MAX_AXIS = 10.0  # |coordinate| in standard deviations accepted by /mvae/xy and /mvae/axis
MAX_VARY = 10.0
MAX_SEED = 2**63 - 1
QPM_RANGE = (20.0, 400.0)
MAX_LOOKAHEAD_MS = 2000.0
MAX_BEATS = 10_000.0  # note-list start and duration limit, in beats
MAX_NAME = 64  # characters of a slot name
MAX_AXES_SET = 16  # (name, value) pairs one /mvae/axis may set
MAX_PATH = 1024
MAX_PING_ARGS = 16  # arguments /mvae/ping echoes back in /mvae/pong
MAX_Z = 50.0  # |value| of a latent dimension sent by /mvae/z or /mvae/z/i (z ~ N(0, I))
REPLY_ADDRESS = f"{PREFIX}/reply"
ATTACHED_HOST = "tab"  # host part of the keys of attached clients (never a UDP address)
CORNERS = ("A", "B", "C", "D")  # /mvae/blend slots: (0,0) (1,0) (0,1) (1,1)


@dataclass(frozen=True)
class ServerConfig:
    """How the server answers and what it keeps."""

    reply_host: str | None = None  # send every reply to this host instead of the sender's
    reply_port: int | None = None  # ... and to this port
    allow_dir: Path | None = None  # /mvae/encode/file reads only inside this folder
    max_clients: int = 64  # clients remembered; the least recently heard is forgotten
    max_slots: int = 64  # slots per client; the oldest is forgotten
    lookahead: float = 0.1  # seconds, default playback lookahead of a new client
    allow_from: tuple[Network, ...] = ()  # networks read besides loopback
    reply_rate: int = DEFAULT_REPLY_RATE  # bytes per second to one destination, at most
    lease: float = DEFAULT_LEASE_S  # seconds a stream plays without a message from its client


Handler = Callable[[ClientState, Args], None]


class ServerCore:
    """Dispatch, client state, and replies; threads are started by :meth:`start`."""

    def __init__(self, vae: MelodyVAE, send: Callable[[bytes, Addr], None],
                 config: ServerConfig | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.vae = vae
        self.config = config or ServerConfig()
        self._send = send
        self.lock = threading.RLock()  # client state: network, worker and playback threads
        self._send_lock = threading.Lock()
        self.guard = Guard(self.config.allow_from, self.config.reply_rate, self.config.lease,
                           self.config.max_clients * 4, self.config.reply_host)
        self.axes = vae.latent_axes
        self.clients: ClientTable[Addr, ClientState] = ClientTable(
            self.config.max_clients, self._evicted)
        self.routes: BoundedMap[Addr, int] = BoundedMap(self.config.max_clients * 4)
        self.engine = Engine(vae, self, self.lock, self.config.max_clients)
        self.player = Player(self.send, clock, self.config.lease, self._expired)
        self.files = FileLoader(self._file_read, self.failed, self.config.max_clients,
                                self.config.allow_dir)
        self.melody_ids = itertools.count(1)
        self.live = Listener(vae, self.player, self.engine, self.lock, self.axes.attributes,
                             self.send, self.error, lambda: next(self.melody_ids), clock)
        self.random = random.Random()  # seeds for /mvae/sample and /mvae/vary without one
        self.received = 0  # datagrams handled
        self.errors = 0  # /mvae/error replies sent
        # Clients on another transport (browser tabs, web.py): replies go to their callable
        self.attached: dict[Addr, Callable[[bytes], None]] = {}
        self.handlers: dict[str, Handler] = {
            f"{PREFIX}/{name}": handler for name, handler in (
                ("ping", self._ping), ("status", self._status), ("stats", self._stats),
                ("z", self._z), ("z/i", self._z_i), ("z/get", self._z_get),
                ("xy", self._xy), ("axis", self._axis), ("axes", self._axes),
                ("sample", self._sample), ("temperature", self._temperature),
                ("seed", self._seed), ("vary", self._vary),
                ("slot/store", self._slot_store), ("slot/recall", self._slot_recall),
                ("interp", self._interp), ("blend", self._blend),
                ("encode", self._encode), ("encode/file", self._encode_file),
                ("tempo", self._tempo), ("lookahead", self._lookahead),
                ("play", self._play), ("stop", self._stop),
                ("section/vary", self._section_vary), ("section/encode", self._section_encode),
            )
        }
        self.handlers.update(self.live.handlers())  # /mvae/listen, /mvae/in/..., /mvae/answer

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.engine.start()
        self.player.start()
        self.files.start()
        self.live.start()

    def close(self) -> None:
        self.live.close()
        self.player.close()
        self.files.close()
        self.engine.close()

    # ------------------------------------------------------------ sending
    def send(self, data: bytes, addr: Addr) -> None:
        """Send one datagram if the guard lets it go (a trusted destination, under its byte
        cap, not the server itself); safe from any thread; a failed send is logged, not
        raised. An attached client's replies go to it (a gone tab's are dropped)."""
        deliver = self.attached.get(addr)
        if deliver is not None:
            deliver(data)
            return
        if addr[0] == ATTACHED_HOST:
            return
        if not self.guard.trusted(addr) or not self.guard.may_send(len(data), addr):
            return
        self._send_raw(data, addr)

    def _send_raw(self, data: bytes, addr: Addr) -> None:
        try:
            with self._send_lock:
                self._send(data, addr)
        except OSError as e:
            _LOGGER.warning("cannot send to %s:%s: %s", addr[0], addr[1], e)

    def reply_to(self, sender: Addr) -> Addr:
        """Where replies to ``sender`` go (and so which client it is)."""
        if sender in self.attached:
            return sender
        port = self.routes.get(sender) or self.config.reply_port or sender[1]
        return (self.config.reply_host or sender[0], port)

    def error(self, dest: Addr, address: str, reason: str) -> None:
        self.errors += 1
        self.send(error_message(address, reason), dest)

    # ------------------------------------------------------------ dispatch
    def handle_datagram(self, data: bytes, sender: tuple[str, int]) -> None:
        """Handle one datagram from ``sender``; never raises."""
        self.received += 1
        sender = (str(sender[0]), int(sender[1]))
        guard = self.guard
        if guard.is_own(sender):  # our own reply come back, or a forged one: never answered
            guard.stats.own += 1
            return
        if not guard.allowed(sender[0]):
            guard.stats.blocked += 1
            return
        dest = self.reply_to(sender)
        try:
            items = parse_packet(data)
        except Exception as e:  # parse_packet turns known failures into errors; a bug
            _LOGGER.exception("parsing a datagram failed")
            self.error(dest, "", f"internal error: {type(e).__name__}")
            return
        if not guard.trusted(dest):
            self._unverified(data, items, sender)
            return
        for item in items:
            if isinstance(item, OscProtocolError):
                self.error(dest, item.address, item.reason)
            else:
                self.handle_message(item, sender)
                dest = self.reply_to(sender)  # /mvae/reply may have changed it

    def _unverified(self, data: bytes, items: list[Message | OscProtocolError],
                    sender: Addr) -> None:
        """A datagram whose replies would go to an unverified address: routes and cookies
        are taken, nothing else is done, and the only reply is ``/mvae/verify i cookie``,
        sent when it is no larger than the datagram."""
        for item in items:
            if not isinstance(item, Message):
                continue
            dest = self.reply_to(sender)
            try:
                if item.address == REPLY_ADDRESS:
                    self._reply(sender, Args(item))
                    continue
                if item.address == VERIFY_ADDRESS:  # never answered: two servers that
                    args = Args(item)  # challenge each other would loop
                    args.count(1)
                    if self.guard.verify(dest, args.integer(0, "cookie", 0, 2**24 - 1)):
                        _LOGGER.info("verified %s:%s", dest[0], dest[1])
                    return
            except MelodyVAEError:
                return  # no error replies to an unverified address
        dest = self.reply_to(sender)
        challenge = encode_message(VERIFY_ADDRESS, "i", [self.guard.cookie(dest)])
        if len(challenge) <= len(data) and self.guard.may_send(len(challenge), dest):
            self.guard.stats.challenged += 1
            self._send_raw(challenge, dest)

    def unreachable(self, dest: Addr) -> None:
        """``dest`` answered "port unreachable": nobody listens there, its stream ends."""
        self.guard.stats.refused += 1
        self.guard.forget(dest)
        with self.lock:
            stopped = self.player.stop(dest, release=False)
            self.live.forget(dest)
        if stopped:
            _LOGGER.info("%s:%s refuses datagrams; its stream ended", dest[0], dest[1])

    def _expired(self, key: Addr) -> None:
        self.guard.stats.expired += 1
        _LOGGER.info("%s:%s sent nothing for %g s; its stream ended", key[0], key[1],
                     self.config.lease)

    def handle_message(self, message: Message, sender: Addr) -> None:
        dest = self.reply_to(sender)
        if message.address in REPLY_ONLY:  # what the server sends is never answered
            self.guard.stats.ignored += 1
            return
        self.guard.heard(dest)
        self.player.touch(dest)
        if message.address == VERIFY_ADDRESS:  # already trusted: nothing to verify
            return
        if message.address == REPLY_ADDRESS:  # routes by sender, before any client exists
            try:
                self._reply(sender, Args(message))
            except MelodyVAEError as e:
                self.error(dest, message.address, str(e))
            return
        handler = self.handlers.get(message.address)
        if handler is None:
            reason = ("unknown address" if message.address.startswith(PREFIX + "/")
                      else f"unknown address (the server listens under {PREFIX}/)")
            self.error(dest, message.address, reason)
            return
        try:
            with self.lock:
                client = self.client(dest)
                handler(client, Args(message))
        except MelodyVAEError as e:
            self.error(dest, message.address, str(e))
        except Exception as e:
            _LOGGER.exception("handling %s failed", message.address)
            self.error(dest, message.address, f"internal error: {type(e).__name__}: {e}")

    def attach(self, key: Addr, deliver: Callable[[bytes], None]) -> None:
        """A client on another transport, ``key`` = (ATTACHED_HOST, number) for a browser
        tab, or a host no network address has (the MIDI input's): its replies go to
        ``deliver`` (called from any thread), its messages come in through
        :meth:`handle_message` with ``key`` as the sender."""
        self.attached[key] = deliver

    def detach(self, key: Addr) -> None:
        """Forget an attached client (its connection closed)."""
        self.attached.pop(key, None)
        with self.lock:
            client = self.clients.pop(key)
        self.engine.forget(key, client)
        self.player.stop(key)
        self.live.forget(key)

    def client(self, key: Addr) -> ClientState:
        client = self.clients.get(key)
        if client is None:
            client = ClientState(key, self.axes, self.config.max_slots,
                                 lookahead=self.config.lookahead)
            self.clients.put(key, client)
        return client

    def _evicted(self, key: Addr, client: ClientState) -> None:
        _LOGGER.info("forgetting client %s:%s (more than %d clients)", key[0], key[1],
                     self.config.max_clients)
        self.engine.forget(key, client)
        self.player.stop(key)
        self.live.forget(key)

    # ------------------------------------------------------------ engine results
    def melody_ready(self, job: DecodeJob, melody: Melody) -> None:
        """Send a melody: begin, one bundle of notes per bar, end (worker thread)."""
        key = job.client.key
        melody_id = next(self.melody_ids)
        with self.lock:  # before the reply: a client that answers /mvae/play at once
            job.client.melody = melody  # must find this melody, not start a decode
        for datagram in melody_datagrams(melody_id, melody):
            self.send(datagram, key)
        self.player.offer(key, melody)

    def z_ready(self, job: EncodeJob, z: np.ndarray) -> None:
        self.send(z_message(z), job.client.key)

    def failed(self, client: ClientState, address: str, reason: str) -> None:
        self.error(client.key, address, reason)

    def _file_read(self, job: FileJob, melody: Melody) -> None:
        if job.section is None:
            self.engine.submit_encode(EncodeJob(job.client, job.address, melody))
            return
        try:
            with self.lock:
                job.client.edit_section(SectionEdit(job.section, melody=melody))
                self._decode(job.client, job.address, sections=True)
        except MelodyVAEError as e:
            self.failed(job.client, job.address, str(e))

    # ------------------------------------------------------------ helpers
    def _decode(self, client: ClientState, address: str, temperature: float | None = None,
                seed: int | None = None, vary: tuple[float, int] | None = None,
                sections: bool = False) -> None:
        """Ask for a melody: of the client's section codes with ``sections``, else of its
        z (and then any section codes are dropped: the message set or moved z)."""
        if not sections:
            client.drop_sections()
        self.engine.submit_decode(DecodeJob(
            client, address,
            client.temperature if temperature is None else temperature,
            client.seed if seed is None else seed,
            vary=vary, newcomer=self.clients.newcomer(client.key), sections=sections,
        ))

    def _fresh_seed(self) -> int:
        return self.random.getrandbits(31)

    def _require_pcs(self, count: int) -> None:
        self.axes.require()
        if len(self.axes.dirs) < count:
            raise AxesError(f"the model has only {len(self.axes.dirs)} PCA axes")

    # ------------------------------------------------------------ handlers
    def _ping(self, client: ClientState, args: Args) -> None:
        args.count(0, MAX_PING_ARGS)
        tags = args.message.tags
        if tags.strip("ifs"):
            raise args.error("ping echoes only int, float and string arguments")
        if any(t == "f" and not math.isfinite(v) for t, v in zip(tags, args.values, strict=True)):
            raise args.error("ping echoes only finite numbers")
        self.send(encode_message(f"{PREFIX}/pong", tags, list(args.values)), client.key)

    def _status(self, client: ClientState, args: Args) -> None:
        args.count(0)
        vae = self.vae
        self.send(encode_message(
            f"{PREFIX}/status", "siisii",
            [vae.name, vae.bars, vae.z_dim, vae.device.type, vae.steps_per_bar,
             len(self.axes.names)]), client.key)

    def _stats(self, client: ClientState, args: Args) -> None:
        args.count(0)
        values = self.stats()
        self.send(encode_message(f"{PREFIX}/stats", "i" * len(values),
                                 list(values.values())), client.key)

    def stats(self) -> dict[str, int]:
        """Counters, in the order ``/mvae/stats`` sends them (see docs/osc.md)."""
        e = self.engine.snapshot()
        return {
            "received": self.received,  # datagrams
            "requests": e.requests,  # decode requests
            "decoded": e.decoded,  # melodies made
            "superseded": e.superseded,  # requests dropped for a newer one
            "batches": e.batches,
            "max_batch": e.max_batch,
            "max_waiting": e.max_waiting,  # most decodes waiting at once
            "clients": len(self.clients),
            "encoded": e.encoded,
            "errors": self.errors,  # /mvae/error replies
            "cancelled": e.cancelled,  # running decodes stopped as stale
            **vars(self.guard.stats),  # own, blocked, ignored, challenged, throttled,
            #                            refused, expired (see guard.GuardStats)
            "streams": self.player.streams(),  # clients whose playback runs now
        }

    def _z(self, client: ClientState, args: Args) -> None:
        z_dim = self.vae.z_dim
        if len(args) > z_dim:
            raise args.error(f"vector has {len(args)} values; the model's latent size is "
                             f"{z_dim}")
        z = np.zeros(z_dim)
        z[:len(args)] = args.vector("z", MAX_Z)
        client.set_z(z)
        self._decode(client, args.message.address)

    def _z_i(self, client: ClientState, args: Args) -> None:
        args.count(2)
        index = args.integer(0, "index", 0, self.vae.z_dim - 1)
        client.set_dim(index, args.number(1, "value", -MAX_Z, MAX_Z))
        self._decode(client, args.message.address)

    def _z_get(self, client: ClientState, args: Args) -> None:
        args.count(0)
        self.send(z_message(client.z), client.key)

    def _xy(self, client: ClientState, args: Args) -> None:
        args.count(2)
        x = args.number(0, "x", -MAX_AXIS, MAX_AXIS)
        y = args.number(1, "y", -MAX_AXIS, MAX_AXIS)
        self._require_pcs(2)
        client.pcs[0], client.pcs[1] = x, y
        self._decode(client, args.message.address)

    def _axis(self, client: ClientState, args: Args) -> None:
        n = args.count(2, 2 * MAX_AXES_SET)
        if n % 2:
            raise args.error(f"expects (name, value) pairs; got {n} arguments")
        pairs = [(args.string(i, "name", MAX_NAME),
                  args.number(i + 1, "value", -MAX_AXIS, MAX_AXIS)) for i in range(0, n, 2)]
        self.axes.require()
        for name, _ in pairs:  # every name checked before any is set
            if name not in self.axes.names:
                raise AxesError(f"unknown axis {name!r}; the model has: "
                                f"{', '.join(self.axes.names)}")
        for name, value in pairs:
            client.set_axis(name, value)
        self._decode(client, args.message.address)

    def _axes(self, client: ClientState, args: Args) -> None:
        args.count(0)
        self.axes.require()
        names = self.axes.names
        self.send(encode_message(f"{PREFIX}/axes", "s" * len(names), names), client.key)

    def _sample(self, client: ClientState, args: Args) -> None:
        n = args.count(0, 2)
        temperature = (args.number(0, "temperature", 0.0, MAX_TEMPERATURE) if n > 0
                       else client.temperature)
        seed = args.integer(1, "seed", 0, MAX_SEED) if n > 1 else self._fresh_seed()
        client.set_z(self.vae.sample_z(1, seed)[0])
        self._decode(client, args.message.address, temperature, seed)

    def _temperature(self, client: ClientState, args: Args) -> None:
        args.count(1)
        client.temperature = args.number(0, "temperature", 0.0, MAX_TEMPERATURE)

    def _seed(self, client: ClientState, args: Args) -> None:
        args.count(1)
        client.seed = args.integer(0, "seed", 0, MAX_SEED)

    def _vary(self, client: ClientState, args: Args) -> None:
        n = args.count(1, 2)
        amount = args.number(0, "amount", 0.0, MAX_VARY)
        seed = args.integer(1, "seed", 0, MAX_SEED) if n > 1 else self._fresh_seed()
        self._decode(client, args.message.address, vary=(amount, seed))

    def _slot_store(self, client: ClientState, args: Args) -> None:
        args.count(1)
        client.store(args.string(0, "name", MAX_NAME))

    def _slot_recall(self, client: ClientState, args: Args) -> None:
        args.count(1)
        client.set_z(client.slot(args.string(0, "name", MAX_NAME)))
        self._decode(client, args.message.address)

    def _interp(self, client: ClientState, args: Args) -> None:
        from melodyvae.inference import slerp

        args.count(3)
        a = client.slot(args.string(0, "a", MAX_NAME))
        b = client.slot(args.string(1, "b", MAX_NAME))
        t = min(1.0, max(0.0, args.number(2, "t")))
        client.set_z(slerp(a, b, t))
        self._decode(client, args.message.address)

    def _blend(self, client: ClientState, args: Args) -> None:
        args.count(2)
        x = min(1.0, max(0.0, args.number(0, "x")))
        y = min(1.0, max(0.0, args.number(1, "y")))
        a, b, c, d = (client.slot(name) for name in CORNERS)
        z = (1 - x) * (1 - y) * a + x * (1 - y) * b + (1 - x) * y * c + x * y * d
        client.set_z(z)
        self._decode(client, args.message.address)

    def _encode(self, client: ClientState, args: Args) -> None:
        n = len(args)
        if n % 3:
            raise args.error(f"expects (pitch, start_beat, duration_beats) triples; got {n} "
                             f"arguments, not a multiple of 3")
        if n // 3 > self.vae.steps:
            raise args.error(f"{n // 3} notes; at most {self.vae.steps} fit the model's "
                             f"{self.vae.bars} bars")
        triples = []
        for i in range(0, n, 3):
            note = i // 3 + 1
            triples.append((
                args.integer(i, f"note {note} pitch", 0, 127),
                args.number(i + 1, f"note {note} start_beat", 0.0, MAX_BEATS),
                args.number(i + 2, f"note {note} duration_beats", 0.0, MAX_BEATS),
            ))
        if any(duration <= 0 for _, _, duration in triples):
            raise args.error("every duration_beats must be above 0")
        melody = from_note_list(triples, self.vae.steps, self.vae.steps_per_bar, client.qpm)
        self.engine.submit_encode(EncodeJob(client, args.message.address, melody))

    def _encode_file(self, client: ClientState, args: Args) -> None:
        args.count(1)
        path = allowed_path(self.config.allow_dir, args.string(0, "path", MAX_PATH))
        self.files.submit(FileJob(client, args.message.address, path))

    def _tempo(self, client: ClientState, args: Args) -> None:
        args.count(1)
        client.qpm = args.number(0, "qpm", *QPM_RANGE)
        self.live.set_tempo(client, self.player.set_tempo(client.key, client.qpm))

    def _lookahead(self, client: ClientState, args: Args) -> None:
        args.count(1)
        client.lookahead = args.number(0, "milliseconds", 0.0, MAX_LOOKAHEAD_MS) / 1000.0
        self.player.set_lookahead(client.key, client.lookahead)
        self.live.wake()  # answer deadlines depend on it

    def _play(self, client: ClientState, args: Args) -> None:
        args.count(0)
        if self.player.is_playing(client.key):
            return
        self.player.play(client.key, client.qpm, client.lookahead, client.melody)
        if client.melody is None:
            self._decode(client, args.message.address,
                         sections=client.codes is not None or bool(client.section_edits))

    def _stop(self, client: ClientState, args: Args) -> None:
        args.count(0)
        self.player.stop(client.key)

    def _section_index(self, args: Args) -> int:
        """Argument 0 as a section index of a phrase model (refused on any other)."""
        sections = getattr(self.vae, "sections", None)
        if not isinstance(sections, int) or not hasattr(self.vae, "decode_codes"):
            raise args.error(f"model {self.vae.name} is not a phrase model; section "
                             f"messages need one (e.g. phrase-16bar)")
        return args.integer(0, "section", 0, sections - 1)

    def _section_vary(self, client: ClientState, args: Args) -> None:
        n = args.count(2, 3)
        index = self._section_index(args)
        amount = args.number(1, "amount", 0.0, MAX_VARY)
        seed = args.integer(2, "seed", 0, MAX_SEED) if n > 2 else self._fresh_seed()
        client.edit_section(SectionEdit(index, amount, seed))
        self._decode(client, args.message.address, sections=True)

    def _section_encode(self, client: ClientState, args: Args) -> None:
        args.count(2)
        index = self._section_index(args)
        path = allowed_path(self.config.allow_dir, args.string(1, "path", MAX_PATH))
        self.files.submit(FileJob(client, args.message.address, path, section=index))

    def _reply(self, sender: Addr, args: Args) -> None:
        args.count(1)
        port = args.integer(0, "port", 0, 65535)
        if port and self.guard.is_own((sender[0], port)):
            raise args.error(f"port {port} is this server's own; replies cannot go there")
        if port:
            self.routes.put(sender, port)
        else:
            self.routes.pop(sender)


# ---------------------------------------------------------------- reply builders


def z_message(z: np.ndarray) -> bytes:
    """``/mvae/z f...``: a latent vector."""
    return encode_message(f"{PREFIX}/z", "f" * len(z), [float(v) for v in z])


def melody_datagrams(melody_id: int, melody: Melody) -> list[bytes]:
    """``/mvae/melody/begin``, one bundle of ``/mvae/note`` per bar that has notes, then
    ``/mvae/melody/end``; notes go in the bar they start in."""
    spb = melody.steps_per_bar
    out = [encode_message(f"{PREFIX}/melody/begin", "iiif",
                          [melody_id, melody.n_bars, spb, melody.qpm])]
    bars: dict[int, list[bytes]] = {}
    for note in melody.notes:
        bars.setdefault(note.start // spb, []).append(encode_message(
            f"{PREFIX}/note", "iiiff",
            [melody_id, note.pitch, note.velocity, melody.steps_to_beats(note.start),
             melody.steps_to_beats(note.duration)]))
    out.extend(encode_bundle(messages) for _, messages in sorted(bars.items()))
    out.append(encode_message(f"{PREFIX}/melody/end", "i", [melody_id]))
    return out
