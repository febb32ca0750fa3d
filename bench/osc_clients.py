"""Several OSC clients at once: the server's rolling decode batch against whole batches.

Each of ``--clients`` client processes (pinned to one core, as in osc_latency.py) sends
``/mvae/z`` and waits for ``/mvae/melody/end`` before the next, so requests arrive while
others are half-decoded. The same server answers them in turns in each of its two CPU
modes, in the same run:

* ``rolling`` (what ``melodyvae serve`` does on the CPU): a request joins the running decode
  at its next step;
* ``whole_batch`` (what it does on a GPU): a request waits for the running batch, then the
  waiting requests decode as one batch.

It prints p50 / p99 of every round trip per mode and ``whole_over_rolling`` (p50 and p99
ratios, above 1 where the rolling batch answers sooner); the last line is one JSON object.
The server runs in this process (its mode is set on its engine), free on every core.

    python bench/osc_clients.py                      # hier-4bar and hier-16bar, 3 clients
    python bench/osc_clients.py --clients 4 --requests 300 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from common import resolve
from osc_latency import round_trips, summary

MODES = ("rolling", "whole_batch")


def clients(port: int, n: int, requests: int, z_dim: int, cpu: int) -> list[float]:
    """Round trips of ``n`` client processes running at once, in seconds."""
    procs = [subprocess.Popen([sys.executable, __file__, "--client", str(port), str(requests),
                               str(z_dim), str(cpu), str(i)], stdout=subprocess.PIPE,
                              text=True) for i in range(n)]
    times: list[float] = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a client failed: {out}")
        times.extend(json.loads(out.strip().splitlines()[-1]))
    return times


def client(port: int, requests: int, z_dim: int, cpu: int, seed: int) -> None:
    if cpu >= 0 and hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {cpu})
    print(json.dumps(round_trips(port, requests, z_dim, seed=seed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=None,
                        help="model name or checkpoint (repeatable; hier-4bar, hier-16bar)")
    parser.add_argument("--clients", type=int, default=3, help="clients at once (3)")
    parser.add_argument("--requests", type=int, default=200, help="per client per round (200)")
    parser.add_argument("--rounds", type=int, default=2, help="turns of each mode (2)")
    parser.add_argument("--threads", type=int, default=1, help="server threads (1)")
    parser.add_argument("--client-cpu", type=int, default=0,
                        help="core the clients run on (0; -1: any)")
    parser.add_argument("--client", nargs=5, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(*args.client)
        return
    from melodyvae.checkpoint import read_info
    from melodyvae.inference import MelodyVAE
    from melodyvae.server.app import OscServer

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {"clients": args.clients, "requests": args.requests,
                              "rounds": args.rounds, "server_threads": args.threads,
                              "client_cpu": args.client_cpu, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.model or ["hier-4bar", "hier-16bar"]:
            path, untrained = resolve(model, Path(tmp))
            vae = MelodyVAE.load(path, device="cpu")
            times: dict[str, list[float]] = {mode: [] for mode in MODES}
            with OscServer(vae, port=0) as server:
                engine = server.core.engine
                rolling = engine.rolling
                assert rolling is not None, "the rolling batch needs a NumPy CPU decoder"
                for _ in range(args.rounds):
                    for mode in MODES:
                        engine.rolling = rolling if mode == "rolling" else None
                        times[mode] += clients(server.port, args.clients, args.requests,
                                               vae.z_dim, args.client_cpu)
            entry: dict[str, Any] = {"preset": read_info(path)["preset"],
                                     "untrained_stand_in": untrained}
            entry.update({mode: summary(t) for mode, t in times.items()})
            entry["whole_over_rolling"] = {
                q: round(entry["whole_batch"][f"{q}_ms"] / entry["rolling"][f"{q}_ms"], 2)
                for q in ("p50", "p99")}
            result["models"][model] = entry
            print(f"{model}: rolling {entry['rolling']}  whole batch {entry['whole_batch']}  "
                  f"whole / rolling {entry['whole_over_rolling']}", flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
