"""MIDI on the command line: ``serve``'s --midi options and ``melodyvae midi ports``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from melodyvae.argtypes import real_number, whole_number
from melodyvae.errors import MelodyVAEError
from melodyvae.server.midi_map import CCMap, CCMapError, read_map

if TYPE_CHECKING:
    from melodyvae.server.midi_bridge import MidiSettings

_CHANNEL = whole_number(1, 16, what="a MIDI channel")
_QPM = real_number(20.0, 400.0, what="a tempo")
API_NAMES = ("auto", "alsa", "jack", "core", "winmm")  # python-rtmidi's names for them


class MidiSetupError(MelodyVAEError):
    """MIDI cannot be set up as asked: mido or python-rtmidi does not import, or an option
    needs a port that was not asked for."""


def require_midi() -> None:
    """Import the MIDI libraries now, so that a missing one is one line, not a traceback."""
    try:
        import mido  # noqa: F401
        import rtmidi  # noqa: F401
    except ImportError as e:
        raise MidiSetupError(
            f"MIDI needs mido and python-rtmidi, and on Linux ALSA's library (Debian: "
            f"libasound2): {e}") from e


def _cc_map(text: str) -> CCMap:
    try:
        return read_map(Path(text).expanduser())
    except CCMapError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The MIDI options of ``melodyvae serve``."""
    g = p.add_argument_group("MIDI (docs/midi.md)")
    g.add_argument("--midi", nargs="?", const="melodyvae", default=None, metavar="NAME",
                   help="open MIDI ports: a virtual output NAME and input 'NAME in' "
                        "(NAME: melodyvae)")
    g.add_argument("--midi-out", default=None, metavar="PORT",
                   help="send to this existing port (name, part of one, or number) instead "
                        "of a virtual one; needed on Windows (e.g. a loopMIDI port)")
    g.add_argument("--midi-in", default=None, metavar="PORT",
                   help="read knobs, keys and clock from this existing port instead of a "
                        "virtual one")
    g.add_argument("--midi-channel", type=_CHANNEL, default=1, metavar="N",
                   help="channel of the notes sent, 1-16 (1)")
    g.add_argument("--midi-clock", action="store_true",
                   help="follow the input's MIDI clock: play from Start to Stop, in the "
                        "host's tempo, on its bars")
    g.add_argument("--midi-tempo", type=_QPM, default=120.0, metavar="QPM",
                   help="tempo of the knobs' loop without --midi-clock (120)")
    g.add_argument("--cc-map", type=_cc_map, default=None, metavar="FILE",
                   help="JSON map of CC number -> axis (default: CC 1-8 -> pc1-pc8, "
                        "CC 20-25 -> the attribute vectors)")
    g.add_argument("--midi-api", choices=API_NAMES, default="auto",
                   help="MIDI system (auto: the first that works; ALSA before JACK)")


def settings(args: argparse.Namespace) -> MidiSettings | None:
    """MidiSettings from parsed arguments; None when no MIDI option was given."""
    wanted = args.midi is not None or args.midi_out is not None or args.midi_in is not None
    if not wanted:
        if args.midi_clock or args.cc_map is not None:
            raise MidiSetupError("--midi-clock and --cc-map need --midi, --midi-in or "
                                       "--midi-out")
        return None
    require_midi()
    from melodyvae.server.midi_bridge import MidiSettings

    return MidiSettings(args.midi or "melodyvae", args.midi_out, args.midi_in,
                        args.midi_channel, args.midi_clock, args.cc_map, args.midi_api,
                        args.midi_tempo)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Declare ``melodyvae midi ports``."""
    p = sub.add_parser("midi", help="MIDI ports the server can use",
                       description="See what MIDI ports there are (docs/midi.md).")
    midi_sub = p.add_subparsers(dest="midi_command", metavar="COMMAND", required=True)
    q = midi_sub.add_parser("ports", help="list MIDI inputs and outputs",
                            description="List the MIDI ports serve --midi-in / --midi-out "
                                        "can open, by number and name.")
    q.add_argument("--midi-api", choices=API_NAMES, default="auto",
                   help="MIDI system (auto: the first that works)")
    q.set_defaults(func=cmd_ports)


def cmd_ports(args: argparse.Namespace) -> int:
    require_midi()
    from melodyvae.server.midi_port import api_name, choose_api, has_virtual_ports, list_ports

    api = choose_api(args.midi_api)
    inputs, outputs = list_ports(api)
    virtual = "can" if has_virtual_ports(api) else "cannot"
    print(f"MIDI system: {api_name(api)} (it {virtual} create virtual ports)")
    for title, names, flag in (("inputs", inputs, "--midi-in"),
                               ("outputs", outputs, "--midi-out")):
        print(f"{title} ({flag} PORT):")
        for i, name in enumerate(names):
            print(f"  {i}: {name}")
        if not names:
            print("  (none)")
    return 0
