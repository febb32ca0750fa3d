"""The browser side of the server without a browser: the page, its WebSocket, uploads and
downloads, driven by aiohttp's client against a real server on loopback ports, with an OSC
client beside it. (tests/test_web_browser.py drives the page itself in Chromium.)"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import aiohttp
import numpy as np
import pytest
from aiohttp import web as web_
from aiohttp.test_utils import make_mocked_request
from conftest import make_checkpoint, osc, scale_melody
from hypothesis import given
from hypothesis import strategies as st
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage

from melodyvae.axes import axes_document
from melodyvae.inference import MelodyVAE
from melodyvae.melody import Melody, Note
from melodyvae.midi import read_midi, write_midi
from melodyvae.server.app import OscServer
from melodyvae.server.core import ServerConfig, ServerCore, melody_datagrams
from melodyvae.server.protocol import Args
from melodyvae.server.web import (
    MAX_TABS,
    MAX_UPLOAD,
    FrameError,
    WebOptions,
    WebServer,
    message_from_frame,
    messages_from_datagram,
)

ATTRIBUTES = ("note_density", "mean_pitch")


@pytest.fixture(scope="module")
def vae(tmp_path_factory: pytest.TempPathFactory) -> MelodyVAE:
    """A tiny untrained 4-bar model with latent axes (made up: 8 orthonormal directions
    and two attribute vectors)."""
    rng = np.random.default_rng(0)
    z_dim = MelodyVAE.load(make_checkpoint(tmp_path_factory.mktemp("probe") / "p.safetensors"),
                           device="cpu").z_dim
    dirs, _ = np.linalg.qr(rng.standard_normal((z_dim, 8)))
    doc = axes_document(rng.standard_normal(z_dim) * 0.1, np.linspace(1.5, 0.5, 8), dirs.T,
                        {name: rng.standard_normal(z_dim) for name in ATTRIBUTES},
                        np.ones(len(ATTRIBUTES)), 100)
    path = make_checkpoint(tmp_path_factory.mktemp("model") / "tiny-axes.safetensors",
                           extra={"axes": doc})
    return MelodyVAE.load(path, device="cpu")


@pytest.fixture(scope="module")
def servers(vae: MelodyVAE) -> Iterator[tuple[OscServer, WebServer]]:
    osc_server = OscServer(vae, port=0).start()
    web = WebServer(osc_server.core, WebOptions(port=0)).start()
    yield osc_server, web
    web.close()
    osc_server.close()


@pytest.fixture
def fresh(vae: MelodyVAE) -> Iterator[tuple[OscServer, WebServer]]:
    """Servers of the test's own, whose engine counters only it moves."""
    osc_server = OscServer(vae, port=0).start()
    web = WebServer(osc_server.core, WebOptions(port=0)).start()
    yield osc_server, web
    web.close()
    osc_server.close()


def base(web: WebServer) -> str:
    return f"http://127.0.0.1:{web.port}"


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


async def hello(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    frame = json.loads((await ws.receive()).data)
    return dict(frame["hello"])


async def replies(ws: aiohttp.ClientWebSocketResponse, until: str) -> list[dict[str, Any]]:
    """Messages from the socket up to and including the first at ``until``."""
    out: list[dict[str, Any]] = []
    while True:
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.extend(json.loads(msg.data))
        if any(m["address"] == until for m in out):
            return out


def last_melody(messages: list[dict[str, Any]]) -> list[tuple[int, int, float, float]] | None:
    """The notes of the last complete melody among ``messages`` (None: none yet)."""
    ends = [i for i, m in enumerate(messages) if m["address"] == "/mvae/melody/end"]
    if not ends:
        return None
    begin = max(i for i, m in enumerate(messages[:ends[-1]])
                if m["address"] == "/mvae/melody/begin")
    return notes_of(messages[begin:ends[-1]])


async def read_until_melody(ws: aiohttp.ClientWebSocketResponse,
                            messages: list[dict[str, Any]],
                            notes: list[tuple[int, int, float, float]]) -> list[dict[str, Any]]:
    """Read on until the last melody received has ``notes``."""
    while last_melody(messages) != notes:
        messages.extend(await replies(ws, "/mvae/melody/end"))
    return messages


def notes_of(messages: list[dict[str, Any]]) -> list[tuple[int, int, float, float]]:
    return [tuple(m["args"][1:]) for m in messages if m["address"] == "/mvae/note"]


def expected_notes(melody: Melody) -> list[tuple[int, int, float, float]]:
    return [(n.pitch, n.velocity, melody.steps_to_beats(n.start),
             melody.steps_to_beats(n.duration)) for n in melody.notes]


def socket_url(web: WebServer) -> str:
    return f"ws://127.0.0.1:{web.port}/ws?token={web.token}"


# ---------------------------------------------------------------- frames


json_args = st.lists(st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20), st.booleans(), st.none()), max_size=8)


@given(json_args)
def test_a_frame_becomes_the_message_a_datagram_would(args: list[Any]) -> None:
    message = message_from_frame(json.dumps({"address": "/mvae/x", "args": args}))
    assert message.address == "/mvae/x" and len(message.tags) == len(args)
    assert message.args == tuple(args)
    assert message.tags == "".join(tag_of(value) for value in args)


def tag_of(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, int):
        return "i" if -(2**31) <= value < 2**31 else "h"
    return {float: "f", str: "s", type(None): "N"}[type(value)]


@given(st.integers(-(2**31), 2**31 - 1), st.floats(-1e6, 1e6))
def test_numbers_from_a_frame_pass_the_same_argument_checks(i: int, x: float) -> None:
    args = Args(message_from_frame(json.dumps({"address": "/a", "args": [i, x, float(i)]})))
    assert args.integer(0, "i") == i and args.number(1, "x") == pytest.approx(x)
    assert args.integer(2, "i as float") == i


@pytest.mark.parametrize("text, reason", [
    ("{", "not JSON"), ("[1, 2]", "a frame is an object"), ('{"args": []}', "a frame is"),
    ('{"address": "/a", "args": 3}', "args must be a list"),
    ('{"address": "/a", "args": [[1]]}', "argument 1 is not"),
    ('{"address": "/a", "args": [1, 99999999999999999999]}', "argument 2 does not fit"),
])
def test_frames_that_are_not_messages_are_refused(text: str, reason: str) -> None:
    with pytest.raises(FrameError, match=reason):
        message_from_frame(text)


@given(st.lists(st.tuples(st.integers(0, 15), st.integers(1, 8), st.integers(21, 108),
                          st.integers(1, 127)), max_size=12))
def test_a_melody_reaches_a_tab_note_for_note(raw: list[tuple[int, int, int, int]]) -> None:
    notes, t = [], 0
    for gap, length, pitch, velocity in raw:
        start = t + gap
        if start + length > 64:
            break
        notes.append(Note(start, start + length, pitch, velocity))
        t = start + length
    melody = Melody(tuple(notes), 64, 16, 96.0)
    messages = [m for d in melody_datagrams(5, melody) for m in messages_from_datagram(d)]
    assert messages[0] == {"address": "/mvae/melody/begin", "args": [5, 4, 16, 96.0]}
    assert messages[-1] == {"address": "/mvae/melody/end", "args": [5]}
    assert notes_of(messages) == expected_notes(melody)


@pytest.mark.parametrize("allow_from, peer, allowed", [
    ((), "127.0.0.1", True), ((), "::1", True), ((), "192.168.1.20", False),
    (("192.168.1.0/24",), "192.168.1.20", True),
    (("192.168.1.0/24",), "::ffff:192.168.1.20", True),
    (("192.168.1.0/24",), "192.168.2.20", False), (("192.168.1.0/24",), "", False)])
def test_only_loopback_and_allow_from_peers_may_open_the_page(
        vae: MelodyVAE, allow_from: tuple[str, ...], peer: str, allowed: bool) -> None:
    config = ServerConfig(allow_from=tuple(ipaddress.ip_network(n) for n in allow_from))
    web = WebServer(ServerCore(vae, lambda data, addr: None, config),
                    WebOptions(port=0, token="t"))
    transport = mock.Mock()  # what the socket says about the peer
    transport.get_extra_info.return_value = (peer, 50000)
    request = make_mocked_request("GET", "/?token=t", transport=transport)

    async def page(request: web_.Request) -> web_.Response:
        return web_.Response(text="the page")

    try:
        if allowed:
            assert run(web._guard(request, page)).text == "the page"
        else:
            with pytest.raises(web_.HTTPForbidden) as refused:
                run(web._guard(request, page))
            assert "--allow-from" in (refused.value.text or "")
    finally:
        web.close()


# ---------------------------------------------------------------- the page


def test_the_page_needs_the_token_and_its_files_do_not(servers: tuple[OscServer, WebServer]
                                                         ) -> None:
    _, web = servers

    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.get(base(web) + "/") as r:
                assert r.status == 403 and "token" in await r.text()
            async with http.get(base(web) + "/?token=wrong") as r:
                assert r.status == 403
            async with http.get(web.url) as r:
                assert r.status == 200 and "<canvas id=\"roll\"" in await r.text()
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                assert r.headers["Referrer-Policy"] == "no-referrer"
            for name in ("app.js", "pad.js", "player.js", "roll.js", "app.css"):
                async with http.get(f"{base(web)}/static/{name}") as r:
                    assert r.status == 200, name
            async with http.get(base(web) + "/static/../web.py") as r:
                assert r.status in (403, 404)
            async with http.get(f"{base(web)}/ws?token=nope") as r:
                assert r.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(socket_url(web), origin="http://evil.example")
            assert e.value.status == 403

    run(go())


def test_a_tab_is_a_client_of_the_same_engine(fresh: tuple[OscServer, WebServer],
                                              vae: MelodyVAE) -> None:
    osc_server, web = fresh
    core = osc_server.core

    async def go() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(socket_url(web)) as ws:
            info = await hello(ws)
            assert info["model"] == vae.name and info["z_dim"] == vae.z_dim
            assert info["axes"]["attributes"] == list(ATTRIBUTES)
            assert len(info["axes"]["directions"]) == 8
            key = ("tab", info["tab"])
            await ws.send_json({"address": "/mvae/axis",
                                "args": ["pc2", 1.5, "pc5", -2, "note_density", 0.5]})
            messages = await replies(ws, "/mvae/melody/end")
            client = core.clients.get(key)
            assert client is not None
            assert client.pcs[1] == 1.5 and client.pcs[4] == -2.0
            assert client.amounts == {"note_density": 0.5}
            z = core.axes.compose(client.pcs, client.amounts)
            assert notes_of(messages) == expected_notes(vae.decode(z)[0])
            # errors come back on the socket, and change nothing
            await ws.send_json({"address": "/mvae/axis", "args": ["pc1", 1.0, "nope", 2.0]})
            error = await replies(ws, "/mvae/error")
            assert error[-1]["args"][0] == "/mvae/axis" and "nope" in error[-1]["args"][1]
            assert client.pcs[0] == 0.0
            await ws.send_str("not json")
            error = await replies(ws, "/mvae/error")
            assert "not JSON" in error[-1]["args"][1]
            await ws.send_json({"address": "/mvae/ping", "args": [7, "x"]})
            pong = await replies(ws, "/mvae/pong")
            assert pong[-1]["args"] == [7, "x"]
            assert core.engine.snapshot().max_waiting <= 1
        # the tab closed: the client is forgotten
        for _ in range(100):
            if key not in core.attached:
                break
            await asyncio.sleep(0.02)
        assert key not in core.attached and core.clients.get(key) is None

    run(go())


def test_osc_clients_keep_working_beside_a_tab(servers: tuple[OscServer, WebServer]) -> None:
    osc_server, web = servers

    async def go() -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(10)

            def ask_osc() -> list[str]:
                sock.sendto(osc("/mvae/axis", "pc1", 0.5), ("127.0.0.1", osc_server.port))
                seen = []
                while not seen or seen[-1] != "/mvae/melody/end":
                    data = sock.recv(65536)
                    items = OscBundle(data) if data.startswith(b"#bundle") else [
                        OscMessage(data)]
                    seen.extend(m.address for m in items)
                return seen

            async with aiohttp.ClientSession() as http, http.ws_connect(
                    socket_url(web)) as ws:
                await hello(ws)
                osc_reply = loop.run_in_executor(None, ask_osc)
                await ws.send_json({"address": "/mvae/axis", "args": ["pc1", -0.5]})
                tab_messages = await replies(ws, "/mvae/melody/end")
                seen = await osc_reply
        assert seen[0] == "/mvae/melody/begin" and seen[-1] == "/mvae/melody/end"
        assert tab_messages[0]["address"] == "/mvae/melody/begin"

    run(go())


def test_a_flood_of_pad_moves_waits_as_one_decode(fresh: tuple[OscServer, WebServer],
                                                  vae: MelodyVAE) -> None:
    osc_server, web = fresh
    core = osc_server.core

    async def go() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(socket_url(web)) as ws:
            key = ("tab", (await hello(ws))["tab"])
            before = core.engine.snapshot()
            moves = 300
            for i in range(moves):
                x = float(np.sin(i / 20))
                await ws.send_json({"address": "/mvae/axis", "args": ["pc1", x, "pc2", -x]})
            await ws.send_json({"address": "/mvae/ping", "args": []})  # handled in order:
            messages = await replies(ws, "/mvae/pong")  # every move has been taken
            client = core.clients.get(key)
            assert client is not None
            # the last melody is the last move's
            last = expected_notes(vae.decode(core.axes.compose(client.pcs, {}))[0])
            await read_until_melody(ws, messages, last)
            after = core.engine.snapshot()
            assert client.pcs[0] == pytest.approx(np.sin((moves - 1) / 20))
            assert after.max_waiting <= 1
            assert after.requests - before.requests == moves
            assert after.decoded - before.decoded < moves  # stale ones were dropped

    run(go())


def test_two_tabs_flooding_at_once_wait_one_decode_each(fresh: tuple[OscServer, WebServer],
                                                        vae: MelodyVAE) -> None:
    osc_server, web = fresh
    core = osc_server.core

    async def flood(http: aiohttp.ClientSession, sign: float) -> list[Any]:
        async with http.ws_connect(socket_url(web)) as ws:
            key = ("tab", (await hello(ws))["tab"])
            for i in range(150):
                await ws.send_json({"address": "/mvae/axis", "args": ["pc1", sign * i / 50]})
            await ws.send_json({"address": "/mvae/ping", "args": []})
            messages = await replies(ws, "/mvae/pong")
            client = core.clients.get(key)
            assert client is not None and client.pcs[0] == pytest.approx(sign * 149 / 50)
            last = expected_notes(vae.decode(core.axes.compose(client.pcs, {}))[0])
            return await read_until_melody(ws, messages, last)  # its last move's melody

    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(flood(http, 1.0), flood(http, -1.0))

    run(go())
    assert core.engine.snapshot().max_waiting <= 2  # one per tab


# ---------------------------------------------------------------- files


def midi_file(tmp_path: Path, melody: Melody) -> bytes:
    write_midi(melody, tmp_path / "m.mid")
    return (tmp_path / "m.mid").read_bytes()


def test_a_dropped_midi_file_is_encoded_for_the_tab(servers: tuple[OscServer, WebServer],
                                                    vae: MelodyVAE, tmp_path: Path) -> None:
    _, web = servers
    data = midi_file(tmp_path, scale_melody())

    async def go() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(socket_url(web)) as ws:
            tab = (await hello(ws))["tab"]
            url = f"{base(web)}/upload?token={web.token}&tab={tab}&name=tune.mid"
            async with http.post(url, data=data) as r:
                assert r.status == 200, await r.text()
                reply = await r.json()
            assert reply["notes"] == len(scale_melody().notes) and reply["bars"] == 4
            z = (await replies(ws, "/mvae/z"))[-1]["args"]
            melody, _ = read_midi(tmp_path / "m.mid")
            np.testing.assert_allclose(z, vae.encode(melody), rtol=1e-5, atol=1e-5)
            # the same checks as any file: a broken one is named, with the name sent
            async with http.post(url.replace("tune.mid", "bad.mid"),
                                 data=b"MThd" + b"\x00" * 40) as r:
                assert r.status == 400
                assert (await r.json())["error"].startswith("bad.mid: ")
            async with http.post(url.replace("tune.mid", "notes.txt"), data=data) as r:
                assert r.status == 400 and "not a MIDI file" in (await r.json())["error"]
            async with http.post(url, data=b"MThd" + b"\x00" * MAX_UPLOAD) as r:
                assert r.status == 413
            async with http.post(url.replace(f"tab={tab}", "tab=9999"), data=data) as r:
                assert r.status == 404
            async with http.post(url.replace(web.token, "x"), data=data) as r:
                assert r.status == 403

    run(go())


def test_the_melody_downloads_as_the_midi_file_it_is(servers: tuple[OscServer, WebServer],
                                                     tmp_path: Path) -> None:
    _, web = servers

    async def go() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(socket_url(web)) as ws:
            tab = (await hello(ws))["tab"]
            url = f"{base(web)}/melody.mid?token={web.token}&tab={tab}"
            async with http.get(url) as r:
                assert r.status == 404  # nothing decoded yet
            await ws.send_json({"address": "/mvae/tempo", "args": [90]})
            await ws.send_json({"address": "/mvae/axis", "args": ["pc1", 1.0]})
            messages = await replies(ws, "/mvae/melody/end")
            async with http.get(url) as r:
                assert r.status == 200 and r.content_type == "audio/midi"
                assert "attachment" in r.headers["Content-Disposition"]
                (tmp_path / "got.mid").write_bytes(await r.read())
        if not notes_of(messages):
            return  # a silent melody writes a file read_midi refuses as empty
        melody, _ = read_midi(tmp_path / "got.mid")
        assert melody.qpm == pytest.approx(90.0)
        assert expected_notes(melody) == notes_of(messages)

    run(go())


def test_tabs_are_limited(servers: tuple[OscServer, WebServer]) -> None:
    _, web = servers

    async def go() -> None:
        async with aiohttp.ClientSession() as http:
            sockets = [await http.ws_connect(socket_url(web)) for _ in range(MAX_TABS)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as e:
                await http.ws_connect(socket_url(web))
            assert e.value.status == 503
            for ws in sockets:
                await ws.close()

    run(go())


# ---------------------------------------------------------------- the command


def test_serve_web_prints_the_page_address_and_serves_it(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    proc = subprocess.Popen(
        [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(ckpt), "--port", "0",
         "--web", "0", "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert proc.stdout is not None
        url = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not url:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else ""
            if "web page at " in line:
                url = line.split("web page at ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:") and "?token=" in url

        async def fetch() -> int:
            async with aiohttp.ClientSession() as http, http.get(url) as r:
                return r.status

        assert run(fetch()) == 200
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


@pytest.mark.parametrize("argv, message", [
    (["--web", "0", "--allow-from", "my-lan"], "is not an IP network"),
    (["--web", "70000"], "outside"),
])
def test_serve_web_arguments_are_checked(argv: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "melodyvae.cli", "serve", *argv],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_web_on_a_taken_port_is_one_line(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "tiny.safetensors")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run([sys.executable, "-m", "melodyvae.cli", "serve", "--model",
                               str(ckpt), "--port", "0", "--web", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot serve the web page on 127.0.0.1" in proc.stderr
    assert "Traceback" not in proc.stderr
