"""The examples as a person uses them, against a real ``melodyvae serve``.

Pure Data runs headless and is driven through its own canvas: the test finds a control in
the patch file (by its receive name or its text) and clicks or drags it with the mouse
messages Pd's GUI sends (``pd-PATCH mouse x y``), so every object between the control and
the network is exercised, as when a person clicks. SuperCollider's example starts through
its launcher, as root and as an ordinary user. The Max patch cannot run here; it is read.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import make_checkpoint

ROOT = Path(__file__).resolve().parent.parent
PD_PATCH = ROOT / "examples" / "pd" / "melodyvae.pd"
SC_LAUNCHER = ROOT / "examples" / "supercollider" / "run.sh"
MAX_PATCH = ROOT / "examples" / "max" / "melodyvae.maxpat"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
Z_DIM = 8  # tiny presets

needs_pd = pytest.mark.skipif(shutil.which("pd") is None,
                              reason="Pure Data (puredata-core) not installed")
needs_sclang = pytest.mark.skipif(shutil.which("sclang") is None,
                                  reason="SuperCollider's sclang (supercollider-language) "
                                  "not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Lines:
    """A process's output, line by line, read on a thread so tests can wait for a line."""

    def __init__(self, stream: object) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self._new.put(line.rstrip("\n"))

    def _drain(self) -> None:
        while True:
            try:
                self.lines.append(self._new.get_nowait())
            except queue.Empty:
                return

    def mark(self) -> int:
        self._drain()
        return len(self.lines)

    def since(self, start: int) -> list[str]:
        self._drain()
        return self.lines[start:]

    def wait_for(self, pattern: str, start: int, timeout: float = 15.0) -> list[str]:
        """Lines from ``start`` on, once one of them matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ended = not self._thread.is_alive()  # the process closed its output
            got = self.since(start)
            if any(re.search(pattern, line) for line in got):
                return got
            if ended:
                break
            time.sleep(0.02)
        raise AssertionError(f"no line matching {pattern!r}; saw:\n" + "\n".join(
            self.since(0)))


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


def axes_doc() -> dict[str, object]:
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((Z_DIM, Z_DIM)))
    return {"pca": {"mean": [0.0] * Z_DIM, "std": [1.0] * 8, "directions": q.T.tolist()},
            "attributes": {"note_density": rng.standard_normal(Z_DIM).tolist()}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``melodyvae serve`` with a tiny model that has latent axes, on a free port."""
    model = make_checkpoint(tmp_path_factory.mktemp("model") / "tiny-axes.safetensors",
                            extra={"axes": axes_doc()})
    proc = subprocess.Popen(
        [sys.executable, "-m", "melodyvae.cli", "serve", "--model", str(model), "--port", "0",
         "--threads", "1", "--device", "cpu"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None
    match = LISTENING.search(proc.stdout.readline())
    if not match:
        proc.kill()
        raise AssertionError(f"server did not start: {proc.communicate()[1]}")
    served = Served(proc, int(match.group(1)))
    yield served
    code, err = served.stop()
    assert code == 0, err
    assert "Traceback" not in err, err


# ------------------------------------------------------------------ Pure Data


@dataclass(frozen=True)
class Control:
    """Where an object sits on the canvas (its top-left corner) and what it is."""

    x: int
    y: int
    kind: str  # the object's class: bng, tgl, hsl, vsl, msg, floatatom, ...
    args: tuple[str, ...]


def pd_controls(patch: Path) -> list[Control]:
    """Every object of the patch's top canvas, in file order."""
    found = []
    for record in re.split(r";\s*\n", patch.read_text()):
        words = record.split()
        if len(words) >= 4 and words[0] == "#X" and words[1] in ("obj", "msg", "floatatom"):
            if words[1] == "obj":
                kind, args = (words[4], tuple(words[5:])) if len(words) > 4 else ("", ())
            else:
                kind, args = words[1], tuple(words[4:])
            found.append(Control(int(words[2]), int(words[3]), kind, args))
    return found


def gui_with_receive(patch: Path, name: str) -> Control:
    """The bang, toggle or slider whose receive name is ``name``."""
    for control in pd_controls(patch):
        receive = {"bng": 5, "tgl": 3, "hsl": 7, "vsl": 7}.get(control.kind)
        if receive is not None and len(control.args) > receive \
                and control.args[receive] == name:
            return control
    raise AssertionError(f"{patch.name} has no control receiving {name!r}")


def message_box(patch: Path, text: str) -> Control:
    """The message box that reads ``text``."""
    for control in pd_controls(patch):
        if control.kind == "msg" and " ".join(control.args) == text:
            return control
    raise AssertionError(f"{patch.name} has no message box [{text}(")


DRIVER = """#N canvas 0 0 450 300 12;
#X obj 10 10 netreceive -u {port};
#X obj 10 40 t a a;
#X obj 100 70 list split 1;
#X obj 100 100 symbol;
#X obj 10 130 list split 1;
#X obj 10 160 list trim;
#X obj 10 190 s;
#X connect 0 0 1 0;
#X connect 1 1 2 0;
#X connect 2 0 3 0;
#X connect 3 0 6 1;
#X connect 1 0 4 0;
#X connect 4 1 5 0;
#X connect 5 0 6 0;
"""


class PdSession:
    """Pure Data headless with the example patch open and a driver patch beside it that
    forwards FUDI messages from the test ("RECEIVER message args;") into Pd: the test
    clicks and drags on the example's canvas as Pd's own GUI would."""

    def __init__(self, patch: Path, tmp_path: Path) -> None:
        self.patch = patch
        self.canvas = f"pd-{patch.name}"
        self.port = free_port()
        driver = tmp_path / "driver.pd"
        driver.write_text(DRIVER.format(port=self.port))
        self.proc = subprocess.Popen(
            ["pd", "-nogui", "-noaudio", "-nomidi", "-stderr", "-open", str(patch),
             "-open", str(driver)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.out = Lines(self.proc.stdout)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        time.sleep(1.0)  # Pd opens both patches and binds the driver's port
        self.send(self.canvas, "vis 1")  # a canvas takes mouse events once it has an editor

    def send(self, receiver: str, message: str) -> None:
        self.sock.sendto(f"{receiver} {message};\n".encode(), ("127.0.0.1", self.port))
        time.sleep(0.05)

    def click(self, control: Control, dx: int = 5, dy: int = 5) -> None:
        x, y = control.x + dx, control.y + dy
        self.send(self.canvas, f"mouse {x} {y} 1 0")
        self.send(self.canvas, f"mouseup {x} {y} 1")

    def drag(self, control: Control, dx: int, dy: int, start: tuple[int, int] = (5, 5)
             ) -> None:
        x, y = control.x + start[0], control.y + start[1]
        self.send(self.canvas, f"mouse {x} {y} 1 0")
        for i in range(1, 5):
            self.send(self.canvas, f"motion {x + dx * i // 4} {y + dy * i // 4} 0")
        self.send(self.canvas, f"mouseup {x + dx} {y + dy} 1")

    def close(self) -> str:
        self.send("pd", "quit")
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.sock.close()
        return "\n".join(self.out.since(0))


@pytest.fixture
def pd_session(server: Served, tmp_path: Path) -> Iterator[PdSession]:
    session = PdSession(PD_PATCH, tmp_path)
    # the patch's documented way to point it at a server other than 127.0.0.1:9000
    session.send("mvae-connect", "disconnect")
    session.send("mvae-connect", f"connect 127.0.0.1 {server.port}")
    yield session
    session.close()


MELODY_END = r"^melodyvae: end \d+$"
ERROR = r"^melodyvae: error "


def no_errors(lines: list[str]) -> None:
    bad = [line for line in lines if re.search(ERROR, line) or "error" in line.lower()
           or "couldn't create" in line or "no such object" in line]
    assert not bad, "\n".join(lines)


IEMGUI_ARGS = {"bng": 14, "tgl": 14, "hsl": 18, "vsl": 18}  # as Pd 0.51+ saves them


def test_pd_controls_are_saved_whole() -> None:
    """A label with an unescaped space shifts every field after it; Pd then drops the
    control's receive name (the control stops answering its name)."""
    for control in pd_controls(PD_PATCH):
        if control.kind in IEMGUI_ARGS:
            assert len(control.args) == IEMGUI_ARGS[control.kind], control


@needs_pd
def test_pd_patch_loads_cleanly(tmp_path: Path) -> None:
    session = PdSession(PD_PATCH, tmp_path)
    out = session.close()
    assert "couldn't create" not in out and "error" not in out.lower(), out


@needs_pd
def test_pd_sample_and_vary_bangs(pd_session: PdSession) -> None:
    for name in ("mvae-sample", "mvae-vary"):
        start = pd_session.out.mark()
        pd_session.click(gui_with_receive(PD_PATCH, name))
        lines = pd_session.out.wait_for(MELODY_END, start)
        assert any(re.match(r"^note: \d+ \d+ \d+ ", line) for line in lines), lines
        no_errors(pd_session.out.since(start))


@needs_pd
def test_pd_xy_pad_and_z_sliders(pd_session: PdSession) -> None:
    for name, (dx, dy) in (("mvae-x", (60, 0)), ("mvae-y", (-40, 0)), ("mvae-z0", (0, -30)),
                           ("mvae-z3", (0, 40))):
        start = pd_session.out.mark()
        pd_session.drag(gui_with_receive(PD_PATCH, name), dx, dy,
                        start=(5, 60) if name.startswith("mvae-z") else (80, 9))
        pd_session.out.wait_for(MELODY_END, start)
        time.sleep(0.3)
        no_errors(pd_session.out.since(start))


@needs_pd
def test_pd_play_toggle_starts_and_stops_playback(pd_session: PdSession) -> None:
    pd_session.click(gui_with_receive(PD_PATCH, "mvae-monitor"))  # print playback notes
    toggle = gui_with_receive(PD_PATCH, "mvae-play")
    start = pd_session.out.mark()
    pd_session.click(toggle)
    lines = pd_session.out.wait_for(r"^playback: noteon \d+ \d+", start)
    no_errors(lines)
    pd_session.click(toggle)
    time.sleep(0.5)  # the stop and a sounding note's note-off arrive
    stopped = pd_session.out.mark()
    time.sleep(1.0)  # four 16ths at 120 qpm would have brought more notes
    after = pd_session.out.since(stopped)
    assert not [line for line in after if line.startswith("playback: noteon")], after
    no_errors(pd_session.out.since(start))


@needs_pd
def test_pd_encode_then_vary(pd_session: PdSession) -> None:
    start = pd_session.out.mark()
    pd_session.click(gui_with_receive(PD_PATCH, "mvae-encode"))
    pd_session.out.wait_for(rf"^melodyvae: encoded: z has {Z_DIM} values$", start)
    pd_session.click(gui_with_receive(PD_PATCH, "mvae-vary"))
    pd_session.out.wait_for(MELODY_END, start)
    no_errors(pd_session.out.since(start))


def slot_boxes(name: str) -> tuple[Control, Control]:
    """The store and the recall message box of slot ``name`` (store row first)."""
    store, recall = [c for c in pd_controls(PD_PATCH)
                     if c.kind == "msg" and c.args == ("list", name)]
    return store, recall


@needs_pd
def test_pd_slots_blend_and_errors_read_plainly(pd_session: PdSession) -> None:
    start = pd_session.out.mark()
    pd_session.click(slot_boxes("D")[1])  # recall a slot never stored: the server says so
    lines = pd_session.out.wait_for(ERROR, start)
    error = next(line for line in lines if re.search(ERROR, line))
    assert "\\" not in error, error  # no FUDI escapes in what a person reads
    assert error == ("melodyvae: error /mvae/slot/recall - slot 'D' is empty - store it "
                     "first with /mvae/slot/store D"), error

    sample = gui_with_receive(PD_PATCH, "mvae-sample")
    for name in "ABCD":
        start = pd_session.out.mark()
        pd_session.click(sample)
        pd_session.out.wait_for(MELODY_END, start)
        pd_session.click(slot_boxes(name)[0])
    start = pd_session.out.mark()
    pd_session.drag(gui_with_receive(PD_PATCH, "mvae-blend-x"), 50, 0, start=(20, 9))
    pd_session.out.wait_for(MELODY_END, start)
    pd_session.click(slot_boxes("B")[1])
    pd_session.out.wait_for(MELODY_END, pd_session.out.mark() - 1)
    time.sleep(0.3)
    no_errors(pd_session.out.since(start))



@needs_pd
def test_pd_improvise_answer_button_and_start_toggle(server: Served, tmp_path: Path) -> None:
    """improvise.pd: "answer now" before "start" is refused, and the refusal reads plainly;
    "start" then syncs and listens without a complaint."""
    patch = ROOT / "examples" / "pd" / "improvise.pd"
    session = PdSession(patch, tmp_path)
    try:
        session.send("mvae-connect", "disconnect")
        session.send("mvae-connect", f"connect 127.0.0.1 {server.port}")
        start = session.out.mark()
        session.click(gui_with_receive(patch, "mvae-answer"))
        lines = session.out.wait_for(ERROR, start)
        error = next(line for line in lines if re.search(ERROR, line))
        assert error == ("melodyvae: error /mvae/answer - not listening - send /mvae/listen "
                         "1 first"), error
        start = session.out.mark()
        session.click(gui_with_receive(patch, "mvae-start"))
        time.sleep(1.0)
        session.click(gui_with_receive(patch, "mvae-start"))
        time.sleep(0.3)
        no_errors(session.out.since(start))
    finally:
        session.close()

# ------------------------------------------------------------------ SuperCollider


def as_user(home: Path) -> tuple[list[str], dict[str, str]]:
    """A command prefix and environment that run a program as an ordinary user: this user
    when the tests are not root, else ``nobody`` (uid 65534) with its own home."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("QTWEBENGINE_DISABLE_SANDBOX", "QT_QPA_PLATFORM", "DISPLAY",
                        "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR")}
    env["HOME"] = str(home)
    if os.getuid() != 0:
        return [], env
    os.chown(home, 65534, 65534)
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"], env


@needs_sclang
@pytest.mark.parametrize("who", ["root", "user"])
def test_supercollider_launcher_as_root_and_as_a_user(server: Served, who: str) -> None:
    """run.sh starts the example with no screen: it asks the server for its status and axes
    and posts the answers. sclang aborts as root unless Qt's web engine runs without its
    sandbox, which the launcher sees to, so a person need not know."""
    if who == "root" and os.getuid() != 0:
        pytest.skip("the tests do not run as root here")
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="melodyvae-sc-"))  # a user other than root can enter
    prefix, env = as_user(home) if who == "user" else ([], {
        k: v for k, v in os.environ.items()
        if k not in ("QTWEBENGINE_DISABLE_SANDBOX", "QT_QPA_PLATFORM", "DISPLAY",
                     "WAYLAND_DISPLAY")})
    proc = subprocess.Popen([*prefix, "sh", str(SC_LAUNCHER), "--port", str(server.port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=home)
    out = Lines(proc.stdout)
    try:
        out.wait_for(r"^melodyvae: latent axes \[ pc1, pc2, .*note_density \]$", 0,
                     timeout=60)
        assert any(re.match(r"^melodyvae: model \S+, 4 bars, latent 8, device cpu$", line)
                   for line in out.since(0)), out.since(0)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)
    assert proc.returncode != 134, "\n".join(out.since(0))  # not aborted
    assert "ERROR" not in "\n".join(out.since(0))


# ------------------------------------------------------------------ Max (read, then replayed)


def max_boxes() -> dict[str, dict[str, object]]:
    doc = json.loads(MAX_PATCH.read_text())
    return {b["box"]["id"]: b["box"] for b in doc["patcher"]["boxes"]}


Atom = tuple[str, "int | float | str"]


def max_atom(token: str) -> Atom:
    """A message box word as Max's [udpsend] sends it: int, float or string."""
    if re.fullmatch(r"-?\d+", token):
        return "i", int(token)
    if re.fullmatch(r"-?\d*\.\d*", token):
        return "f", float(token)
    return "s", token


def osc_message(address: str, atoms: list[Atom]) -> bytes:
    from pythonosc.osc_message_builder import OscMessageBuilder

    builder = OscMessageBuilder(address)
    for tag, value in atoms:
        builder.add_arg(value, tag)
    return bytes(builder.build().dgram)


def test_max_patch_sends_what_the_server_takes(server: Served) -> None:
    """Max cannot run here, so the patch is read and its messages are replayed the way its
    objects send them: every message box, and each [prepend /mvae/...] with the values its
    slider or number box gives, from a socket that (like [udpsend]) never listens; replies
    go to the port of its [udpreceive], as the patch's /mvae/reply asks."""
    from pythonosc.osc_message import OscMessage

    boxes = max_boxes()
    texts = [str(b.get("text", "")) for b in boxes.values()]
    assert "udpsend 127.0.0.1 9000" in texts
    (receive_port,) = [int(t.split()[1]) for t in texts if t.startswith("udpreceive ")]
    assert f"/mvae/reply {receive_port}" in texts
    (route,) = [t for t in texts if t.startswith("route /mvae/")]
    assert route.split()[1:] == ["/mvae/note", "/mvae/noteon", "/mvae/noteoff",
                                 "/mvae/melody/begin"]

    slider_values: dict[str, list[Atom]] = {
        "/mvae/xy": [("f", 1.5), ("f", -0.5)],  # [pak 0. 0.]
        "/mvae/z/i": [("i", 2), ("f", -1.2)],  # [prepend 2] after a scaled slider
        "/mvae/temperature": [("f", 0.5)],  # flonum
        "/mvae/tempo": [("f", 140.0)],  # flonum
    }
    prepends = [t.split()[1] for t in texts if t.startswith("prepend /mvae/")]
    assert set(prepends) == set(slider_values), prepends
    messages = [osc_message(a, atoms) for a, atoms in slider_values.items()]
    for text in texts:
        if text.startswith("/mvae/") and not text.startswith("/mvae/reply"):
            address, *words = text.split()
            messages.append(osc_message(address, [max_atom(w) for w in words]))

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as listen, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as send:
        listen.bind(("127.0.0.1", 0))  # stands in for [udpreceive]
        listen.settimeout(0.5)
        send.sendto(osc_message("/mvae/reply", [("i", listen.getsockname()[1])]),
                    ("127.0.0.1", server.port))
        for data in messages:
            send.sendto(data, ("127.0.0.1", server.port))
            time.sleep(0.05)
        heard: list[str] = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                packet = listen.recv(65536)
            except TimeoutError:
                if "/mvae/pong" in heard and "/mvae/status" in heard:
                    break
                continue
            if packet.startswith(b"/"):
                message = OscMessage(packet)
                heard.append(message.address)
                assert message.address != "/mvae/error", message.params
    assert "/mvae/melody/begin" in heard and "/mvae/pong" in heard, heard
