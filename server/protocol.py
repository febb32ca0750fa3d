"""The OSC wire format the server speaks: parse datagrams, check arguments, build replies.

Parsing stands on python-osc's :class:`~pythonosc.osc_message.OscMessage`; bundles are
unpacked here (depth-limited). A bundle's messages are handled when it arrives, never held
back until its timetag; each message carries the timetag it came under
(:attr:`Message.timetag`) for the handlers that place events in time (the live input).
Every failure, whatever python-osc raises for it (``ParseError``,
``UnicodeDecodeError``, ``IndexError``, ``struct.error``...), becomes one
:class:`OscProtocolError` with a reason the server sends back in ``/mvae/error``.

Replies are packed with ``struct`` rather than python-osc's builders: the server writes a
few hundred fixed-shape messages per melody and the builders cost ~10x more per message
(tests check both produce the same bytes).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pythonosc.osc_message import OscMessage

from melodyvae.errors import MelodyVAEError

PREFIX = "/mvae"
BUNDLE_TAG = b"#bundle\x00"
MAX_BUNDLE_DEPTH = 4  # nested bundles deeper than this are refused
MAX_MESSAGES_PER_PACKET = 512  # messages one datagram may carry (bundles included)
MAX_ADDRESS_ECHO = 128  # characters of a bad address echoed back in /mvae/error
# Type tags the server accepts; anything else (arrays, MIDI, chars, ...) is refused.
ACCEPTED_TAGS = frozenset("ifhdsbTFN")
NTP_DELTA = 2_208_988_800  # seconds from 1900-01-01 (NTP epoch) to 1970-01-01
IMMEDIATELY = struct.pack(">Q", 1)  # the OSC timetag meaning "now"
MAX_INT32 = 2**31 - 1
MAX_FLOAT32 = float(np.finfo(np.float32).max)  # larger magnitudes become inf in float32


class OscProtocolError(MelodyVAEError):
    """A datagram or a message argument the server cannot use.

    ``address`` is the OSC address it concerns ("" when the datagram had none).
    """

    def __init__(self, reason: str, address: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.address = address


@dataclass(frozen=True)
class Message:
    """One received OSC message."""

    address: str
    args: tuple[Any, ...]
    tags: str  # the type tags without the leading comma
    # Unix seconds of the innermost enclosing bundle's timetag; None outside a bundle or
    # for the "immediately" timetag
    timetag: float | None = None


# ---------------------------------------------------------------------------- parsing


def parse_packet(data: bytes) -> list[Message | OscProtocolError]:
    """The messages of one datagram, in order, bundles unpacked.

    A message that cannot be parsed appears in the list as the :class:`OscProtocolError`
    that says why, so one broken element of a bundle does not hide the others. A datagram
    that is neither a message nor a bundle gives a single error.
    """
    out: list[Message | OscProtocolError] = []
    _parse_element(bytes(data), 0, out, None)
    if len(out) > MAX_MESSAGES_PER_PACKET:
        out[MAX_MESSAGES_PER_PACKET:] = [OscProtocolError(
            f"more than {MAX_MESSAGES_PER_PACKET} messages in one datagram; the rest ignored")]
    return out


def _parse_element(data: bytes, depth: int, out: list[Message | OscProtocolError],
                   timetag: float | None) -> None:
    if len(out) > MAX_MESSAGES_PER_PACKET:
        return
    if data.startswith(BUNDLE_TAG):
        if depth >= MAX_BUNDLE_DEPTH:
            out.append(OscProtocolError(f"bundles nested deeper than {MAX_BUNDLE_DEPTH}"))
            return
        _parse_bundle(data, depth, out, timetag)
    elif data.startswith(b"/"):
        try:
            message = parse_message(data)
            out.append(message if timetag is None else
                       Message(message.address, message.args, message.tags, timetag))
        except OscProtocolError as e:
            out.append(e)
    elif not data:
        out.append(OscProtocolError("empty datagram"))
    else:
        out.append(OscProtocolError("not an OSC message or bundle (must start with / or "
                                    "#bundle)"))


def _parse_bundle(data: bytes, depth: int, out: list[Message | OscProtocolError],
                  outer: float | None) -> None:
    # "#bundle\0", an 8-byte timetag, then elements: int32 size + contents.
    index = len(BUNDLE_TAG) + 8
    if len(data) < index:
        out.append(OscProtocolError("bundle too short for its timetag"))
        return
    timetag = timetag_seconds(data[len(BUNDLE_TAG):index])
    if timetag is None or timetag < 0:  # "immediately" (or 0, which some clients send
        timetag = outer  # for it): the enclosing bundle's time, if any
    while index < len(data):
        if index + 4 > len(data):
            out.append(OscProtocolError("bundle element size cut short"))
            return
        (size,) = struct.unpack_from(">i", data, index)
        index += 4
        if size <= 0 or size % 4 or index + size > len(data):
            out.append(OscProtocolError(
                f"bundle element of size {size} does not fit the datagram"))
            return
        _parse_element(data[index:index + size], depth + 1, out, timetag)
        index += size


# OSC tag -> struct code; every other accepted tag -> "?" (not unpacked by struct)
_NUMERIC = str.maketrans({tag: "?" for tag in ACCEPTED_TAGS} | {"h": "q"}
                         | {tag: tag for tag in "ifd"})


def parse_message(data: bytes) -> Message:
    """One OSC message (not a bundle), refusing type tags the server does not accept.

    All-numeric messages (sliders, vectors) are unpacked with one ``struct`` call; the
    rest go through python-osc.
    """
    address = _peek_address(data)
    try:
        _, index = _read_string(data, 0)
        tags = ","
        if index < len(data):
            tags, index = _read_string(data, index)
            if not tags.startswith(","):
                raise OscProtocolError("type tag string must start with ','", address)
            unknown = sorted(set(tags[1:]) - ACCEPTED_TAGS)
            if unknown:
                raise OscProtocolError(
                    f"unsupported OSC type tag {''.join(unknown)!r} (use i, f, h, d, s)",
                    address)
        codes = ">" + tags[1:].translate(_NUMERIC)
        if "?" not in codes and struct.calcsize(codes) == len(data) - index:
            return Message(address, struct.unpack_from(codes, data, index), tags[1:])
        msg = OscMessage(data)
    except OscProtocolError:
        raise
    except Exception as e:  # python-osc raises ParseError, UnicodeDecodeError, IndexError...
        raise OscProtocolError(f"malformed OSC message ({type(e).__name__})", address) from e
    args = tuple(msg.params)
    if len(args) != len(tags) - 1:
        raise OscProtocolError("arguments do not match their type tags", address)
    return Message(address, args, tags[1:])


def _read_string(data: bytes, index: int) -> tuple[str, int]:
    """An OSC string at ``index`` and the index after its padding."""
    end = data.find(b"\x00", index)
    after = index + ((end - index) // 4 + 1) * 4
    if end < 0 or after > len(data):
        raise OscProtocolError("string not terminated within the datagram",
                               _peek_address(data))
    return data[index:end].decode("utf-8"), after


def _peek_address(data: bytes) -> str:
    """The address a datagram starts with, as far as it can be read ("" when not)."""
    end = data.find(b"\x00")
    raw = data if end < 0 else data[:end]
    text = raw[:MAX_ADDRESS_ECHO].decode("utf-8", errors="replace")
    return text if text.startswith("/") else ""


# ---------------------------------------------------------------------------- arguments


class Args:
    """Typed access to a message's arguments, raising :class:`OscProtocolError`.

    Pure Data sends every number as a float: where an integer is meant a float is
    accepted and rounded to the nearest whole number. NaN, infinity and anything beyond the
    float32 range (what the model computes in) are refused, bounds or not.
    """

    def __init__(self, message: Message) -> None:
        self.message = message
        self.values = message.args

    def __len__(self) -> int:
        return len(self.values)

    def error(self, reason: str) -> OscProtocolError:
        return OscProtocolError(reason, self.message.address)

    def count(self, low: int, high: int | None = None) -> int:
        """Check the number of arguments lies in ``low..high``; return it."""
        n = len(self.values)
        high = low if high is None else high
        if not low <= n <= high:
            want = str(low) if low == high else f"{low} to {high}"
            raise self.error(f"expects {want} argument{'s' * (want != '1')}, got {n}")
        return n

    def number(self, i: int, name: str, low: float | None = None,
               high: float | None = None) -> float:
        """Argument ``i`` as a finite float within ``low..high``."""
        value = self.values[i]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"{name} (argument {i + 1}) must be a number, "
                             f"not {_tag_name(self.message.tags[i])}")
        value = float(value)
        if not math.isfinite(value):
            raise self.error(f"{name} (argument {i + 1}) must be finite, not {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise self.error(f"{name} (argument {i + 1}) must lie in "
                             f"{_fmt(low)}..{_fmt(high)}, not {_fmt(value)}")
        if abs(value) > MAX_FLOAT32:
            raise self.error(f"{name} (argument {i + 1}) must be finite in float32 "
                             f"(|x| <= {MAX_FLOAT32:.4g}), not {value:g}")
        return value

    def vector(self, name: str, bound: float) -> np.ndarray:
        """Every argument as one float64 vector of finite values with ``|x| <= bound``."""
        tags = self.message.tags
        if tags.strip("ifdh"):
            i = next(k for k, tag in enumerate(tags) if tag not in "ifdh")
            raise self.error(f"{name}[{i}] (argument {i + 1}) must be a number, "
                             f"not {_tag_name(tags[i])}")
        values = np.asarray(self.values, dtype=np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            i = int(np.argmin(finite))
            raise self.error(f"{name}[{i}] (argument {i + 1}) must be finite, not {values[i]}")
        inside = np.abs(values) <= bound
        if not inside.all():
            i = int(np.argmin(inside))
            raise self.error(f"{name}[{i}] (argument {i + 1}) must lie in "
                             f"{_fmt(-bound)}..{_fmt(bound)}, not {_fmt(float(values[i]))}")
        return values

    def integer(self, i: int, name: str, low: int | None = None,
                high: int | None = None) -> int:
        """Argument ``i`` as an int (a float is rounded) within ``low..high``."""
        raw = self.values[i]
        value = raw if type(raw) is int else self.number(i, name)  # exact for int64 seeds
        whole = int(round(value))
        if (low is not None and whole < low) or (high is not None and whole > high):
            raise self.error(f"{name} (argument {i + 1}) must lie in "
                             f"{_fmt(low)}..{_fmt(high)}, not {_fmt(value)}")
        return whole

    def string(self, i: int, name: str, max_len: int = 256) -> str:
        value = self.values[i]
        if not isinstance(value, str):
            raise self.error(f"{name} (argument {i + 1}) must be a string, "
                             f"not {_tag_name(self.message.tags[i])}")
        if not value:
            raise self.error(f"{name} (argument {i + 1}) must not be empty")
        if len(value) > max_len:
            raise self.error(f"{name} (argument {i + 1}) is longer than {max_len} characters")
        return value


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:g}" if isinstance(value, float) else str(value)


_TAG_NAMES = {"i": "an int", "h": "an int64", "f": "a float", "d": "a double",
              "s": "a string", "b": "a blob", "T": "true", "F": "false", "N": "nil"}


def _tag_name(tag: str) -> str:
    return _TAG_NAMES.get(tag, repr(tag))


# ---------------------------------------------------------------------------- building


def _pad_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return raw + b"\x00" * (4 - len(raw) % 4)


_PACK = {"i": ">i", "f": ">f"}


def encode_message(address: str, tags: str, args: Sequence[Any]) -> bytes:
    """Pack one OSC message; ``tags`` holds one of ``i``, ``f``, ``s`` per argument."""
    if len(tags) != len(args):
        raise ValueError(f"{len(tags)} type tags for {len(args)} arguments")
    parts = [_pad_string(address), _pad_string("," + tags)]
    for tag, value in zip(tags, args, strict=True):
        if tag == "s":
            parts.append(_pad_string(str(value)))
        elif tag == "i":
            parts.append(struct.pack(">i", int(value)))
        elif tag == "f":
            parts.append(struct.pack(">f", float(value)))
        else:
            raise ValueError(f"cannot build type tag {tag!r}")
    return b"".join(parts)


def ntp_timetag(seconds: float | None) -> bytes:
    """The 8-byte OSC timetag for a Unix time in seconds (``None``: immediately)."""
    if seconds is None:
        return IMMEDIATELY
    ntp = seconds + NTP_DELTA
    whole = int(ntp)
    fraction = int((ntp - whole) * 2**32)
    return struct.pack(">II", whole & 0xFFFFFFFF, min(fraction, 0xFFFFFFFF))


def timetag_seconds(tag: bytes) -> float | None:
    """The Unix time an 8-byte timetag stands for (``None`` for immediately)."""
    if tag == IMMEDIATELY:
        return None
    whole, fraction = struct.unpack(">II", tag)
    return whole - NTP_DELTA + fraction / 2**32


def encode_bundle(elements: Sequence[bytes], at: float | None = None) -> bytes:
    """Pack already encoded messages (or bundles) into one bundle timed ``at`` (Unix s)."""
    parts = [BUNDLE_TAG, ntp_timetag(at)]
    for element in elements:
        parts.append(struct.pack(">i", len(element)))
        parts.append(element)
    return b"".join(parts)


def error_message(address: str, reason: str) -> bytes:
    """``/mvae/error s address s reason``."""
    return encode_message(f"{PREFIX}/error", "ss", [address[:MAX_ADDRESS_ECHO], reason])
