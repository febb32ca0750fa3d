"""Knobs on the sliders: which MIDI control change moves which latent axis, and how far.

By default CC 1-8 move the PCA axes ``pc1``..``pc8`` over -3..3 standard deviations and
CC 20-25 move the model's attribute vectors, in the order ``/mvae/axes`` lists them, over
-2..2. CC value 64 is the middle of the range (0 for the defaults), 0 its low end and 127
its high end. ``--cc-map FILE`` replaces the defaults with a JSON object::

    {"1": "pc1", "74": {"axis": "note_density", "min": -1, "max": 3}}

Keys are CC numbers 0-119 (120-127 are channel mode messages); values an axis name as
``/mvae/axis`` takes it, or an object with ``axis`` and optional ``min`` / ``max``
(-10..10).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melodyvae.errors import MelodyVAEError

MAX_CC = 119  # 120-127 are channel mode messages
MAX_AXIS = 10.0  # |value| /mvae/axis accepts
PC_CCS = range(1, 9)  # CC 1-8 -> pc1..pc8
ATTRIBUTE_CCS = range(20, 26)  # CC 20-25 -> the attribute vectors
PC_RANGE = (-3.0, 3.0)  # standard deviations
ATTRIBUTE_RANGE = (-2.0, 2.0)  # amounts along an attribute vector


class CCMapError(MelodyVAEError):
    """A CC map file that cannot be used, or names an axis the model lacks."""


@dataclass(frozen=True)
class Knob:
    """One control change number on one axis."""

    axis: str  # pc1..pc8 or an attribute name
    low: float = -3.0  # the value at CC 0
    high: float = 3.0  # the value at CC 127

    def value(self, cc_value: int) -> float:
        """The axis value for a CC value 0..127; 64 is the middle of the range."""
        middle = (self.low + self.high) / 2
        if cc_value >= 64:
            return middle + (cc_value - 64) / 63 * (self.high - middle)
        return middle - (64 - cc_value) / 64 * (middle - self.low)


CCMap = dict[int, Knob]


def default_map(pc_names: list[str], attributes: list[str]) -> CCMap:
    """CC 1-8 on the PCA axes, CC 20-25 on the attribute vectors the model has."""
    knobs = {cc: Knob(name, *PC_RANGE) for cc, name in zip(PC_CCS, pc_names, strict=False)}
    knobs.update({cc: Knob(name, *ATTRIBUTE_RANGE)
                  for cc, name in zip(ATTRIBUTE_CCS, attributes, strict=False)})
    return knobs


def read_map(path: Path) -> CCMap:
    """Parse a CC map file (syntax and ranges only; :func:`check_map` checks the axes)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise CCMapError(f"--cc-map {path}: {e.strerror or e}") from e
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CCMapError(f"--cc-map {path}: not JSON ({e})") from e
    return parse_map(doc, str(path))


def parse_map(doc: Any, where: str = "cc map") -> CCMap:
    if not isinstance(doc, dict):
        raise CCMapError(f"{where}: must be a JSON object of CC number -> axis")
    knobs: CCMap = {}
    for key, entry in doc.items():
        try:
            cc = int(key)
        except ValueError:
            raise CCMapError(f"{where}: {key!r} is not a CC number") from None
        if not 0 <= cc <= MAX_CC:
            raise CCMapError(f"{where}: CC {cc} is outside 0..{MAX_CC}")
        if isinstance(entry, str):
            entry = {"axis": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("axis"), str) \
                or not entry["axis"]:
            raise CCMapError(f"{where}: CC {cc} needs an axis name")
        unknown = set(entry) - {"axis", "min", "max"}
        if unknown:
            raise CCMapError(f"{where}: CC {cc}: unknown key {sorted(unknown)[0]!r} "
                             f"(use axis, min, max)")
        pc = entry["axis"].startswith("pc")
        default_low, default_high = PC_RANGE if pc else ATTRIBUTE_RANGE
        low = _bound(entry.get("min", default_low), where, cc, "min")
        high = _bound(entry.get("max", default_high), where, cc, "max")
        knobs[cc] = Knob(entry["axis"], low, high)
    return knobs


def _bound(value: Any, where: str, cc: int, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or abs(value) > MAX_AXIS:
        raise CCMapError(f"{where}: CC {cc}: {name} must be a number in "
                         f"-{MAX_AXIS:g}..{MAX_AXIS:g}, not {value!r}")
    return float(value)


def check_map(knobs: CCMap, axis_names: list[str]) -> None:
    """Every knob names an axis of the model."""
    for cc, knob in sorted(knobs.items()):
        if knob.axis not in axis_names:
            have = ", ".join(axis_names) if axis_names else \
                "none (run melodyvae axes MODEL)"
            raise CCMapError(f"--cc-map: CC {cc} -> {knob.axis!r}: the model has no such "
                             f"axis; its axes: {have}")
