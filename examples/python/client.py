"""A small Python client for ``melodyvae serve`` (needs only python-osc).

    python examples/python/client.py ping
    python examples/python/client.py status
    python examples/python/client.py z 0.5 -1 0.2          # a melody from a latent vector
    python examples/python/client.py sample 0.8 42         # temperature, seed
    python examples/python/client.py xy 1.5 -0.5           # the first two PCA axes, in sigma
    python examples/python/client.py encode 60 0 1 64 1 1 67 2 2   # pitch start dur ...
    python examples/python/client.py morph 8               # 8 steps around the XY plane
    python examples/python/client.py play 4                # loop the melody for 4 s

Replies come back to the socket the request left from (the server's default), so this
works without --reply-port. A melody is printed as one line per note.
"""

from __future__ import annotations

import argparse
import math
import socket
import sys
import time
from typing import Any

from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder


class Client:
    """Send OSC to the server and read what it sends back, on one UDP socket."""

    def __init__(self, host: str = "127.0.0.1", port: int = 9000, timeout: float = 5.0
                 ) -> None:
        self.server = (host, port)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(timeout)

    def send(self, address: str, *args: Any) -> None:
        builder = OscMessageBuilder(address)
        for value in args:
            builder.add_arg(value)
        self.sock.sendto(builder.build().dgram, self.server)

    def receive(self) -> list[tuple[str, list[Any], float | None]]:
        """One datagram as (address, args, timetag) messages; bundles unpacked."""
        data = self.sock.recv(65536)
        if data.startswith(b"#bundle"):
            bundle = OscBundle(data)
            at = None if bundle.timestamp == 0 else bundle.timestamp
            return [(m.address, m.params, at) for m in bundle]
        message = OscMessage(data)
        return [(message.address, message.params, None)]

    def wait_for(self, address: str) -> list[Any]:
        """Read until ``address`` arrives; /mvae/error raises."""
        while True:
            for addr, args, _ in self.receive():
                if addr == "/mvae/error":
                    raise RuntimeError(f"server: {args[0]}: {args[1]}")
                if addr == address:
                    return args

    def melody(self) -> dict[str, Any]:
        """Read one melody: begin, notes, end."""
        melody: dict[str, Any] = {"notes": []}
        while True:
            for address, args, _ in self.receive():
                if address == "/mvae/error":
                    raise RuntimeError(f"server: {args[0]}: {args[1]}")
                if address == "/mvae/melody/begin":
                    melody.update(id=args[0], bars=args[1], steps_per_bar=args[2],
                                  qpm=args[3], notes=[])
                elif address == "/mvae/note":
                    melody["notes"].append(tuple(args[1:]))  # pitch, velocity, start, dur
                elif address == "/mvae/melody/end":
                    return melody


NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]


def show(melody: dict[str, Any]) -> None:
    print(f"melody {melody['id']}: {melody['bars']} bars at {melody['qpm']:g} qpm, "
          f"{len(melody['notes'])} notes")
    for pitch, velocity, start, duration in melody["notes"]:
        name = f"{NAMES[pitch % 12]}{pitch // 12 - 1}"
        print(f"  beat {start:6.2f}  {name:>4} ({pitch:3d})  {duration:5.2f} beats  "
              f"vel {velocity}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Talk to melodyvae serve over OSC.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait")
    parser.add_argument("command", choices=["ping", "status", "axes", "z", "sample", "xy",
                                            "vary", "encode", "morph", "play"])
    parser.add_argument("values", nargs="*", type=float)
    args = parser.parse_args(argv)
    client = Client(args.host, args.port, args.timeout)
    v = args.values
    try:
        if args.command == "ping":
            started = time.perf_counter()
            client.send("/mvae/ping")
            client.wait_for("/mvae/pong")
            print(f"pong in {(time.perf_counter() - started) * 1000:.2f} ms")
        elif args.command == "status":
            client.send("/mvae/status")
            name, bars, z_dim, device, steps_per_bar, n_axes = client.wait_for("/mvae/status")
            print(f"model {name}: {bars} bars of {steps_per_bar} steps, latent {z_dim}, "
                  f"device {device}, {n_axes} latent axes")
        elif args.command == "axes":
            client.send("/mvae/axes")
            print(" ".join(client.wait_for("/mvae/axes")))
        elif args.command == "z":
            client.send("/mvae/z", *v)
            show(client.melody())
        elif args.command == "sample":
            client.send("/mvae/sample", *(v[:1] + [int(x) for x in v[1:2]]))
            show(client.melody())
        elif args.command == "xy":
            client.send("/mvae/xy", *v[:2])
            show(client.melody())
        elif args.command == "vary":
            client.send("/mvae/vary", v[0] if v else 0.3)
            show(client.melody())
        elif args.command == "encode":
            if len(v) % 3:
                parser.error("encode takes pitch start_beat duration_beats triples")
            notes: list[Any] = []
            for i in range(0, len(v), 3):
                notes += [int(v[i]), v[i + 1], v[i + 2]]
            client.send("/mvae/encode", *notes)
            z = client.wait_for("/mvae/z")
            print("z = " + " ".join(f"{x:+.3f}" for x in z))
        elif args.command == "morph":
            steps = int(v[0]) if v else 8
            for k in range(steps):
                angle = 2 * math.pi * k / steps
                x, y = 1.5 * math.cos(angle), 1.5 * math.sin(angle)
                started = time.perf_counter()
                client.send("/mvae/xy", x, y)
                melody = client.melody()
                ms = (time.perf_counter() - started) * 1000
                print(f"xy ({x:+.2f}, {y:+.2f}): {len(melody['notes'])} notes, "
                      f"pitches {[n[0] for n in melody['notes'][:8]]}... in {ms:.1f} ms")
        elif args.command == "play":
            seconds = v[0] if v else 4.0
            client.send("/mvae/play")
            deadline = time.time() + seconds
            while time.time() < deadline:
                for address, values, at in client.receive():
                    if address in ("/mvae/noteon", "/mvae/noteoff"):
                        ahead = (at - time.time()) * 1000 if at else 0.0
                        print(f"{address:<14} {values}  due in {ahead:5.1f} ms")
            client.send("/mvae/stop")
    except TimeoutError:
        print(f"no answer from {args.host}:{args.port} within {args.timeout:g} s "
              f"(is melodyvae serve running?)", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
