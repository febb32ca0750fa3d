"""OSC round-trip latency of ``melodyvae serve``, next to a plain python-osc echo server.

For each model: p50 / p99 of the time from sending ``/mvae/z`` (a full random vector) to
receiving ``/mvae/melody/end``, one request at a time, and of the decode alone measured in
this process (the model's share of that time); then a flood of ``/mvae/z`` at a
fixed rate, reporting how long the last update took to answer and the largest number of
decodes ever waiting (latest wins keeps it at one per client). The echo server answers
``/mvae/z`` with ``/mvae/melody/end`` at once, so its figures are the floor set by UDP,
python-osc and Python.

Every server runs in its own process, started the way users start it, free to run on any
core. This client pins itself to one core (``--client-cpu``, default 0; -1: not pinned), so
that on a machine of few cores its own work does not land on the server's core by chance,
as a music application on a core of its own would not; the echo server is measured the
same way. A model that is not shipped yet is replaced by an untrained one of the same
preset (latency does not depend on the weights) and the JSON says so.

    python bench/osc_latency.py                      # hier-4bar and hier-16bar, --threads 1
    python bench/osc_latency.py --model my.safetensors --requests 500

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import resolve, start
from pythonosc.osc_message_builder import OscMessageBuilder

GOALS_P99_MS = {"hier-4bar": 10.0, "hier-16bar": 30.0, "phrase-16bar": 30.0}  # on one CPU core
END = b"/mvae/melody/end\x00"


def osc(address: str, *args: Any) -> bytes:
    builder = OscMessageBuilder(address)
    for value in args:
        builder.add_arg(value)
    return builder.build().dgram


# ------------------------------------------------------------------ servers


def echo_server() -> None:
    """A stock python-osc server answering /mvae/z with /mvae/melody/end (subprocess)."""
    from pythonosc.dispatcher import Dispatcher
    from pythonosc.osc_server import BlockingOSCUDPServer

    reply = osc("/mvae/melody/end", 1)
    dispatcher = Dispatcher()
    server: BlockingOSCUDPServer

    def on_z(client: tuple[str, int], address: str, *args: Any) -> None:
        server.socket.sendto(reply, client)

    dispatcher.map("/mvae/z", on_z, needs_reply_address=True)
    server = BlockingOSCUDPServer(("127.0.0.1", 0), dispatcher)
    print(f"echo: listening on 127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def stop(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ measurements


def round_trips(port: int, n: int, z_dim: int, warmup: int = 20, seed: int = 0
                ) -> list[float]:
    """Seconds from sending /mvae/z to receiving /mvae/melody/end, one at a time."""
    rng = np.random.default_rng(seed)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(5.0)
    times = []
    try:
        for i in range(warmup + n):
            data = osc("/mvae/z", *[float(v) for v in rng.standard_normal(z_dim)])
            started = time.perf_counter()
            sock.sendto(data, ("127.0.0.1", port))
            while not sock.recv(65536).startswith(END):
                pass
            if i >= warmup:
                times.append(time.perf_counter() - started)
    finally:
        sock.close()
    return times


def flood(port: int, z_dim: int, rate: float, seconds: float) -> dict[str, Any]:
    """Send /mvae/z at ``rate`` per second; how fast the last one is answered."""
    rng = np.random.default_rng(1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.settimeout(0.5)
    ends: list[float] = []
    done = threading.Event()

    def receive() -> None:
        quiet_since: float | None = None
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if done.is_set():
                    if quiet_since is not None:
                        return
                    quiet_since = time.perf_counter()
                continue
            if data.startswith(END):
                ends.append(time.perf_counter())

    receiver = threading.Thread(target=receive)
    receiver.start()
    vectors = [osc("/mvae/z", *[float(v) for v in rng.standard_normal(z_dim)])
               for _ in range(64)]
    n = int(rate * seconds)
    started = time.perf_counter()
    last_sent = started
    for i in range(n):
        due = started + i / rate
        wait = due - time.perf_counter()
        if wait > 0:  # sleep, not spin: the client must not steal the server's core
            time.sleep(wait)
        sock.sendto(vectors[i % len(vectors)], ("127.0.0.1", port))
        last_sent = time.perf_counter()
    send_seconds = last_sent - started
    done.set()
    receiver.join()
    after = [t for t in ends if t > last_sent]
    sock.settimeout(5.0)
    sock.sendto(osc("/mvae/stats"), ("127.0.0.1", port))
    stats: list[Any] = []
    while not stats:
        data = sock.recv(65536)
        if data.startswith(b"/mvae/stats\x00"):
            from pythonosc.osc_message import OscMessage

            stats = OscMessage(data).params
    sock.close()
    names = ["received", "requests", "decoded", "superseded", "batches", "max_batch",
             "max_waiting", "clients", "encoded", "errors", "cancelled", "own", "blocked",
             "ignored", "challenged", "throttled", "refused", "expired", "streams"]
    server = dict(zip(names, stats, strict=True))
    return {
        "sent": n,
        "achieved_rate": round(n / send_seconds, 1),
        "melodies_received": len(ends),
        "last_update_ms": round((max(after) - last_sent) * 1000, 2) if after else None,
        "largest_pending_queue": server["max_waiting"],
        "server": server,
    }


def model_only(path: str, n: int, threads: int, device: str) -> list[float]:
    """Seconds per decode_tokens + melody_from_tokens in this process: the model's share
    of a round trip (the rest is the server, the network and the client)."""
    import torch

    from melodyvae.inference import MelodyVAE

    torch.set_num_threads(threads)
    vae = MelodyVAE.load(path, device=device)
    zs = vae.sample_z(n + 20, seed=2)
    times = []
    for i, z in enumerate(zs):
        started = time.perf_counter()
        tokens = vae.decode_tokens(z[None]).cpu().numpy()
        vae.melody_from_tokens(tokens[0])
        if i >= 20:
            times.append(time.perf_counter() - started)
    return times


def summary(times: list[float]) -> dict[str, float]:
    ms = np.array(times) * 1000
    return {"n": len(times), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(statistics.fmean(ms)), 2),
            "max_ms": round(float(ms.max()), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="model name or checkpoint (repeatable; hier-4bar, hier-16bar)")
    parser.add_argument("--requests", type=int, default=1000,
                        help="round trips (1000: a p99 of ten samples, not two)")
    parser.add_argument("--flood-rate", type=float, default=1000.0, help="messages/s (1000)")
    parser.add_argument("--flood-seconds", type=float, default=10.0, help="seconds (10)")
    parser.add_argument("--threads", type=int, default=1, help="server --threads (1)")
    parser.add_argument("--device", default="cpu", help="server --device (cpu)")
    parser.add_argument("--client-cpu", type=int, default=0,
                        help="core this client runs on (0; -1: any)")
    parser.add_argument("--echo-server", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:  # a server: free on every core, like the others
        echo_server()
        return
    client_cpu = None
    if args.client_cpu >= 0 and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {args.client_cpu})
        client_cpu = args.client_cpu
    models = args.model or ["hier-4bar", "hier-16bar"]
    result: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2)},
        "server": {"threads": args.threads, "device": args.device},
        "client_cpu": client_cpu,
        "requests": args.requests,
        "flood": {"rate": args.flood_rate, "seconds": args.flood_seconds},
    }
    echo, port = start([sys.executable, __file__, "--echo-server"])
    try:
        result["echo_python_osc"] = summary(round_trips(port, args.requests, 8))
    finally:
        stop(echo)
    print(f"python-osc echo: {result['echo_python_osc']}", flush=True)
    result["models"] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            path, untrained = resolve(model, Path(tmp))
            from melodyvae.checkpoint import read_info
            from melodyvae.inference import MelodyVAE

            info = read_info(path)
            shape = MelodyVAE.load(path, device="cpu")
            z_dim, bars = shape.z_dim, shape.bars
            proc, port = start([sys.executable, "-m", "melodyvae.cli", "serve", "--model",
                                path, "--port", "0", "--threads", str(args.threads),
                                "--device", args.device])
            try:
                entry: dict[str, Any] = {"untrained_stand_in": untrained,
                                         "preset": info["preset"], "z_dim": z_dim,
                                         "bars": bars}
                entry["round_trip"] = summary(round_trips(port, args.requests, z_dim))
                print(f"{model}: {entry['round_trip']}", flush=True)
                entry["model_only_in_process"] = summary(
                    model_only(path, args.requests, args.threads, args.device))
                print(f"{model} model only: {entry['model_only_in_process']}", flush=True)
                entry["flood"] = flood(port, z_dim, args.flood_rate, args.flood_seconds)
                print(f"{model} flood: {entry['flood']}", flush=True)
                goal = GOALS_P99_MS.get(info["preset"])
                if goal is not None:
                    p99 = entry["round_trip"]["p99_ms"]
                    last = entry["flood"]["last_update_ms"]
                    entry["goal_p99_ms"] = goal
                    entry["goal_met"] = {
                        "p99": p99 <= goal,
                        "flood_last_update_within_p99": last is not None and last <= p99,
                        "queue_at_most_one": entry["flood"]["largest_pending_queue"] <= 1,
                    }
                result["models"][model] = entry
            finally:
                stop(proc)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
