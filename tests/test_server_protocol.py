"""The OSC wire format: parsing with python-osc underneath, struct-packed replies."""

from __future__ import annotations

import math
import struct
import time
from typing import Any

import pytest
from pythonosc.osc_bundle import OscBundle
from pythonosc.osc_bundle_builder import IMMEDIATELY, OscBundleBuilder
from pythonosc.osc_message import OscMessage
from pythonosc.osc_message_builder import OscMessageBuilder

from melodyvae.server.protocol import (
    MAX_BUNDLE_DEPTH,
    MAX_MESSAGES_PER_PACKET,
    Args,
    Message,
    OscProtocolError,
    encode_bundle,
    encode_message,
    error_message,
    ntp_timetag,
    parse_packet,
    timetag_seconds,
)


def build(address: str, *args: Any, types: str | None = None) -> bytes:
    builder = OscMessageBuilder(address)
    for i, value in enumerate(args):
        builder.add_arg(value, types[i] if types else None)
    return builder.build().dgram


def bundle(*elements: bytes, at: float = IMMEDIATELY) -> bytes:
    builder = OscBundleBuilder(at)  # type: ignore[arg-type]  # it takes float seconds
    for element in elements:
        parsed = OscBundle(element) if element.startswith(b"#bundle") else OscMessage(element)
        builder.add_content(parsed)
    return builder.build().dgram


def only_message(data: bytes) -> Message:
    items = parse_packet(data)
    assert len(items) == 1
    assert isinstance(items[0], Message), items[0]
    return items[0]


def only_error(data: bytes) -> OscProtocolError:
    items = parse_packet(data)
    assert len(items) == 1
    assert isinstance(items[0], OscProtocolError), items[0]
    return items[0]


def test_messages_parse_with_their_types() -> None:
    msg = only_message(build("/mvae/z", 0.5, 2, "x", types="fis"))
    assert msg.address == "/mvae/z"
    assert msg.args == (0.5, 2, "x")
    assert msg.tags == "fis"
    assert only_message(b"/mvae/ping\x00\x00").args == ()  # no type tag string at all


def test_bundles_unpack_in_order_and_ignore_far_future_timetags() -> None:
    far = time.time() + 5 * 365 * 86400  # (NTP era 0 ends in 2036)
    data = bundle(build("/a", 1), bundle(build("/b", 2.0), at=far), build("/c"), at=far)
    started = time.perf_counter()
    items = parse_packet(data)
    assert time.perf_counter() - started < 0.1  # nothing waits for the timetag
    assert [(m.address, m.args) for m in items if isinstance(m, Message)] == [
        ("/a", (1,)), ("/b", (2.0,)), ("/c", ())]


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b"hello", "not an OSC message"),
    (b"/mvae/z\x00,i\x00\x00\x00\x00", "malformed"),  # int cut short
    (b"/mvae/z\x00\x00\x00\x00\x00f\x00\x00", "must start with ','"),
    (b"/mvae/z\x00,\xff\xfe\x00", "malformed"),  # type tags not UTF-8
    (b"/mvae/\xff\xfe\x00\x00\x00\x00", "malformed"),  # address not UTF-8
    (b"/mvae/z\x00,f", "not terminated"),
    (b"/mvae/z\x00,c\x00\x00\x00\x00\x00A", "unsupported OSC type tag 'c'"),
    (b"/mvae/z\x00,[f]\x00\x00\x00\x00\x00", "unsupported OSC type tag"),
    (b"#bundle\x00\x00\x00", "too short"),
    (b"#bundle\x00" + b"\x00" * 8 + b"\x00\x00\x01\x00/a\x00\x00", "does not fit"),
    (b"#bundle\x00" + b"\x00" * 8 + b"\xff\xff\xff\xfc", "does not fit"),
])
def test_broken_datagrams_give_one_reason(data: bytes, reason: str) -> None:
    assert reason in only_error(data).reason


def test_errors_keep_the_address_they_concern() -> None:
    assert only_error(b"/mvae/z\x00,i\x00\x00\x00").address == "/mvae/z"
    assert only_error(b"\x01\x02").address == ""


def test_one_broken_element_does_not_hide_the_others() -> None:
    data = bundle(build("/a", 1)) + struct.pack(">i", 8) + b"/b\x00\x00,i\x00\x00"
    items = parse_packet(data)
    assert isinstance(items[0], Message) and items[0].address == "/a"
    assert isinstance(items[1], OscProtocolError)


def test_deep_nesting_and_huge_bundles_are_bounded() -> None:
    data = build("/x")
    for _ in range(MAX_BUNDLE_DEPTH + 3):
        data = bundle(data)
    assert "nested deeper" in only_error(data).reason
    many = encode_bundle([build("/m")] * (MAX_MESSAGES_PER_PACKET + 50))
    items = parse_packet(many)
    assert len(items) == MAX_MESSAGES_PER_PACKET + 1
    assert isinstance(items[-1], OscProtocolError)


def test_encode_message_matches_python_osc() -> None:
    ours = encode_message("/mvae/note", "iiiffs", [7, 60, 90, 1.5, 0.25, "é"])
    theirs = build("/mvae/note", 7, 60, 90, 1.5, 0.25, "é", types="iiiffs")
    assert ours == theirs
    assert encode_message("/mvae/pong", "", []) == build("/mvae/pong")


def test_encode_bundle_matches_python_osc() -> None:
    a, b = build("/x", 1), build("/y", 2.0)
    assert encode_bundle([a, b]) == bundle(a, b)
    at = 1_800_000_000.25
    parsed = OscBundle(encode_bundle([a], at))
    assert parsed.timestamp == pytest.approx(at, abs=1e-6)
    assert timetag_seconds(ntp_timetag(at)) == pytest.approx(at, abs=1e-6)
    assert timetag_seconds(ntp_timetag(None)) is None


def test_error_message_is_two_strings() -> None:
    msg = OscMessage(error_message("/mvae/z", "bad"))
    assert (msg.address, msg.params) == ("/mvae/error", ["/mvae/z", "bad"])


def args_of(*values: object, types: str | None = None) -> Args:
    return Args(only_message(build("/t", *values, types=types)))


def test_floats_are_accepted_where_ints_are_meant() -> None:
    args = args_of(3.0, 2.6, 7, types="ffi")
    assert args.integer(0, "a") == 3
    assert args.integer(1, "b") == 3  # rounded to the nearest whole number
    assert args.integer(2, "c") == 7
    assert args.number(2, "c") == 7.0


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(value: float) -> None:
    for tag in "fd":
        with pytest.raises(OscProtocolError, match="finite"):
            args_of(value, types=tag).number(0, "x")


def test_argument_errors_say_what_was_wrong() -> None:
    with pytest.raises(OscProtocolError, match="must be a number, not a string"):
        args_of("x").number(0, "x")
    with pytest.raises(OscProtocolError, match="must lie in 0..10"):
        args_of(11.0).number(0, "x", 0, 10)
    with pytest.raises(OscProtocolError, match="must be a string, not a float"):
        args_of(1.0).string(0, "name")
    with pytest.raises(OscProtocolError, match="expects 2 arguments, got 1"):
        args_of(1.0).count(2)
    with pytest.raises(OscProtocolError, match="must be a number, not true"):
        args_of(True).number(0, "x")
