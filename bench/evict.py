"""A steady client's latency while new source ports flood the server.

One client sends ``/mvae/z`` (a full random vector) ``--rate`` times a second and times each
round trip to ``/mvae/melody/end``; first alone ("quiet"), then while another process-side
thread opens ``--ports`` new UDP source ports a second, each sending one ``/mvae/z`` and
closing ("flood"). Every new port is a new client; past ``--max-clients`` the least recently
heard is forgotten, and its running decode must leave the batch, or the flood piles up
decodes nobody will hear. The goal: the steady client's p99 under the flood within 2x its
quiet p99.

    python bench/evict.py                          # hier-4bar, --threads 1, 30 s each
    python bench/evict.py --seconds 10 --ports 400

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import resolve, start

END = b"/mvae/melody/end\x00"


def z_datagram(z: np.ndarray) -> bytes:
    address = b"/mvae/z\x00"
    tags = ("," + "f" * len(z)).encode() + b"\x00"
    tags += b"\x00" * (-len(tags) % 4)
    return address + tags + struct.pack(f">{len(z)}f", *z)


def steady(sock: socket.socket, port: int, z_dim: int, rate: float, seconds: float,
           seed: int) -> list[float]:
    """Round trips (ms) of one client sending /mvae/z ``rate`` times a second."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    started = time.perf_counter()
    i = 0
    while time.perf_counter() - started < seconds:
        due = started + i / rate
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        sent = time.perf_counter()
        sock.sendto(z_datagram(rng.standard_normal(z_dim).astype(np.float32)),
                    ("127.0.0.1", port))
        try:
            while not sock.recv(65536).startswith(END):
                pass
            out.append((time.perf_counter() - sent) * 1000)
        except TimeoutError:
            out.append(2000.0)  # lost: counted as the timeout
        i += 1
    return out


def flood(port: int, z_dim: int, per_second: float, stop: Any, counter: Any) -> None:
    """Open ``per_second`` new source ports a second, one /mvae/z from each (run in a
    process of its own, so it does not slow the measuring client)."""
    rng = np.random.default_rng(99)
    vectors = [z_datagram(rng.standard_normal(z_dim).astype(np.float32)) for _ in range(64)]
    started = time.perf_counter()
    sent = 0
    while not stop.is_set():
        due = started + sent / per_second
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(vectors[sent % len(vectors)], ("127.0.0.1", port))
        sent += 1
        counter.value = sent


def percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hier-4bar")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=30.0, help="per phase (30)")
    parser.add_argument("--rate", type=float, default=10.0, help="steady requests/s (10)")
    parser.add_argument("--ports", type=float, default=400.0, help="new ports/s (400)")
    parser.add_argument("--max-clients", type=int, default=64)
    args = parser.parse_args(argv)

    from melodyvae.inference import model_info

    with tempfile.TemporaryDirectory() as tmp:
        model, untrained = resolve(args.model, Path(tmp))
        z_dim = int(model_info(model)["model"]["z_dim"])
        proc, port = start([sys.executable, "-m", "melodyvae.cli", "serve", "--model", model,
                            "--port", "0", "--threads", str(args.threads),
                            "--max-clients", str(args.max_clients)])
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # one client throughout,
        sock.settimeout(2.0)  # playing before the flood starts
        try:
            steady(sock, port, z_dim, args.rate, 2.0, seed=1)  # warm up
            quiet = steady(sock, port, z_dim, args.rate, args.seconds, seed=2)
            stop, counter = multiprocessing.Event(), multiprocessing.Value("l", 0)
            attacker = multiprocessing.Process(target=flood, args=(port, z_dim, args.ports,
                                                                   stop, counter))
            flood_started = time.perf_counter()
            attacker.start()
            time.sleep(1.0)  # the table fills with newcomers
            loud = steady(sock, port, z_dim, args.rate, args.seconds, seed=2)
            stop.set()
            attacker.join()
            achieved = counter.value / (time.perf_counter() - flood_started)
        finally:
            sock.close()
            proc.terminate()
            proc.wait(10)
    result: dict[str, Any] = {
        "model": args.model, "untrained": untrained, "threads": args.threads,
        "rate": args.rate, "seconds": args.seconds, "max_clients": args.max_clients,
        "new_ports_per_s": round(achieved, 1),
        "quiet": {"n": len(quiet), "p50_ms": percentile(quiet, 50),
                  "p99_ms": percentile(quiet, 99)},
        "flood": {"n": len(loud), "p50_ms": percentile(loud, 50),
                  "p99_ms": percentile(loud, 99), "lost": sum(v >= 2000 for v in loud)},
    }
    result["p99_ratio"] = round(result["flood"]["p99_ms"] / result["quiet"]["p99_ms"], 2)
    print(f"quiet p50 {result['quiet']['p50_ms']} ms, p99 {result['quiet']['p99_ms']} ms; "
          f"with {achieved:.0f} new ports/s: p50 {result['flood']['p50_ms']} ms, "
          f"p99 {result['flood']['p99_ms']} ms ({result['p99_ratio']}x)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
