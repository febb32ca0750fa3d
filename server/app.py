"""The running server: a UDP socket, its network thread, and the process lifecycle.

:class:`OscServer` can run inside any process (tests, notebooks, the benchmark): bind to
port 0 and read :attr:`OscServer.port`. :func:`serve` is what ``melodyvae serve`` runs: it
loads and warms up the model, prints ``listening on HOST:PORT`` and serves until SIGINT or
SIGTERM.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import errno
import logging
import select
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING

from melodyvae.errors import MelodyVAEError
from melodyvae.server.core import ServerConfig, ServerCore
from melodyvae.server.guard import is_loopback
from melodyvae.server.state import Addr

if TYPE_CHECKING:
    from melodyvae.inference import MelodyVAE
    from melodyvae.server.midi_bridge import MidiBridge, MidiPorts, MidiSettings
    from melodyvae.server.web import WebOptions

_LOGGER = logging.getLogger(__name__)

MAX_DATAGRAM = 65_535
RECEIVE_BUFFER = 1 << 20  # bytes of kernel buffer for bursts of slider messages
POLL = 0.2  # seconds between checks of the stop flag while the socket is idle
# Linux reports ICMP errors of an unconnected UDP socket only with IP_RECVERR: then a
# "port unreachable" names the destination that refused (in the socket's error queue).
_RECVERR = {socket.AF_INET: (socket.IPPROTO_IP, getattr(socket, "IP_RECVERR", 11)),
            socket.AF_INET6: (socket.IPPROTO_IPV6, getattr(socket, "IPV6_RECVERR", 25))}
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)
MAX_ERRORS_READ = 64  # error-queue entries read at once


class ServerStartError(MelodyVAEError):
    """The server cannot bind its address."""


def bind(host: str, port: int) -> socket.socket:
    """A UDP socket bound to ``host:port`` (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        if sys.platform.startswith("linux"):
            sock.setsockopt(*_RECVERR[family], 1)
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServerStartError(f"cannot listen on {host}:{port}: {e}") from e
    return sock


class OscServer:
    """A :class:`ServerCore` behind a UDP socket; start, use ``.port``, close."""

    def __init__(self, vae: MelodyVAE, host: str = "127.0.0.1", port: int = 9000,
                 config: ServerConfig | None = None, sock: socket.socket | None = None,
                 midi: tuple[MidiPorts, MidiSettings] | None = None) -> None:
        self.sock = sock if sock is not None else bind(host, port)
        self.sock.settimeout(POLL)
        self.host = host
        self.port: int = self.sock.getsockname()[1]
        self.core = ServerCore(vae, self._sendto, config)
        self.core.guard.own = (str(self.sock.getsockname()[0]), self.port)
        self.midi: MidiBridge | None = None  # MIDI ports (midi_bridge.py), if opened
        if midi is not None:
            from melodyvae.server.midi_bridge import MidiBridge

            self.midi = MidiBridge(self.core, *midi)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refused: collections.deque[Addr] = collections.deque(maxlen=1024)

    def _sendto(self, data: bytes, addr: Addr) -> None:
        try:
            self.sock.sendto(data, addr)
        except ConnectionRefusedError:
            # An earlier datagram's "port unreachable", reported on this send (which did
            # not go out): learn who refused, then send this one.
            self._read_refusals()
            self.sock.sendto(data, addr)

    def _read_refusals(self) -> None:
        """Drain the socket's error queue into the destinations that answered "port
        unreachable" (any thread; the network thread ends their streams: a sender may be
        holding the playback lock)."""
        refused = self._refused
        poller = select.poll()
        poller.register(self.sock, select.POLLERR)
        for _ in range(MAX_ERRORS_READ):  # errors keep coming while a stream plays on
            if not poller.poll(0):  # the queue is empty (a timeout socket would wait)
                break
            try:
                _, ancillary, _, addr = self.sock.recvmsg(1, 512, MSG_ERRQUEUE)
            except OSError:
                break
            for _, _, cdata in ancillary:
                if len(cdata) >= 4 and struct.unpack_from("=I", cdata)[0] == errno.ECONNREFUSED:
                    refused.append((str(addr[0]), int(addr[1])))

    def _end_refused(self) -> None:
        while self._refused:
            dest = self._refused.popleft()
            if dest not in self._refused:  # one ICMP error per datagram sent: once is enough
                self.core.unreachable(dest)

    def start(self) -> OscServer:
        """Start the worker, playback, file, MIDI and network threads; returns self."""
        self.core.start()
        if self.midi is not None:
            self.midi.start()
        self._thread = threading.Thread(target=self._serve, name="mvae-network", daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._end_refused()
            try:
                data, sender = self.sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                continue
            except ConnectionRefusedError:  # a destination's "port unreachable"
                self._read_refusals()
                continue
            except OSError as e:
                if self._stop.is_set():
                    return
                _LOGGER.debug("receive failed: %s", e)
                continue
            try:
                self.core.handle_datagram(data, sender)
            except Exception:  # handle_datagram answers errors itself; this is a bug
                _LOGGER.exception("handling a datagram from %s failed", sender)

    def close(self) -> None:
        """Stop every thread (a playing note gets its note-off) and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(POLL * 5)
        if self.midi is not None:  # first: every sounding MIDI note is released at once
            self.midi.close()
        self.core.close()
        self.sock.close()

    def __enter__(self) -> OscServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class ServeOptions:
    """``melodyvae serve`` arguments, already checked."""

    model: str
    host: str = "127.0.0.1"
    port: int = 9000
    device: str = "auto"
    threads: int | None = None
    config: ServerConfig = ServerConfig()
    web: WebOptions | None = None  # also serve the browser page (server/web.py)
    midi: MidiSettings | None = None  # also open MIDI ports (server/midi_bridge.py)


def warm_up(vae: MelodyVAE, max_batch: int = 4) -> float:
    """Run every path a request takes once (first calls allocate); seconds spent."""
    import numpy as np

    start = time.perf_counter()
    for batch in range(1, max_batch + 1):
        z = vae.sample_z(batch, seed=batch)
        vae.decode_tokens(z, 0.0)
        vae.decode_tokens(z, 1.0, seed=batch)
    vae.encode(vae.melody_from_tokens(np.ones(vae.steps, dtype=np.int64)))
    return time.perf_counter() - start


def resolve_host(host: str) -> str:
    """The numeric address of ``host``."""
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_DGRAM)[0][4][0])
    except OSError as e:
        raise ServerStartError(f"--reply-host {host}: cannot resolve it ({e})") from e


def set_threads(threads: int | None) -> None:
    import torch

    if threads:
        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # already set, or parallel work ran
            torch.set_num_interop_threads(1)


def serve(options: ServeOptions) -> int:
    """Load, warm up, announce, serve until SIGINT/SIGTERM; the exit status (0)."""
    from melodyvae.inference import MelodyVAE, pick_device, resolve_model

    resolve_model(options.model)  # a missing model or device fails before the socket is
    pick_device(options.device)  # taken
    config = options.config
    if config.reply_host:  # resolved once, not on every send
        config = dataclasses.replace(config, reply_host=resolve_host(config.reply_host))
    sock = bind(options.host, options.port)
    port = sock.getsockname()[1]
    if config.reply_port == port and (config.reply_host is None
                                      or is_loopback(config.reply_host)):
        sock.close()
        raise ServerStartError(f"--reply-port {port} is the port the server listens on; "
                               "its replies would come back to it")
    web_sock = None
    ports: MidiPorts | None = None
    try:
        if options.midi is not None:  # a missing port fails before the model loads
            from melodyvae.server.midi_bridge import open_ports

            ports = open_ports(options.midi)
        if options.web is not None:
            from melodyvae.server.web import bind as bind_web

            web_sock = bind_web(options.web.host, options.web.port)
        set_threads(options.threads)
        vae = MelodyVAE.load(options.model, device=options.device)
        seconds = warm_up(vae)
        _LOGGER.info("warmed up in %.2f s", seconds)
        server = OscServer(vae, options.host, options.port, config, sock,
                           None if ports is None or options.midi is None
                           else (ports, options.midi))
    except BaseException:
        sock.close()
        if web_sock is not None:
            web_sock.close()
        if ports is not None:
            ports.close()
        raise
    web = None

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        reply = ""
        if config.reply_host or config.reply_port:
            reply = (f", replies to {config.reply_host or 'the sender host'}"
                     f":{config.reply_port or 'the sender port'}")
        print(f"melodyvae: listening on {server.host}:{server.port} (model {vae.name}, "
              f"{vae.bars} bars, latent {vae.z_dim}, device {vae.device.type}{reply})",
              flush=True)
        if not is_loopback(server.host):
            nets = ", ".join(str(n) for n in config.allow_from) or "none"
            print(f"melodyvae: warning: listening beyond loopback on {server.host}; datagrams "
                  f"are read only from loopback and --allow-from networks ({nets}), and an "
                  "address there gets melodies only once it has echoed /mvae/verify "
                  "(docs/osc.md, Safety)", file=sys.stderr, flush=True)
        if ports is not None:
            print(f"melodyvae: {ports.describe()}", flush=True)
        if options.web is not None and web_sock is not None:
            from melodyvae.server.web import WebServer, describe

            web = WebServer(server.core, options.web, web_sock).start()
            for line in describe(web):
                print(f"melodyvae: {line}", flush=True)
        while not stop.wait(0.5):
            pass
        print("melodyvae: stopping", file=sys.stderr, flush=True)
    finally:
        if web is not None:
            web.close()
        server.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
