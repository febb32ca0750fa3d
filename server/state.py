"""What the server remembers per client: its latent coordinates, settings and slots.

A client's latent vector is always rebuilt from its coordinates (see docs/osc.md):

    z = mean + sum_k pc_k * std_k * dir_k + sum_a amount_a * attr_a + residual

``/mvae/xy`` and ``/mvae/axis`` set a coordinate and leave the others alone; a full vector
(``/mvae/z``, a recalled slot, an encoded melody, a sample) sets the PCA coordinates to its
projections, the attribute amounts to 0 and the residual to whatever the PCA axes do not
explain, so the vector is reproduced exactly. ``/mvae/z/i`` moves one dimension of the
residual so that dimension of z takes the value sent.

Everything here is bounded: the client table, each client's slots and the sender routes
evict their oldest entries when full.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np

from melodyvae.axes import AxesError, LatentAxes
from melodyvae.errors import MelodyVAEError
from melodyvae.melody import Melody

Addr = tuple[str, int]  # (host, port) of a UDP peer
DEFAULT_QPM = 120.0  # tempo of a new client, quarter notes per minute
DEFAULT_LOOKAHEAD = 0.1  # seconds between sending a timetagged note and its time


MAX_SECTION_EDITS = 64  # section edits one client may have waiting for the worker


class SlotError(MelodyVAEError):
    """A slot that was never stored (or was evicted)."""


@dataclass(frozen=True)
class SectionEdit:
    """One change to a section of a phrase: its code varied by ``amount`` x N(0, I) drawn
    with ``seed``, or, with ``melody``, set to that melody's section code."""

    index: int  # which section, from 0
    amount: float = 0.0  # vary: in the section model's code spreads
    seed: int = 0
    melody: Melody | None = None  # set: a melody whose first section is encoded


@dataclass
class ClientState:
    """One client: latent coordinates, generation and playback settings, slots."""

    key: Addr  # where its replies go; clients are told apart by it
    axes: LatentAxes
    max_slots: int
    pcs: np.ndarray = field(init=False)  # (K,) PCA coordinates in standard deviations
    amounts: dict[str, float] = field(default_factory=dict)  # attribute amounts
    residual: np.ndarray = field(init=False)  # (Z,) the part of z the coordinates miss
    temperature: float = 0.0  # 0 = the most likely token at each step
    seed: int = 0  # sampling seed used when temperature > 0
    qpm: float = DEFAULT_QPM  # tempo of melodies sent and of playback
    lookahead: float = DEFAULT_LOOKAHEAD  # seconds, playback bundles ahead of their time
    slots: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    melody: Melody | None = None  # the last melody sent (what /mvae/play loops)
    unanswered_since: float | None = None  # when the model first stopped one of this
    # client's decodes as stale since its last melody (engine clock); None: not waiting
    # Phrase models: the section codes decoded instead of z once a section was set or
    # varied, (sections, code_dim); None: z is decoded. Edits not yet applied wait in
    # section_edits (the worker applies them in order); setting z drops both.
    codes: np.ndarray | None = None
    section_edits: list[SectionEdit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pcs = np.zeros(len(self.axes.dirs))
        self.residual = np.zeros(self.axes.z_dim)

    @property
    def z(self) -> np.ndarray:
        """The client's latent vector, (Z,) float64."""
        return self.axes.compose(self.pcs, self.amounts) + self.residual

    def drop_sections(self) -> None:
        """Back to decoding z: the section codes and their waiting edits are dropped."""
        self.codes = None
        self.section_edits = []

    def edit_section(self, edit: SectionEdit) -> None:
        if len(self.section_edits) >= MAX_SECTION_EDITS:
            raise MelodyVAEError(f"{MAX_SECTION_EDITS} section edits are waiting already; "
                                 f"wait for a melody")
        self.section_edits.append(edit)

    def set_z(self, z: np.ndarray) -> None:
        """Take a whole vector: coordinates become its projections, amounts 0; section
        codes are dropped."""
        self.drop_sections()
        z = np.asarray(z, np.float64)
        self.pcs = self.axes.project(z)
        self.amounts = {}
        self.residual = z - self.axes.compose(self.pcs, {})

    def set_dim(self, index: int, value: float) -> None:
        """Make ``z[index] == value`` by moving the residual."""
        self.residual[index] += value - self.z[index]

    def set_axis(self, name: str, value: float) -> None:
        self.axes.require()
        if name in self.axes.attributes:
            self.amounts[name] = value
            return
        names = self.axes.pc_names
        if name not in names:
            raise AxesError(f"unknown axis {name!r}; the model has: {', '.join(self.axes.names)}")
        self.pcs[names.index(name)] = value

    def store(self, name: str, z: np.ndarray | None = None) -> None:
        """Keep ``z`` (default: the current vector) under ``name``; the oldest slot goes
        past ``max_slots``."""
        self.slots.pop(name, None)
        self.slots[name] = (self.z if z is None else np.asarray(z, np.float64)).copy()
        while len(self.slots) > self.max_slots:
            self.slots.popitem(last=False)

    def slot(self, name: str) -> np.ndarray:
        try:
            return self.slots[name]
        except KeyError:
            raise SlotError(f"slot {name!r} is empty; store it first with "
                            f"/mvae/slot/store {name}") from None


K = TypeVar("K")
V = TypeVar("V")


class BoundedMap(Generic[K, V]):
    """A dict that forgets its least recently used entry past ``capacity``."""

    def __init__(self, capacity: int, on_evict: Callable[[K, V], None] | None = None) -> None:
        self.capacity = capacity
        self.on_evict = on_evict
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            old_key, old_value = self._items.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old_key, old_value)

    def pop(self, key: K) -> V | None:
        return self._items.pop(key, None)

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> list[V]:
        return list(self._items.values())
