"""The server can't be turned against itself or anyone else: no self-loops, allowed and
verified sources only, a byte cap per destination, streams that end when nobody listens,
range-checked numbers, and evicted clients' decodes stopped."""

from __future__ import annotations

import ipaddress
import logging
import math
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_checkpoint
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pythonosc.osc_bundle_builder import OscBundleBuilder
from pythonosc.osc_message_builder import OscMessageBuilder
from test_server_core import CLIENT, Wire, admit_and_step, axes_doc

from melodyvae.decode.numpy_stepper import numpy_context
from melodyvae.inference import MelodyVAE
from melodyvae.server.app import OscServer
from melodyvae.server.core import MAX_Z
from melodyvae.server.guard import REPLY_ONLY
from melodyvae.server.protocol import Message, parse_packet

OWN = ("127.0.0.1", 9000)
LAN = ipaddress.ip_network("10.0.0.0/8")
REMOTE = ("10.1.2.3", 5000)


@pytest.fixture(scope="module")
def axes_vae(tmp_path_factory: pytest.TempPathFactory) -> MelodyVAE:
    path = make_checkpoint(tmp_path_factory.mktemp("model") / "axes.safetensors",
                           extra={"axes": axes_doc()})
    return MelodyVAE.load(path, device="cpu")


def guarded(vae: MelodyVAE, **config: Any) -> Wire:
    wire = Wire(vae, **config)
    wire.core.guard.own = OWN
    return wire


def datagram(address: str, *args: Any, types: str | None = None) -> bytes:
    builder = OscMessageBuilder(address)
    for i, value in enumerate(args):
        builder.add_arg(value, types[i] if types else None)
    return bytes(builder.build().dgram)


# ------------------------------------------------------------------ never itself


def test_datagrams_from_its_own_address_are_never_answered(vae: MelodyVAE) -> None:
    wire = guarded(vae)
    for address in ("/mvae/ping", "/mvae/nope", "/mvae/z"):
        wire.send(address, sender=OWN)
    wire.core.handle_datagram(b"\xff garbage", OWN)
    assert wire.replies() == []
    assert wire.core.guard.stats.own == 4


@pytest.mark.parametrize("address", sorted(REPLY_ONLY))
def test_what_the_server_sends_is_never_answered(vae: MelodyVAE, address: str) -> None:
    wire = guarded(vae)
    wire.send(address, 1, "x")
    assert wire.replies() == []
    assert wire.core.guard.stats.ignored == 1


def test_replies_never_go_to_its_own_address(vae: MelodyVAE) -> None:
    wire = guarded(vae)
    wire.send("/mvae/reply", OWN[1])
    got = wire.replies()
    assert [r[0] for r in got] == ["/mvae/error"]
    assert "this server's own" in got[0][1][1]
    wire.send("/mvae/ping")
    assert wire.replies() == [("/mvae/pong", (), CLIENT)]  # the route was not taken
    # a --reply-port that names the server itself: everything is dropped at sending
    wire = guarded(vae, reply_port=OWN[1])
    wire.send("/mvae/ping")
    wire.send("/mvae/z", 0.5)
    assert wire.replies() == []
    assert wire.core.guard.stats.throttled >= 2


# ------------------------------------------------------------------ allowed and verified


def test_sources_outside_loopback_and_allow_from_are_dropped(vae: MelodyVAE) -> None:
    wire = guarded(vae)
    wire.send("/mvae/ping", sender=("192.168.1.5", 4000))
    wire.send("/mvae/z", 1.0, 2.0, sender=REMOTE)
    assert wire.replies() == []
    assert wire.core.guard.stats.blocked == 2
    assert wire.core.engine.stats.requests == 0


def test_an_unverified_address_gets_a_cookie_no_larger_than_its_request(
        vae: MelodyVAE) -> None:
    wire = guarded(vae, allow_from=(LAN,))
    core = wire.core
    request = datagram("/mvae/z", 1.0, 2.0, 3.0)
    core.handle_datagram(request, REMOTE)
    sent = list(wire.sent)
    got = wire.replies()
    assert [r[0] for r in got] == ["/mvae/verify"] and got[0][2] == REMOTE
    assert all(len(data) <= len(request) for data, _ in sent)
    assert core.engine.stats.requests == 0  # nothing of the request was done
    cookie = got[0][1][0]

    core.handle_datagram(datagram("/mvae/ping"), REMOTE)  # 16 bytes: smaller than a cookie
    assert wire.replies() == []
    wire.send("/mvae/verify", cookie + 1, sender=REMOTE)  # a wrong cookie: nothing
    wire.send("/mvae/z", 1.0, 2.0, 3.0, sender=REMOTE)
    assert [r[0] for r in wire.replies()] == ["/mvae/verify"]
    wire.send("/mvae/verify", cookie, sender=("10.9.9.9", 5000))  # another host's: nothing
    wire.send("/mvae/ping", sender=REMOTE)
    assert wire.replies() == []

    assert float(np.float32(cookie)) == cookie  # Pd can echo it as a float32
    wire.send("/mvae/verify", float(cookie), types="f", sender=REMOTE)  # echoed: verified
    assert wire.replies() == []
    wire.send("/mvae/ping", sender=REMOTE)
    assert wire.replies() == [("/mvae/pong", (), REMOTE)]
    wire.send("/mvae/z", 1.0, 2.0, 3.0, sender=REMOTE)
    assert len(wire.melodies()) == 1


def test_a_route_set_before_verification_gets_the_cookie(vae: MelodyVAE) -> None:
    """Max sends from one port and listens on another: /mvae/reply is taken before
    verification, and the cookie goes where replies will go."""
    wire = guarded(vae, allow_from=(LAN,))
    wire.send("/mvae/reply", 9001, sender=REMOTE)
    assert wire.replies() == []  # 20 bytes: too small to carry a cookie back
    wire.send("/mvae/z", 0.5, 0.5, 0.5, sender=REMOTE)  # 24 bytes, as large as the cookie
    got = wire.replies()
    assert [(r[0], r[2]) for r in got] == [("/mvae/verify", ("10.1.2.3", 9001))]
    wire.send("/mvae/verify", got[0][1][0], sender=REMOTE)
    wire.send("/mvae/ping", sender=REMOTE)
    assert wire.replies() == [("/mvae/pong", (), ("10.1.2.3", 9001))]


def test_guessing_cookies_is_rate_limited(vae: MelodyVAE) -> None:
    wire = guarded(vae, allow_from=(LAN,))
    guard = wire.core.guard
    guard.clock = lambda: 50.0  # no refill
    right = guard.cookie(REMOTE)
    for guess in range(200):
        if guess != right:
            wire.send("/mvae/verify", guess, sender=REMOTE)
    wire.send("/mvae/verify", right, sender=REMOTE)  # too many wrong ones: not now
    wire.send("/mvae/ping", sender=REMOTE)
    assert wire.replies() == []
    guard.clock = lambda: 52.0  # the guesses' budget refills
    wire.send("/mvae/verify", right, sender=REMOTE)
    wire.send("/mvae/ping", sender=REMOTE)
    assert wire.replies() == [("/mvae/pong", (), REMOTE)]


def test_two_servers_challenging_each_other_fall_silent(vae: MelodyVAE) -> None:
    wire = guarded(vae, allow_from=(LAN,))
    wire.send("/mvae/verify", 12345, sender=REMOTE)  # another server's challenge
    assert wire.replies() == []


def test_reply_bytes_are_capped_per_destination(vae: MelodyVAE) -> None:
    """One bundle of 512 /mvae/z/get would draw 512 packets; the cap stops it."""
    rate = 4096
    wire = guarded(vae, reply_rate=rate)
    wire.core.guard.clock = lambda: 100.0  # no refill while the bundle is handled
    builder = OscBundleBuilder(1)
    for _ in range(512):
        builder.add_content(OscMessageBuilder("/mvae/z/get").build())
    wire.core.handle_datagram(builder.build().dgram, CLIENT)
    sent = sum(len(data) for data, _ in wire.sent)
    assert 0 < sent <= rate
    assert wire.core.guard.stats.throttled > 400
    wire.sent.clear()
    wire.send("/mvae/ping", sender=("127.0.0.1", 50001))  # another destination: its own cap
    assert wire.replies() == [("/mvae/pong", (), ("127.0.0.1", 50001))]


# ------------------------------------------------------------------ ranges


@pytest.mark.parametrize("value", [1e308, -1e39, 3.5e38, MAX_Z + 0.5])
def test_large_finite_latent_values_are_refused_naming_the_bound(vae: MelodyVAE,
                                                                value: float) -> None:
    wire = guarded(vae)
    wire.send("/mvae/z", 0.5, value, types="dd")
    reason = wire.error()
    assert f"z[1] (argument 2) must lie in -{MAX_Z:g}..{MAX_Z:g}" in reason
    wire.send("/mvae/z/i", 3, value, types="id")
    assert "must lie in" in wire.error()
    wire.send("/mvae/z/get")
    z = wire.one("/mvae/z")
    assert np.all(np.isfinite(z)) and np.all(np.abs(z) <= MAX_Z)


def test_doubles_beyond_float32_are_refused_everywhere(vae: MelodyVAE) -> None:
    wire = guarded(vae)
    wire.send("/mvae/slot/store", "a")
    wire.send("/mvae/slot/store", "b")
    wire.send("/mvae/interp", "a", "b", 1e39, types="ssd")
    assert "t (argument 3) must be finite in float32" in wire.error()
    wire.send("/mvae/blend", 0.5, -1e300, types="dd")
    assert "y (argument 2) must be finite in float32" in wire.error()


_EXTREME_NUMBERS = [0.0, -0.0, 1e308, -1e308, 1e39, -1e39, 3.4e38, 5e-324, float("nan"),
                    float("inf"), float("-inf"), 2**31 - 1, -(2**31), 2**63 - 1, -(2**63),
                    0.5, 127, 128, -1]
_STRINGS = ["", "x", "A", "pc1", "note_density", "echo", "../../etc/passwd", "é" * 40,
            "x" * 5000, "\u202e", "a/b", "call"]
_ARG = st.one_of(
    st.sampled_from(_EXTREME_NUMBERS).map(lambda v: (v, "d" if isinstance(v, float) else
                                                     ("h" if abs(v) >= 2**31 else "i"))),
    st.floats(width=32, allow_nan=True).map(lambda v: (v, "f")),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: (v, "i")),
    st.sampled_from(_STRINGS).map(lambda v: (v, "s")),
)


def _addresses(core: Any) -> list[str]:
    return sorted(set(core.handlers) | {"/mvae/reply", "/mvae/verify", "/mvae/nope"})


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_extreme_numbers_and_strings_on_every_address(
        axes_vae: MelodyVAE, caplog: pytest.LogCaptureFixture, data: st.DataObject) -> None:
    """No input prints a traceback or answers "internal error"; every reply parses and
    holds finite numbers; the client's z stays finite and inside the bound."""
    wire = guarded(axes_vae)
    core = wire.core
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for _ in range(data.draw(st.integers(1, 4))):
            address = data.draw(st.sampled_from(_addresses(core)))
            args = data.draw(st.lists(_ARG, max_size=10))
            wire.send(address, *[v for v, _ in args], types="".join(t for _, t in args))
        for probe in ("/mvae/z/get", "/mvae/status", "/mvae/play", "/mvae/vary"):
            wire.send(probe, *([0.3] if probe == "/mvae/vary" else []))  # state stays sound
        assert core.files.wait_idle()
        core.engine.run_pending()
        core.live.run_due(time.time() + 30)
        core.engine.run_pending()
        core.player.tick(time.time() + 30)
    assert not [r for r in caplog.records if r.exc_info], caplog.text
    for payload, _ in wire.sent:
        for item in parse_packet(payload):
            assert isinstance(item, Message), item
            assert "internal error" not in " ".join(str(a) for a in item.args), item
            for arg in item.args:
                assert not isinstance(arg, float) or math.isfinite(arg), item
    z = core.client(CLIENT).z
    assert np.all(np.abs(z) < 1e4), z  # a few dozen at most in any legal use


def test_ping_refuses_to_echo_numbers_that_are_not_finite(vae: MelodyVAE) -> None:
    wire = Wire(vae)
    wire.send("/mvae/ping", 1.5, "x", 3)
    assert [(a, args) for a, args, _ in wire.replies()] == [("/mvae/pong", (1.5, "x", 3))]
    for bad in (math.inf, -math.inf, math.nan):
        wire.send("/mvae/ping", 1.0, bad)
        (address, args, _), = wire.replies()
        assert address == "/mvae/error" and args[0] == "/mvae/ping", args
        assert "finite" in args[1]


# ------------------------------------------------------------------ streams end


def test_a_stream_ends_after_the_lease_and_any_message_renews_it(vae: MelodyVAE) -> None:
    now = [1_000_000.0]
    wire = Wire(vae, lease=60.0)
    core = wire.core
    core.player.clock = lambda: now[0]
    wire.send("/mvae/play")
    wire.replies()
    assert core.player.streams() == 1
    now[0] += 50
    core.player.tick()
    wire.send("/mvae/ping")  # renews the lease
    now[0] += 50
    core.player.tick()
    assert core.player.streams() == 1
    now[0] += 11
    core.player.tick()
    assert core.player.streams() == 0
    assert core.guard.stats.expired == 1


def test_evicted_clients_decodes_leave_the_batch(vae: MelodyVAE) -> None:
    wire = Wire(vae, max_clients=2)
    engine = wire.core.engine
    first, second, third = ("127.0.0.1", 50001), ("127.0.0.1", 50002), ("127.0.0.1", 50003)
    wire.send("/mvae/z", 1.0, sender=first)
    wire.send("/mvae/z", 2.0, sender=second)
    admit_and_step(wire)
    assert len(engine.rolling) == 2
    wire.send("/mvae/z", 3.0, sender=third)  # the first client is forgotten
    admit_and_step(wire)
    assert engine.stats.cancelled == 1
    assert len(engine.rolling) == 1  # the second; the third, a newcomer, waits behind it
    assert list(engine.held) == [third]
    melodies = wire.melodies()
    assert [m["to"] for m in melodies] == [second, third]


def test_while_newcomers_crowd_the_table_settled_clients_go_first(
        vae: MelodyVAE, monkeypatch: pytest.MonkeyPatch) -> None:
    """A flood of new source ports: the client that was there first (settled) has its
    decodes run alone; the newcomers' wait, and go when forgotten."""
    import melodyvae.server.clients as clients

    now = [0.0]
    wire = Wire(vae, max_clients=8)
    core, engine = wire.core, wire.core.engine
    core.clients.clock = lambda: now[0]
    monkeypatch.setattr(clients, "SETTLE_S", 0.5)
    wire.send("/mvae/ping")
    now[0] = 1.0
    wire.send("/mvae/ping")  # heard again half a second later: settled
    wire.replies()
    flood = [("127.0.0.1", 40000 + i) for i in range(40)]
    for sender in flood:
        wire.send("/mvae/z", 0.5, sender=sender)
    wire.send("/mvae/z", 1.0)  # the settled client asks
    assert core.client(CLIENT) is not None
    assert len(core.clients) == 8 and CLIENT in [c.key for c in core.clients.values()]
    batches: list[int] = []
    engine.on_batch = batches.append
    with numpy_context():
        engine._take_and_run()
    assert len(engine.rolling) == 1  # the settled client's decode runs alone
    assert [job.client.key for job in engine.running.values()] == [CLIENT]
    assert len(engine.held) == 7  # the newcomers still remembered wait
    assert engine.stats.decoded == 0


# ------------------------------------------------------------------ with real sockets


def _server_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_the_self_loop_dies_at_once(tmp_path: Path) -> None:
    """/mvae/reply <the server's own port> then /mvae/ping used to loop ~55,000 datagrams a
    second for good; now the route is refused and nothing loops: the server's CPU over 3 s
    stays near idle."""
    model = make_checkpoint(tmp_path / "tiny.safetensors")
    proc = subprocess.Popen([sys.executable, "-m", "melodyvae.cli", "serve", "--model",
                             str(model), "--port", "0", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(5)
            target = ("127.0.0.1", port)
            sock.sendto(datagram("/mvae/reply", port), target)
            assert b"this server's own" in sock.recv(4096)
            sock.sendto(datagram("/mvae/ping"), target)
            sock.sendto(datagram("/mvae/error", "/x", "loop?"), target)
            sock.sendto(datagram("/mvae/pong"), target)
            before = _server_cpu_seconds(proc.pid)
            time.sleep(3.0)
            spent = _server_cpu_seconds(proc.pid) - before
            assert spent < 0.3, f"server used {spent:.2f} s of CPU in 3 s"
            sock.sendto(datagram("/mvae/stats"), target)
            while not (data := sock.recv(65536)).startswith(b"/mvae/stats"):
                pass
            received = struct.unpack(">i", data[data.index(b"\x00\x00\x00\x00", 12) + 4:][:4])
            assert received[0] < 10
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_server_refuses_a_reply_port_that_is_its_own(tmp_path: Path) -> None:
    model = make_checkpoint(tmp_path / "tiny.safetensors")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "melodyvae.cli", "serve", "--model",
                           str(model), "--port", str(port), "--reply-port", str(port)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "the port the server listens on" in done.stderr
    assert done.stderr.count("\n") == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="IP_RECVERR is Linux's")
def test_a_destination_that_refuses_stops_its_stream_within_a_second(vae: MelodyVAE) -> None:
    with OscServer(vae, port=0) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        target = ("127.0.0.1", server.port)
        sock.sendto(datagram("/mvae/tempo", 400.0), target)
        sock.sendto(datagram("/mvae/play"), target)
        while b"/mvae/noteon" not in sock.recv(65536):
            pass
        assert server.core.player.streams() == 1
        sock.close()  # nobody listens there any more: the next bundle draws an ICMP error
        deadline = time.monotonic() + 1.0
        while server.core.player.streams() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.core.player.streams() == 0
        assert server.core.guard.stats.refused >= 1
        # and the socket still serves everyone else
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
            other.settimeout(5)
            other.sendto(datagram("/mvae/ping", 3), target)
            assert b"/mvae/pong" in other.recv(1024)


# ------------------------------------------------------------------ files


def test_files_are_checked_once_opened(vae: MelodyVAE, tmp_path: Path) -> None:
    """A FIFO, a link (even one pointing inside), a 1 GB WAV and an oversized MIDI file in
    the allowed folder are refused at once, and reading goes on for everyone."""
    from conftest import scale_melody

    from melodyvae.midi import write_midi

    allowed = tmp_path / "allowed"
    allowed.mkdir()
    write_midi(scale_melody(), allowed / "scale.mid")
    os.mkfifo(allowed / "pipe.mid")
    (allowed / "again.mid").symlink_to(allowed / "scale.mid")
    with open(allowed / "huge.wav", "wb") as f:
        f.write(b"RIFF" + (36 + (1 << 30)).to_bytes(4, "little") + b"WAVEfmt "
                + struct.pack("<IHHIIHH", 16, 1, 2, 44_100, 44_100 * 4, 4, 16)
                + b"data" + (1 << 30).to_bytes(4, "little"))
        f.truncate(44 + (1 << 30))
    with open(allowed / "big.mid", "wb") as f:
        f.write(b"MThd")
        f.truncate(50 << 20)
    wire = Wire(vae, allow_dir=allowed)
    started = time.monotonic()
    for name, reason in [("pipe.mid", "not a regular file"),
                         ("again.mid", "links are not followed"),
                         ("huge.wav", "s of audio, the limit is 60 s"),
                         ("big.mid", "the limit is 1,048,576")]:
        wire.send("/mvae/encode/file", name, sender=("127.0.0.1", 52000))
        assert reason in wire.error(), name
    assert time.monotonic() - started < 5.0
    wire.send("/mvae/encode/file", "scale.mid")
    assert [r[0] for r in wire.replies()] == ["/mvae/z"]
