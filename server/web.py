"""The control surface in the browser: ``melodyvae serve --web [PORT]``.

An aiohttp server on a thread and event loop of its own, in the same process as the OSC
server, serves the page in ``static/`` (plain HTML, CSS and JavaScript modules; nothing to
build) and a WebSocket per browser tab. A tab is one more client of the same
:class:`~melodyvae.server.core.ServerCore`: it speaks the OSC address space of docs/osc.md
as JSON (one message per frame in, the messages of each reply datagram out), goes through
the same handlers and checks, and its decodes wait in the same latest-wins slots of the
same engine as the OSC clients beside it.

Frames, both ways, are JSON::

    tab -> server   {"address": "/mvae/axis", "args": ["pc1", 0.5, "pc3", -1.2]}
    server -> tab   {"hello": {...}}                  once, first: model, axes, limits
                    [{"address": "/mvae/melody/begin", "args": [7, 4, 16, 120.0]}, ...]

A reply frame holds the messages of one or more datagrams in order; messages of a bundle
sent for a later time (``/mvae/play``) carry ``"time"`` (Unix seconds).

Besides the socket: ``POST /upload`` takes a dropped MIDI file (size-limited, read by the
facade's :func:`~melodyvae.inference.read_melody` on a thread of its own, like
``/mvae/encode/file``) and encodes it for the tab; ``GET /melody.mid`` gives the tab's
current melody as a Standard MIDI File.

Access: the server listens where ``--host`` says (127.0.0.1 unless told otherwise) and
talks only to loopback peers and those inside ``--allow-from`` networks; every request but
the static files needs the token printed in the page's address at start (so another user
of the machine or a web page open in the same browser cannot drive it); a WebSocket from a
page of another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import secrets
import socket
import tempfile
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from melodyvae.errors import MelodyVAEError
from melodyvae.limits import MAX_MIDI_BYTES
from melodyvae.midi import MIDI_SUFFIXES
from melodyvae.server.core import (
    ATTACHED_HOST,
    CORNERS,
    MAX_AXIS,
    MAX_TEMPERATURE,
    MAX_VARY,
    QPM_RANGE,
    ServerCore,
)
from melodyvae.server.engine import EncodeJob
from melodyvae.server.guard import is_loopback, is_wildcard
from melodyvae.server.protocol import Message, OscProtocolError, parse_packet
from melodyvae.server.state import Addr

if TYPE_CHECKING:
    from melodyvae.melody import Melody

_LOGGER = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
DEFAULT_PORT = 8000
MAX_TABS = 16  # tabs connected at once; the next is refused
MAX_FRAME = 65_536  # bytes of one message from a tab (as for an OSC datagram)
MAX_UPLOAD = MAX_MIDI_BYTES  # bytes of a dropped MIDI file (as for one read from --allow-dir)
MAX_QUEUED = 512  # reply datagrams waiting for a slow tab; past it the oldest are dropped
UPLOAD_ADDRESS = "/mvae/encode/file"  # what an upload's errors name (it does the same)
INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


class WebStartError(MelodyVAEError):
    """The web server cannot listen where it was asked to."""


class FrameError(MelodyVAEError):
    """A frame from a tab that is not an OSC message in JSON."""


class UploadError(MelodyVAEError):
    """A dropped file that is not a MIDI file the model can read."""


@dataclass(frozen=True)
class WebOptions:
    """Where the page is served and who may open it."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # 0: any free port
    token: str | None = None  # None: a fresh random one


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (taken early, so a busy port fails fast)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as e:
        raise WebStartError(f"cannot serve the web page on {host}:{port}: {e}") from e


def describe(server: WebServer) -> list[str]:
    """What ``serve`` prints about the page: its address (with the token), and who may
    open it when it listens beyond loopback."""
    lines = [f"web page at {server.url}"]
    host = server.options.host
    if not is_loopback(host):
        nets = ", ".join(str(n) for n in server.core.config.allow_from)
        lines.append(f"the web page answers loopback and --allow-from networks only "
                     f"({nets or 'none given'})")
        if is_wildcard(host):
            lines.append("from another machine, put this machine's address in place of "
                         "127.0.0.1")
    return lines


# ---------------------------------------------------------------- frames


def message_from_frame(text: str) -> Message:
    """A tab's JSON frame as the :class:`Message` an OSC datagram would give."""
    try:
        frame = json.loads(text)
    except ValueError as e:
        raise FrameError(f"not JSON: {e}") from None
    if not isinstance(frame, dict) or not isinstance(frame.get("address"), str):
        raise FrameError('a frame is an object {"address": "/mvae/...", "args": [...]}')
    address = frame["address"]
    raw = frame.get("args", [])
    if not isinstance(raw, list):
        raise FrameError(f"{address}: args must be a list")
    tags = []
    for i, value in enumerate(raw):
        if isinstance(value, bool):
            tags.append("T" if value else "F")
        elif isinstance(value, int):
            if not INT64[0] <= value <= INT64[1]:
                raise FrameError(f"{address}: argument {i + 1} does not fit in 64 bits")
            tags.append("i" if INT32[0] <= value <= INT32[1] else "h")
        elif isinstance(value, float):
            tags.append("f")
        elif isinstance(value, str):
            tags.append("s")
        elif value is None:
            tags.append("N")
        else:
            raise FrameError(f"{address}: argument {i + 1} is not a number, string, "
                             f"boolean or null")
    return Message(address, tuple(raw), "".join(tags))


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return list(value)
    return value


def messages_from_datagram(data: bytes) -> list[dict[str, Any]]:
    """The server's reply datagram as JSON-ready messages."""
    out: list[dict[str, Any]] = []
    for item in parse_packet(data):
        if isinstance(item, OscProtocolError):  # the server's own replies always parse
            _LOGGER.error("a reply did not parse: %s", item.reason)
            continue
        entry: dict[str, Any] = {"address": item.address,
                                 "args": [_json_value(v) for v in item.args]}
        if item.timetag is not None:
            entry["time"] = item.timetag
        out.append(entry)
    return out


# ---------------------------------------------------------------- tabs


@dataclass
class Tab:
    """One connected browser tab."""

    key: Addr
    ws: web.WebSocketResponse
    outbox: deque[bytes] = field(default_factory=lambda: deque(maxlen=MAX_QUEUED))
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0  # reply datagrams dropped because the tab read too slowly
    reading: bool = False  # an upload of this tab is being read

    def push(self, data: bytes) -> None:
        """Queue a reply datagram (event loop thread); past MAX_QUEUED the oldest goes."""
        if len(self.outbox) == self.outbox.maxlen:
            if not self.dropped:
                _LOGGER.warning("tab %d reads too slowly; dropping its oldest replies",
                                self.key[1])
            self.dropped += 1
        self.outbox.append(data)
        self.ready.set()


class WebServer:
    """The page and its WebSockets for one :class:`ServerCore`; start, ``.url``, close."""

    def __init__(self, core: ServerCore, options: WebOptions | None = None,
                 sock: socket.socket | None = None) -> None:
        self.core = core
        self.options = options or WebOptions()
        self.token = self.options.token or secrets.token_urlsafe(16)
        self.sock = sock if sock is not None else bind(self.options.host, self.options.port)
        self.port: int = self.sock.getsockname()[1]
        self.tabs: dict[Addr, Tab] = {}
        self._ids = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(1, thread_name_prefix="mvae-web-files")

    # ------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        """The page's address with its token (what ``serve`` prints)."""
        host = self.options.host
        if is_wildcard(host):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/?token={self.token}"

    def start(self) -> WebServer:
        """Serve on a thread of its own; returns once the server accepts connections."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._setup())
            except BaseException as e:  # reported to start()'s caller
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.close()

        self._thread = threading.Thread(target=run, name="mvae-web", daemon=True)
        self._thread.start()
        started.wait()
        if failure:
            raise WebStartError(f"cannot start the web server: {failure[0]}") from failure[0]
        return self

    async def _setup(self) -> None:
        app = web.Application(client_max_size=MAX_UPLOAD,
                              middlewares=[self._guard])
        app.router.add_get("/", self._index)
        app.router.add_get("/ws", self._socket)
        app.router.add_post("/upload", self._upload)
        app.router.add_get("/melody.mid", self._midi)
        app.router.add_static("/static", STATIC)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                     shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self.sock).start()

    def close(self) -> None:
        """Close every tab (each forgotten by the core) and stop the thread."""
        loop = self._loop
        if loop is not None and self._thread is not None and self._thread.is_alive():
            future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
            with contextlib.suppress(Exception):
                future.result(5.0)
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5.0)
        self._readers.shutdown(wait=False, cancel_futures=True)
        self.sock.close()

    async def _shutdown(self) -> None:
        for tab in list(self.tabs.values()):
            await tab.ws.close(code=1001, message=b"server stopping")
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> WebServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ access
    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        if not self.core.guard.allowed(request.remote or ""):
            raise web.HTTPForbidden(text="this address is not allowed; start the server "
                                         "with --allow-from for its network\n")
        if not request.path.startswith("/static/"):
            given = request.query.get("token", "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                raise web.HTTPForbidden(text="open the address melodyvae serve --web "
                                             "printed: it carries the access token\n")
        response = await handler(request)
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        """A request from a page of this server (or from no page at all)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        return origin.split("://", 1)[-1].rstrip("/") == request.host

    # ------------------------------------------------------------ the page
    async def _index(self, request: web.Request) -> web.StreamResponse:
        response = web.FileResponse(STATIC / "index.html")
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; connect-src 'self'; img-src 'self' data: blob:; "
            "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'")
        return response

    def hello(self, key: Addr) -> dict[str, Any]:
        """What a tab learns when it connects: the model, its axes and the limits."""
        vae, axes = self.core.vae, self.core.axes
        return {
            "tab": key[1], "model": vae.name, "bars": vae.bars,
            "steps_per_bar": vae.steps_per_bar, "z_dim": vae.z_dim,
            "device": vae.device.type,
            "axes": None if axes.problem else {
                "pcs": axes.pc_names, "attributes": list(axes.attributes),
                "mean": axes.mean.tolist(), "std": axes.std.tolist(),
                "directions": axes.dirs.tolist(),
            },
            "axes_problem": axes.problem,
            "corners": list(CORNERS),
            "limits": {"axis": MAX_AXIS, "temperature": MAX_TEMPERATURE, "vary": MAX_VARY,
                       "qpm": list(QPM_RANGE), "upload": MAX_UPLOAD},
            "midi_suffixes": list(MIDI_SUFFIXES),
        }

    # ------------------------------------------------------------ the socket
    async def _socket(self, request: web.Request) -> web.StreamResponse:
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="a page of another origin may not connect\n")
        if len(self.tabs) >= MAX_TABS:
            raise web.HTTPServiceUnavailable(text=f"{MAX_TABS} tabs are open already\n")
        ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, compress=False, heartbeat=30.0)
        await ws.prepare(request)
        self._ids += 1
        tab = Tab((ATTACHED_HOST, self._ids), ws)
        loop = asyncio.get_running_loop()
        self.tabs[tab.key] = tab

        def deliver(data: bytes) -> None:  # any thread
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody reads
                loop.call_soon_threadsafe(tab.push, data)

        self.core.attach(tab.key, deliver)
        sender = asyncio.create_task(self._send_loop(tab))
        _LOGGER.info("tab %d connected from %s", tab.key[1], request.remote)
        try:
            await ws.send_json({"hello": self.hello(tab.key)})
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    self._receive(tab, msg.data)
                elif msg.type == WSMsgType.BINARY:
                    self.core.error(tab.key, "", "frames are JSON text, not binary")
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
            del self.tabs[tab.key]
            self.core.detach(tab.key)
            _LOGGER.info("tab %d closed", tab.key[1])
        return ws

    def _receive(self, tab: Tab, text: str) -> None:
        try:
            message = message_from_frame(text)
        except FrameError as e:
            self.core.error(tab.key, "", str(e))
            return
        self.core.handle_message(message, tab.key)  # answers its own errors

    async def _send_loop(self, tab: Tab) -> None:
        """Send what the core queued for the tab, everything waiting in one frame."""
        while True:
            await tab.ready.wait()
            tab.ready.clear()
            messages: list[dict[str, Any]] = []
            while tab.outbox:
                messages.extend(messages_from_datagram(tab.outbox.popleft()))
            if messages:
                try:
                    await tab.ws.send_str(json.dumps(messages, separators=(",", ":")))
                except (ConnectionError, RuntimeError):
                    return  # closing: the receive loop ends too

    # ------------------------------------------------------------ files
    def _tab(self, request: web.Request) -> Tab:
        try:
            key = (ATTACHED_HOST, int(request.query.get("tab", "")))
        except ValueError:
            raise web.HTTPBadRequest(text="tab: expected the tab's number\n") from None
        tab = self.tabs.get(key)
        if tab is None:
            raise web.HTTPNotFound(text="no such tab (is its page still open?)\n")
        return tab

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        """A dropped MIDI file: read it like /mvae/encode/file reads one, encode it for
        the tab (its latent vector comes back on the socket as /mvae/z)."""
        if not self._same_origin(request):
            raise web.HTTPForbidden(text="a page of another origin may not upload\n")
        tab = self._tab(request)
        name = request.query.get("name", "upload.mid")
        suffix = Path(name).suffix.lower()
        if suffix not in MIDI_SUFFIXES:
            return _error(400, f"{name}: not a MIDI file ({', '.join(MIDI_SUFFIXES)})")
        if request.content_length is not None and request.content_length > MAX_UPLOAD:
            return _error(413, f"{name}: larger than {MAX_UPLOAD // 1024} KiB")
        if tab.reading:
            return _error(429, "still reading the last file of this tab")
        tab.reading = True
        try:
            try:
                data = await request.read()
            except web.HTTPRequestEntityTooLarge:
                return _error(413, f"{name}: larger than {MAX_UPLOAD // 1024} KiB")
            loop = asyncio.get_running_loop()
            try:
                melody, how = await loop.run_in_executor(self._readers, read_upload, data,
                                                         name)
            except MelodyVAEError as e:
                return _error(400, str(e))
            except Exception as e:  # a MIDI library bug: the upload fails, not the server
                _LOGGER.exception("reading an upload failed")
                return _error(400, f"cannot read {name}: {type(e).__name__}: {e}")
        finally:
            tab.reading = False
        with self.core.lock:
            client = self.core.client(tab.key)
            self.core.engine.submit_encode(EncodeJob(client, UPLOAD_ADDRESS, melody))
        return web.json_response({"name": name, "notes": len(melody.notes),
                                  "bars": melody.n_bars, "how": how})

    async def _midi(self, request: web.Request) -> web.StreamResponse:
        """The tab's current melody as a MIDI file."""
        tab = self._tab(request)
        with self.core.lock:
            client = self.core.clients.get(tab.key)
            melody = None if client is None else client.melody
        if melody is None:
            return _error(404, "no melody yet")
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(self._readers, midi_bytes, melody)
        name = f"melodyvae-{self.core.vae.name}-{tab.key[1]}.mid"
        return web.Response(body=data, content_type="audio/midi", headers={
            "Content-Disposition": f'attachment; filename="{name}"'})


def read_upload(data: bytes, name: str) -> tuple[Melody, str]:
    """The melody of an uploaded file called ``name``, read by the facade as a file named
    over the network is (:func:`~melodyvae.inference.read_melody` inside a folder of its
    own, with the same limits); errors name the upload, not the copy."""
    from melodyvae.inference import read_melody

    with tempfile.TemporaryDirectory(prefix="mvae-upload-") as folder:
        path = Path(folder) / f"upload{Path(name).suffix.lower()}"
        path.write_bytes(data)
        try:
            return read_melody(path, root=folder, max_midi_bytes=MAX_UPLOAD)
        except MelodyVAEError as e:
            raise UploadError(str(e).replace(str(path), name).replace(path.name, name)
                              ) from e


def midi_bytes(melody: Melody) -> bytes:
    """``melody`` as the bytes of the MIDI file :func:`~melodyvae.midi.write_midi` writes."""
    from melodyvae.midi import write_midi

    with tempfile.TemporaryDirectory(prefix="mvae-midi-") as folder:
        path = Path(folder) / "melody.mid"
        write_midi(melody, path)
        return path.read_bytes()


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)
