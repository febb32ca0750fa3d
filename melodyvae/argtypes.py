"""Argument types for the command line: checked numbers with one-line messages."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def whole_number(low: int | None = None, high: int | None = None,
                 what: str = "a whole number", unit: str = "") -> Callable[[str], int]:
    """An argparse type: an int in [low, high] (either bound may be open)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        _check(value, low, high, text, unit)
        return value

    return parse


def real_number(low: float | None = None, high: float | None = None,
                what: str = "a number", unit: str = "") -> Callable[[str], float]:
    """An argparse type: a finite float in [low, high] (either bound may be open)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        _check(value, low, high, text, unit)
        return value

    return parse


def _check(value: float, low: float | None, high: float | None, text: str, unit: str) -> None:
    suffix = f" {unit}" if unit else ""
    if low is not None and high is not None and not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text}{suffix} is outside {low:g}..{high:g}")
    if low is not None and value < low:
        raise argparse.ArgumentTypeError(f"{text} must be at least {low:g}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"{text} must be {high:g} or less")


positive_int = whole_number(1)
non_negative_int = whole_number(0)


_BYTE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def byte_size(text: str) -> int:
    """An argparse type: a positive number of bytes, plain or with k, M or G (powers of
    1024; a trailing B or iB is allowed): 1048576, 512k, 4M, 1GiB."""
    clean = text.strip().lower().removesuffix("b").removesuffix("i")
    unit = clean[-1:] if clean[-1:] in ("k", "m", "g") else ""
    number = clean[: len(clean) - len(unit)]
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size in bytes (e.g. 1048576, "
                                         "512k, 4M)") from None
    if not math.isfinite(value) or value * _BYTE_UNITS[unit] > 2**62:
        raise argparse.ArgumentTypeError(f"{text}: not a size this machine could hold")
    if value * _BYTE_UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"{text}: a size must be at least 1 byte")
    return int(value * _BYTE_UNITS[unit])
