"""The ``melodyvae serve`` subcommand."""

from __future__ import annotations

import argparse
from pathlib import Path

from melodyvae.argtypes import positive_int, real_number, whole_number
from melodyvae.presets import DEFAULT_MODEL
from melodyvae.server import midi_cli

_PORT = whole_number(0, 65535, what="a port number")
_LOOKAHEAD = real_number(0.0, 2000.0, what="a number of milliseconds", unit="ms")
_LEASE = real_number(1.0, 86400.0, what="a number of seconds", unit="s")


def _network(text: str) -> object:
    from melodyvae.server.guard import parse_network

    try:
        return parse_network(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _folder(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: no such folder")
    return path


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Declare ``serve`` on the main parser."""
    p = sub.add_parser(
        "serve", help="serve a model over OSC (latent coordinates in, melodies out)",
        description="Listen for OSC over UDP and answer with melodies. The address space "
                    "(prefix /mvae) is documented in docs/osc.md. Stops cleanly on "
                    "Ctrl-C or SIGTERM.")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME|PATH",
                   help=f"shipped model name or checkpoint file ({DEFAULT_MODEL})")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (127.0.0.1; 0.0.0.0 for the network)")
    p.add_argument("--port", type=_PORT, default=9000, help="UDP port (9000; 0 = any free)")
    p.add_argument("--reply-host", default=None, metavar="H",
                   help="send replies to this host instead of the sender's")
    p.add_argument("--reply-port", type=_PORT, default=None, metavar="P",
                   help="send replies to this port instead of the sender's")
    p.add_argument("--device", default="auto",
                   help="auto takes CUDA, then MPS, then the CPU; or cpu, cuda, cuda:N, mps "
                        "(auto)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="CPU threads for the model (torch's default)")
    p.add_argument("--allow-dir", type=_folder, default=None, metavar="DIR",
                   help="let /mvae/encode/file read MIDI and WAV files inside DIR")
    p.add_argument("--lookahead", type=_LOOKAHEAD, default=100.0, metavar="MS",
                   help="playback bundles are sent this long before their time (100)")
    p.add_argument("--max-clients", type=positive_int, default=64, metavar="N",
                   help="clients remembered; the least recently heard is forgotten (64)")
    p.add_argument("--allow-from", type=_network, action="append", default=[],
                   metavar="NET", help="read datagrams, and serve the --web page, from this "
                   "network too (e.g. 192.168.1.0/24; repeat for more); loopback always, "
                   "nothing else by default")
    p.add_argument("--lease", type=_LEASE, default=600.0, metavar="S",
                   help="a playing stream ends after this long without a message from its "
                   "client (600)")
    p.add_argument("--web", type=_PORT, nargs="?", const=8000, default=None, metavar="PORT",
                   help="also serve a control page for the browser on this TCP port (8000; "
                   "0 = any free), on --host; its address, with an access token, is printed "
                   "at start")
    midi_cli.add_arguments(p)
    p.set_defaults(func=cmd_serve)
    midi_cli.add_parsers(sub)


def cmd_serve(args: argparse.Namespace) -> int:
    from melodyvae.server.app import ServeOptions, serve
    from melodyvae.server.core import ServerConfig
    from melodyvae.server.web import WebOptions

    config = ServerConfig(
        reply_host=args.reply_host, reply_port=args.reply_port or None,
        allow_dir=args.allow_dir, max_clients=args.max_clients,
        lookahead=args.lookahead / 1000.0, allow_from=tuple(args.allow_from),
        lease=args.lease,
    )
    web = None if args.web is None else WebOptions(args.host, args.web)
    return serve(ServeOptions(args.model, args.host, args.port, args.device, args.threads,
                              config, web, midi_cli.settings(args)))
