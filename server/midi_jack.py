"""A headless JACK server and a client that plays the host: how the tests and the MIDI
benchmark drive ``serve --midi`` from outside without sound hardware.

:class:`JackServer` runs ``jackd -n NAME -d dummy`` (Debian's ``jackd2``) and points this
process's JACK clients at it (``JACK_DEFAULT_SERVER``). :class:`Host` is a second client,
as a DAW would be: it sends clock, transport, knobs and keys into the server's input and
records what the server's output plays, each message with the time JACK delivered it.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import rtmidi

from melodyvae.errors import MelodyVAEError

_NAMES = itertools.count()


class JackError(MelodyVAEError):
    """jackd is missing or did not start."""


class JackServer:
    """``jackd -n NAME -d dummy -r RATE -p PERIOD``; a context manager."""

    def __init__(self, period: int = 32, rate: int = 48000) -> None:
        self.name = f"mvae-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.period, self.rate = period, rate
        self.proc: subprocess.Popen[bytes] | None = None
        # jackd's messages go to a file: a pipe nobody reads could fill and block it
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed in stop)
        self._previous: str | None = None

    def start(self, timeout: float = 20.0) -> JackServer:
        jackd = shutil.which("jackd")
        if jackd is None:
            raise JackError("jackd not found: install Debian's jackd2 (install.sh does)")
        self.proc = subprocess.Popen(
            [jackd, "-n", self.name, "-d", "dummy", "-r", str(self.rate), "-p",
             str(self.period)], stdout=subprocess.DEVNULL, stderr=self.log)
        self._previous = os.environ.get("JACK_DEFAULT_SERVER")
        os.environ["JACK_DEFAULT_SERVER"] = self.name
        waiter = shutil.which("jack_wait")
        if waiter is None:
            self.stop()
            raise JackError("jack_wait not found: install Debian's jackd2 (install.sh does)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                err = self.log.read().decode(errors="replace")
                raise JackError(f"jackd exited with {self.proc.returncode}: {err[-500:]}")
            check = subprocess.run([waiter, "-s", self.name, "-c"], capture_output=True,
                                   text=True, env=os.environ | {"JACK_NO_START_SERVER": "1"})
            if "running" in check.stdout and "not running" not in check.stdout:
                return self
            time.sleep(0.1)
        self.stop()
        raise JackError(f"jackd -n {self.name} did not start in {timeout:g} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        if self._previous is None:
            os.environ.pop("JACK_DEFAULT_SERVER", None)
        else:
            os.environ["JACK_DEFAULT_SERVER"] = self._previous

    def __enter__(self) -> JackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Received:
    at: float  # Unix seconds JACK delivered it (see Host.received)
    data: list[int]


def find(names: Sequence[str], wanted: str) -> int:
    if wanted not in names:
        raise JackError(f"no JACK port {wanted!r}; there are {list(names)}")
    return list(names).index(wanted)


class Host:
    """A DAW on the JACK server: sends into ``to`` (a server input port, e.g.
    ``melodyvae in:melodyvae in``) and records ``listen`` (e.g. ``melodyvae:melodyvae``);
    either may be None. ``rx_name`` / ``tx_name`` name its clients, and ``virtual_rx`` /
    ``virtual_tx`` give them ports of their own (``NAME:in``, ``NAME:out``) for the server to
    open by name: a test can then make a port vanish and come back."""

    def __init__(self, to: str | None, listen: str | None, rx_name: str | None = None,
                 virtual_rx: bool = False, tx_name: str | None = None,
                 virtual_tx: bool = False) -> None:
        tag = next(_NAMES)
        self.tx = rtmidi.MidiOut(rtmidi.API_UNIX_JACK,
                                 name=tx_name or f"host-tx-{os.getpid()}-{tag}")
        if virtual_tx:
            self.tx.open_virtual_port("out")
        elif to is not None:
            self.tx.open_port(find(self.tx.get_ports(), to))
        self.rx = rtmidi.MidiIn(rtmidi.API_UNIX_JACK, queue_size_limit=16384,
                                name=rx_name or f"host-rx-{os.getpid()}-{tag}")
        self.rx.ignore_types(sysex=False, timing=False, active_sense=True)
        if virtual_rx:
            self.rx.open_virtual_port("in")
        elif listen is not None:
            self.rx.open_port(find(self.rx.get_ports(), listen))
        self._raw: list[tuple[float, float, list[int]]] = []  # (stamp total, arrival, data)
        self._total: float | None = None
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # rtmidi's JACK output takes one thread at a time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="host-rx", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            item = self.rx.get_message()
            if item is None:
                time.sleep(0.0005)
                continue
            data, delta = item
            with self._lock:
                self._total = 0.0 if self._total is None else self._total + delta
                self._raw.append((self._total, time.time(), list(data)))

    def received(self) -> list[Received]:
        """Everything recorded, timed by JACK's stamps put on the Unix clock (the offset
        is the smallest arrival minus stamp: the reader's delays do not count)."""
        with self._lock:
            raw = list(self._raw)
        if not raw:
            return []
        offset = min(arrival - total for total, arrival, _ in raw)
        return [Received(total + offset, data) for total, _, data in raw]

    def send(self, *messages: Sequence[int]) -> None:
        """Send messages in order (safe from any thread)."""
        with self._send_lock:
            for message in messages:
                self.tx.send_message(list(message))

    def send_ticks(self, times: Sequence[float]) -> list[float]:
        """A clock tick at each Unix time (sleeping, then spinning the last half
        millisecond); the times they were sent."""
        sent = []
        for at in times:
            while True:
                left = at - time.time()
                if left <= 0:
                    break
                time.sleep(left - 0.0005 if left > 0.001 else 0)
            with self._send_lock:
                self.tx.send_message([0xF8])
            sent.append(time.time())
        return sent

    def close_rx(self) -> None:
        """Stop recording and remove the recording client (its port vanishes)."""
        self._stop.set()
        self._thread.join(2)
        self.rx.close_port()
        self.rx.delete()

    def close(self) -> None:
        if not self._stop.is_set():
            self.close_rx()
        self.tx.close_port()
        self.tx.delete()


def clock_times(start: float, segments: Sequence[tuple[float, int]]) -> list[float]:
    """Tick times from ``start``: ``segments`` of (qpm, ticks), back to back."""
    times, at = [], start
    for qpm, count in segments:
        period = 60.0 / qpm / 24
        for _ in range(count):
            times.append(at)
            at += period
    return times
