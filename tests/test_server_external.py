"""The whole server from real external clients: ``melodyvae serve`` as a subprocess, liblo's
``oscsend`` / ``oscdump``, Pure Data and SuperCollider's sclang running headless, the
Python example client, and a fuzzer. Tools that are not installed skip their tests."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import make_checkpoint
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

ROOT = Path(__file__).resolve().parent.parent
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
Z_DIM = 8  # tiny presets
needs_liblo = pytest.mark.skipif(not (shutil.which("oscsend") and shutil.which("oscdump")),
                                 reason="liblo-tools (oscsend, oscdump) not installed")
needs_pd = pytest.mark.skipif(shutil.which("pd") is None,
                              reason="Pure Data (puredata-core) not installed")
needs_sclang = pytest.mark.skipif(
    shutil.which("sclang") is None,
    reason="SuperCollider's sclang (supercollider-language) not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def osc(address: str, *args: Any, types: str | None = None) -> bytes:
    builder = OscMessageBuilder(address)
    for i, value in enumerate(args):
        builder.add_arg(value, types[i] if types else None)
    return builder.build().dgram


def packed(address: str, tags: str, values: list[float]) -> bytes:
    """A message packed with struct: the fuzzer's huge vectors, fast."""
    def pad(raw: bytes) -> bytes:
        return raw + b"\x00" * (4 - len(raw) % 4)

    return pad(address.encode()) + pad(("," + tags).encode()) + struct.pack(
        ">" + tags, *values)


def axes_doc() -> dict[str, object]:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((Z_DIM, Z_DIM)))
    return {"pca": {"mean": [0.0] * Z_DIM, "std": [1.0] * 8, "directions": q.T.tolist()},
            "attributes": {"note_density": rng.standard_normal(Z_DIM).tolist()}}


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int

    def stop(self, sig: int = signal.SIGINT) -> tuple[int, str]:
        """Signal the server; its exit status and stderr."""
        self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def serve(model: Path, *extra: str) -> Served:
    """Start ``melodyvae serve`` on a free port and wait for its announcement."""
    command = [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(model),
               "--port", "0", "--threads", "1", "--device", "cpu", *extra]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the announcement (or exit)
    match = LISTENING.search(line)
    if not match:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"server did not start: {line!r}\n{err}")
    return Served(proc, int(match.group(1)))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("models")
    return {"plain": make_checkpoint(folder / "tiny.safetensors"),
            "axes": make_checkpoint(folder / "tiny-axes.safetensors",
                                    extra={"axes": axes_doc()})}


@pytest.fixture(scope="module")
def answering(models: dict[str, Path]) -> Iterator[Served]:
    """A server that answers each sender (for Pd and the Python client)."""
    served = serve(models["axes"])
    yield served
    code, err = served.stop(signal.SIGINT)
    assert code == 0, err


class Dump:
    """``oscdump -L`` writing what it receives to a file."""

    def __init__(self, path: Path) -> None:
        self.port = free_port()
        self.path = path
        self.file = open(path, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(["oscdump", "-L", str(self.port)], stdout=self.file,
                                     stderr=subprocess.STDOUT)
        time.sleep(0.2)

    def lines(self) -> list[str]:
        return self.path.read_text().splitlines()

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 10.0) -> list[str]:
        """Lines from ``start`` on, once one of them matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = self.lines()[start:]
            if any(re.search(pattern, line) for line in lines):
                return lines
            time.sleep(0.05)
        raise AssertionError(f"oscdump saw no {pattern!r}; it saw: {self.lines()[start:]}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.file.close()


@pytest.fixture(scope="module")
def dumped(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[Served, Dump]]:
    """A server with --reply-port pointing at oscdump."""
    dump = Dump(tmp_path_factory.mktemp("dump") / "oscdump.txt")
    served = serve(models["plain"], "--reply-port", str(dump.port))
    yield served, dump
    code, err = served.stop(signal.SIGINT)
    dump.close()
    assert code == 0, err
    assert "Traceback" not in err


def oscsend(port: int, address: str, types: str = "", *values: object) -> None:
    command = ["oscsend", "127.0.0.1", str(port), address]
    if types:
        command += [types, *map(str, values)]
    subprocess.run(command, check=True, timeout=10)


# ------------------------------------------------------------------ liblo


@needs_liblo
def test_oscsend_z_gives_a_melody_seen_by_oscdump(dumped: tuple[Served, Dump]) -> None:
    served, dump = dumped
    start = len(dump.lines())
    oscsend(served.port, "/mvae/z", "fff", 0.5, -1, 0.2)
    lines = dump.wait_for(r"/mvae/melody/end i \d+", start)
    begin = next(line for line in lines if "/mvae/melody/begin" in line)
    melody_id = begin.split()[3]
    assert begin.split()[2:] == ["iiif", melody_id, "4", "16", "120.000000"]
    notes = [line.split() for line in lines if " /mvae/note " in line]
    assert notes, lines
    assert all(n[2] == "iiiff" and n[3] == melody_id for n in notes)
    starts = [float(n[6]) for n in notes]
    assert starts == sorted(starts) and starts[-1] < 16
    assert any(line.endswith(f"/mvae/melody/end i {melody_id}") for line in lines)


@needs_liblo
def test_oscsend_ping_status_and_errors(dumped: tuple[Served, Dump]) -> None:
    served, dump = dumped
    start = len(dump.lines())
    oscsend(served.port, "/mvae/ping")
    oscsend(served.port, "/mvae/status")
    oscsend(served.port, "/mvae/z", "sf", "x", 1.0)
    oscsend(served.port, "/mvae/xy", "ff", 0.1, 0.2)
    oscsend(served.port, "/mvae/z", "f", "nan")
    lines = dump.wait_for("must be finite", start)
    text = "\n".join(lines)
    assert "/mvae/pong" in text
    assert '/mvae/status siisii "tiny" 4 8 "cpu" 16 0' in text
    assert '"/mvae/z" "z[0] (argument 1) must be a number, not a string"' in text
    assert '"/mvae/xy" "model has no latent axes; run melodyvae axes MODEL"' in text


@needs_liblo
def test_oscsend_calls_share_one_client_through_the_reply_port(
        dumped: tuple[Served, Dump]) -> None:
    served, dump = dumped
    oscsend(served.port, "/mvae/z", "ff", 1.0, 1.0)
    oscsend(served.port, "/mvae/tempo", "f", 240)
    start = len(dump.lines())
    oscsend(served.port, "/mvae/play")
    lines = dump.wait_for(r"/mvae/noteon ii \d+ \d+", start, timeout=5)
    oscsend(served.port, "/mvae/stop")
    ons = [line.split() for line in lines if "/mvae/noteon" in line]
    stamps = [int(on[0].replace(".", ""), 16) / 2**32 for on in ons]
    pairs = list(zip(stamps, stamps[1:], strict=False))
    assert all(b > a for a, b in pairs)  # timetags, not arrival times
    assert all((b - a) * 16 == pytest.approx(round((b - a) * 16), abs=1e-3)
               for a, b in pairs)  # on the 16th grid of 240 qpm


# ------------------------------------------------------------------ lifecycle


def test_sigterm_stops_the_server_cleanly(models: dict[str, Path]) -> None:
    served = serve(models["plain"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(osc("/mvae/ping"), ("127.0.0.1", served.port))
        assert sock.recv(1024).startswith(b"/mvae/pong")
    code, err = served.stop(signal.SIGTERM)
    assert code == 0, err


def test_a_missing_model_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(tmp_path / "no"),
         "--port", "0"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a checkpoint file" in result.stderr


def test_a_taken_port_is_one_line_and_exit_2(models: dict[str, Path]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(models["plain"]),
             "--port", str(port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


# ------------------------------------------------------------------ Python client


def test_the_python_example_client(answering: Served) -> None:
    client = ROOT / "examples" / "python" / "client.py"

    def run(*args: str) -> str:
        result = subprocess.run([sys.executable, str(client), "--port", str(answering.port),
                                 *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "model tiny-axes: 4 bars of 16 steps, latent 8" in run("status")
    out = run("z", "0.5", "-1", "0.2")
    assert out.startswith("melody ") and "beats" in out
    assert "xy (+1.50, +0.00)" in run("morph", "2")
    assert run("encode", "60", "0", "1", "64", "1", "1").startswith("z = ")
    assert "pc1 pc2" in run("axes")


# ------------------------------------------------------------------ Pure Data


PD_TEST_PATCH = """#N canvas 0 0 600 400 12;
#X obj 10 10 loadbang;
#X msg 10 40 connect 127.0.0.1 {port};
#X obj 10 200 netsend -u -b;
#X obj 200 40 delay 300;
#X msg 200 70 0.5 -1 0.2;
#X obj 200 100 oscformat mvae z;
#X obj 200 130 list prepend send;
#X obj 200 160 list trim;
#X obj 10 230 oscparse;
#X obj 10 260 list trim;
#X obj 10 290 print OSC;
#X obj 300 230 route mvae;
#X obj 300 260 route melody;
#X obj 300 290 route end;
#X msg 300 320 \\; pd quit;
#X obj 450 40 delay 15000;
#X connect 0 0 1 0;
#X connect 0 0 3 0;
#X connect 0 0 15 0;
#X connect 1 0 2 0;
#X connect 3 0 4 0;
#X connect 4 0 5 0;
#X connect 5 0 6 0;
#X connect 6 0 7 0;
#X connect 7 0 2 0;
#X connect 2 1 8 0;
#X connect 8 0 9 0;
#X connect 9 0 10 0;
#X connect 9 0 11 0;
#X connect 11 0 12 0;
#X connect 12 0 13 0;
#X connect 13 0 14 0;
#X connect 15 0 14 0;
"""


def run_pd(*patches: Path, timeout: float = 30) -> str:
    result = subprocess.run(
        ["pd", "-nogui", "-noaudio", "-nomidi", "-stderr",
         *[arg for patch in patches for arg in ("-open", str(patch))]],
        capture_output=True, text=True, timeout=timeout)
    return result.stdout + result.stderr


@needs_pd
def test_pure_data_sends_z_and_receives_the_notes(answering: Served, tmp_path: Path) -> None:
    patch = tmp_path / "z.pd"
    patch.write_text(PD_TEST_PATCH.format(port=answering.port))
    out = run_pd(patch)
    lines = [line for line in out.splitlines() if line.startswith("OSC:")]
    assert any(re.match(r"OSC: mvae melody begin \d+ 4 16 120$", line) for line in lines), out
    notes = [line.split() for line in lines if line.startswith("OSC: mvae note")]
    assert notes and all(len(n) == 8 for n in notes), out  # id pitch velocity start dur
    assert re.search(r"OSC: mvae melody end \d+", out)


PD_DRIVER = """#N canvas 0 0 450 300 12;
#X obj 10 10 loadbang;
#X obj 10 40 delay 300;
#X msg 10 70 \\; mvae-connect disconnect \\; mvae-connect connect 127.0.0.1 {port};
#X obj 10 100 delay 300;
#X msg 10 130 \\; mvae-x 1.5;
#X obj 10 160 delay 1000;
#X msg 10 190 \\; mvae-z0 -2;
#X obj 10 220 delay 1000;
#X msg 10 250 \\; pd quit;
#X connect 0 0 1 0;
#X connect 1 0 2 0;
#X connect 1 0 3 0;
#X connect 3 0 4 0;
#X connect 3 0 5 0;
#X connect 5 0 6 0;
#X connect 5 0 7 0;
#X connect 7 0 8 0;
"""


@needs_pd
def test_the_pd_example_patch_drives_the_server(answering: Served, tmp_path: Path) -> None:
    example = ROOT / "examples" / "pd" / "melodyvae.pd"
    driver = tmp_path / "driver.pd"
    driver.write_text(PD_DRIVER.format(port=answering.port))
    out = run_pd(example, driver)
    assert "couldn't create" not in out and "error" not in out.lower(), out
    begins = re.findall(r"melodyvae: begin (\d+) 4 16 120", out)
    assert len(begins) == 2, out  # one melody for the X slider, one for the z0 slider
    assert len(re.findall(r"^note: \d+ \d+ 90 ", out, re.M)) > 0, out


SC_DRIVER = """
~mvaeHeadless = true; ~mvaePort = {port};
thisProcess.interpreter.executeFile("{example}");
OSCdef(\\testOn, {{ |msg, time|
    "test: noteon % ahead %".format(msg[1], time - SystemClock.seconds).postln;
}}, '/mvae/noteon');
Routine {{
    0.5.wait;
    ~mvae.sendMsg('/mvae/z', 0.5, -1.0, 0.2);
    1.5.wait;
    ~mvaePreview = false;
    ~mvae.sendMsg('/mvae/play');
    2.5.wait;
    ~mvae.sendMsg('/mvae/stop');
    0.5.wait;
    "test: done".postln;
    0.exit;
}}.play(SystemClock);
"""


@needs_sclang
def test_the_supercollider_example_drives_the_server(answering: Served, tmp_path: Path
                                                     ) -> None:
    """The example's OSC side, headless: status and axes answered, a melody previewed, then
    the server's playback bundles scheduled by their timetags (about the lookahead ahead)."""
    driver = tmp_path / "driver.scd"
    example = ROOT / "examples" / "supercollider" / "melodyvae.scd"
    driver.write_text(SC_DRIVER.format(port=answering.port, example=example))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "QTWEBENGINE_DISABLE_SANDBOX": "1"}
    result = subprocess.run(["sclang", str(driver)], capture_output=True, text=True,
                            timeout=60, env=env, cwd=tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "test: done" in out, out
    assert "ERROR" not in out and "WARNING: melodyvae" not in out, out
    assert re.search(r"^melodyvae: model \S+, 4 bars, latent 8, device cpu$", out, re.M), out
    assert re.search(r"^melodyvae: latent axes \[ pc1, pc2, .*note_density \]$", out, re.M)
    assert re.search(r"^melodyvae: melody \d+ \(4 bars at 120\.0 qpm\)$", out, re.M), out
    assert re.search(r"^melodyvae: note on \d+ 90$", out, re.M), out  # the preview
    ahead = [float(a) for a in re.findall(r"^test: noteon \d+ ahead (\S+)$", out, re.M)]
    assert ahead, out
    assert all(0.0 < a <= 0.5 for a in ahead), ahead  # 0.1 s lookahead, not decades


def test_the_max_example_is_a_valid_patcher() -> None:
    doc = json.loads((ROOT / "examples" / "max" / "melodyvae.maxpat").read_text())
    boxes = {b["box"]["id"]: b["box"] for b in doc["patcher"]["boxes"]}
    texts = [b.get("text", "") for b in boxes.values()]
    assert any(t.startswith("udpsend 127.0.0.1 9000") for t in texts)
    assert any(t.startswith("udpreceive") for t in texts)
    for line in doc["patcher"]["lines"]:
        (src, outlet), (dst, inlet) = (line["patchline"]["source"],
                                       line["patchline"]["destination"])
        assert outlet < boxes[src]["numoutlets"] and inlet < boxes[dst]["numinlets"]


# ------------------------------------------------------------------ fuzz


def fuzz_datagrams(n: int, seed: int = 0) -> Iterator[bytes]:
    """Random bytes, truncated and mutated valid messages, wrong type tags, far-future
    and deeply nested bundles, NaN / infinity, huge vectors and note lists."""
    rng = random.Random(seed)
    addresses = ["/mvae/ping", "/mvae/z", "/mvae/z/i", "/mvae/xy", "/mvae/axis",
                 "/mvae/sample", "/mvae/temperature", "/mvae/seed", "/mvae/vary",
                 "/mvae/slot/store", "/mvae/slot/recall", "/mvae/interp", "/mvae/blend",
                 "/mvae/encode", "/mvae/encode/file", "/mvae/tempo", "/mvae/lookahead",
                 "/mvae/play", "/mvae/stop", "/mvae/status", "/mvae/axes", "/mvae/stats",
                 "/mvae/z/get", "/mvae/nope", "/other"]
    specials = [float("nan"), float("inf"), -float("inf"), 1e38, -1e38, 0.0, 3.5, -1.0]

    def value() -> tuple[object, str]:
        kind = rng.randrange(5)
        if kind == 0:
            return rng.choice(specials), "f"
        if kind == 1:
            return rng.randint(-2**31, 2**31 - 1), "i"
        if kind == 2:
            return "".join(rng.choice("ABab/.\\é") for _ in range(rng.randrange(80))), "s"
        if kind == 3:
            return rng.uniform(-5, 5), "d"
        return rng.uniform(-3, 3), "f"

    def valid() -> bytes:
        values = [value() for _ in range(rng.randrange(8))]
        return osc(rng.choice(addresses), *[v for v, _ in values],
                   types="".join(t for _, t in values))

    def bundle(elements: list[bytes], seconds: float) -> bytes:
        ntp = int((seconds + 2_208_988_800) * 2**32) & (2**64 - 1)
        parts = [b"#bundle\x00", struct.pack(">Q", ntp)]
        for element in elements:
            parts += [struct.pack(">i", len(element)), element]
        return b"".join(parts)

    for _ in range(n):
        kind = rng.randrange(10)
        if kind == 0:
            yield rng.randbytes(rng.randrange(200))
        elif kind == 1:
            data = valid()
            yield data[:rng.randrange(len(data) + 1)]
        elif kind == 2:
            mutated = bytearray(valid())
            for _ in range(rng.randrange(1, 6)):
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            yield bytes(mutated)
        elif kind == 3:  # a valid address with random type tags and too few bytes
            tags = "," + "".join(rng.choice("ifsbhdTFNcm[]rtS") for _ in range(rng.randrange(9)))
            raw = rng.choice(addresses).encode()
            yield (raw + b"\x00" * (4 - len(raw) % 4) + tags.encode()
                   + b"\x00" * (4 - len(tags) % 4) + rng.randbytes(rng.randrange(40)))
        elif kind == 4:  # far-future (and past) bundles
            seconds = rng.choice([time.time() + 10**8, time.time() + 3600, 0.0, 1e9])
            yield bundle([valid() for _ in range(rng.randrange(4))], seconds)
        elif kind == 5:  # nested bundles, some broken
            data = valid()
            for _ in range(rng.randrange(1, 12)):
                data = bundle([data], time.time() + 10**7)
            yield data if rng.random() < 0.7 else data[:rng.randrange(len(data))]
        elif kind == 6:  # huge vectors
            count = rng.randrange(9, 4000)
            yield packed("/mvae/z", "f" * count, [rng.uniform(-2, 2) for _ in range(count)])
        elif kind == 7:  # huge or broken note lists
            count = rng.choice([rng.randrange(1, 10), rng.randrange(60, 3000)])
            values = [rng.choice([60, 61.5, -4, 1000, float("nan")]) for _ in range(count)]
            yield packed("/mvae/encode", "f" * count, values)
        elif kind == 8:  # NaN and infinity where numbers are meant
            address = rng.choice(["/mvae/z", "/mvae/xy", "/mvae/tempo", "/mvae/vary",
                                  "/mvae/z/i", "/mvae/blend", "/mvae/temperature"])
            yield osc(address, *[rng.choice(specials) for _ in range(rng.randrange(1, 4))])
        else:
            yield valid()


def test_fuzz_10000_datagrams_then_pong(models: dict[str, Path]) -> None:
    served = serve(models["axes"], "--max-clients", "8")
    target = ("127.0.0.1", served.port)
    status = Path(f"/proc/{served.proc.pid}/status")

    def rss_kib() -> int:
        match = re.search(r"VmRSS:\s+(\d+)", status.read_text())
        return int(match.group(1)) if match else 0

    syncs = iter(range(1, 10**6))

    def sync(sock: socket.socket) -> None:
        """Route replies back here, stop any playback, then wait for the pong of a fresh
        ping: the server has handled everything sent before it."""
        sock.sendto(osc("/mvae/reply", 0), target)
        sock.sendto(osc("/mvae/stop"), target)
        token = next(syncs)
        deadline = time.monotonic() + 30
        next_ping = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_ping:  # a reply may be dropped if we lag behind
                sock.sendto(osc("/mvae/ping", token), target)
                next_ping = time.monotonic() + 1.0
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if data.startswith(b"/mvae/pong") and OscMessage(data).params == [token]:
                return
        raise AssertionError("no pong")

    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.settimeout(0.2)
            sync(sock)
            rss_before = rss_kib()
            sent = unsynced = 0
            for data in fuzz_datagrams(10_000):
                sock.sendto(data, target)
                sent += 1
                unsynced += len(data) + 1024  # roughly what the kernel charges for it
                if unsynced > 256 * 1024:
                    sync(sock)  # paced, so the kernel buffer never drops anything
                    unsynced = 0
            sync(sock)
            assert served.proc.poll() is None, "the server died"
            sock.sendto(osc("/mvae/stats"), target)
            while not (data := sock.recv(65536)).startswith(b"/mvae/stats"):
                pass
            stats = OscMessage(data).params
            received, clients, errors = stats[0], stats[7], stats[9]
            assert received >= sent
            assert errors > sent // 2  # most of it was refused, with a reason
            assert clients <= 8
            sock.sendto(osc("/mvae/z", 0.5, -1.0, 0.2), target)
            while not sock.recv(65536).startswith(b"/mvae/melody/end"):
                pass  # still making melodies
            assert rss_kib() - rss_before < 60_000  # nothing grew without bound
    finally:
        code, err = served.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err, err
