"""The server in-process: bound to port 0, real UDP sockets, several clients at once."""

from __future__ import annotations

import socket
import threading

import pytest
from conftest import osc
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage

from melodyvae.inference import MelodyVAE
from melodyvae.server.app import OscServer, ServerStartError
from melodyvae.server.core import ServerConfig


def read_melody(sock: socket.socket) -> list[tuple[str, list[object]]]:
    """Messages up to and including /mvae/melody/end, bundles unpacked."""
    out: list[tuple[str, list[object]]] = []
    while True:
        data = sock.recv(65536)
        messages = OscBundle(data) if data.startswith(b"#bundle") else [OscMessage(data)]
        out.extend((m.address, m.params) for m in messages)
        if out[-1][0] == "/mvae/melody/end":
            return out


def test_port_zero_binds_a_free_port_and_answers(vae: MelodyVAE) -> None:
    with OscServer(vae, port=0) as server, socket.socket(socket.AF_INET,
                                                          socket.SOCK_DGRAM) as sock:
        assert server.port > 0
        sock.settimeout(5)
        sock.sendto(osc("/mvae/ping", 1), ("127.0.0.1", server.port))
        assert OscMessage(sock.recv(1024)).params == [1]
        sock.sendto(osc("/mvae/z", 0.5, -1.0, 0.2), ("127.0.0.1", server.port))
        messages = read_melody(sock)
        assert messages[0][0] == "/mvae/melody/begin"
        assert {address for address, _ in messages[1:-1]} <= {"/mvae/note"}


def test_several_clients_at_once_each_get_their_melody(vae: MelodyVAE) -> None:
    with OscServer(vae, port=0) as server:
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        results: dict[int, list[tuple[str, list[object]]]] = {}

        def ask(i: int, sock: socket.socket) -> None:
            sock.settimeout(10)
            sock.sendto(osc("/mvae/z", float(i)), ("127.0.0.1", server.port))
            results[i] = read_melody(sock)

        threads = [threading.Thread(target=ask, args=(i, s)) for i, s in enumerate(socks)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        for sock in socks:
            sock.close()
        ids = {messages[-1][1][0] for messages in results.values()}
        assert len(results) == 4 and len(ids) == 4  # one melody each, distinct ids
        assert server.core.engine.snapshot().decoded == 4


def test_close_stops_every_thread(vae: MelodyVAE) -> None:
    before = {t.name for t in threading.enumerate()}
    server = OscServer(vae, port=0, config=ServerConfig()).start()
    server.close()
    left = {t.name for t in threading.enumerate() if t.is_alive()} - before
    assert not {name for name in left if name.startswith("mvae-")}


def test_a_taken_port_is_a_named_error(vae: MelodyVAE) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(ServerStartError, match="cannot listen on"):
            OscServer(vae, port=taken.getsockname()[1])
