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

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from melodyvae.errors import MelodyVAEError
from melodyvae.melody import Melody

_LOGGER = logging.getLogger(__name__)

Addr = tuple[str, int]  # (host, port) of a UDP peer
N_PCS = 8  # PCA axes pc1..pc8
DEFAULT_QPM = 120.0  # tempo of a new client, quarter notes per minute
DEFAULT_LOOKAHEAD = 0.1  # seconds between sending a timetagged note and its time


class AxesError(MelodyVAEError):
    """A model without usable latent axes, or an axis it does not have."""


class SlotError(MelodyVAEError):
    """A slot that was never stored (or was evicted)."""


class LatentAxes:
    """The PCA axes and attribute vectors a checkpoint ships (``info["axes"]``)."""

    def __init__(self, z_dim: int, doc: dict[str, Any] | None) -> None:
        self.z_dim = z_dim
        self.mean = np.zeros(z_dim, np.float64)
        self.std = np.ones(0, np.float64)
        self.dirs = np.zeros((0, z_dim), np.float64)  # (K, Z)
        self.attributes: dict[str, np.ndarray] = {}
        self.problem: str | None = "model has no latent axes; run melodyvae axes MODEL"
        if not doc:
            return
        try:
            self._read(doc)
        except (KeyError, TypeError, ValueError) as e:
            self.mean = np.zeros(z_dim, np.float64)
            self.std, self.dirs, self.attributes = np.ones(0), np.zeros((0, z_dim)), {}
            self.problem = f"the model's latent axes are malformed ({e}); rerun melodyvae axes"
            _LOGGER.warning("%s", self.problem)
            return
        self.problem = None

    def _read(self, doc: dict[str, Any]) -> None:
        pca = doc["pca"]
        mean = np.asarray(pca["mean"], np.float64)
        std = np.asarray(pca["std"], np.float64)
        dirs = np.asarray(pca["directions"], np.float64)
        if mean.shape != (self.z_dim,):
            raise ValueError(f"pca.mean has shape {mean.shape}, not ({self.z_dim},)")
        if dirs.ndim != 2 or dirs.shape[1] != self.z_dim or not 1 <= len(dirs) <= N_PCS:
            raise ValueError(f"pca.directions has shape {dirs.shape}")
        if std.shape != (len(dirs),):
            raise ValueError(f"pca.std has shape {std.shape}, not ({len(dirs)},)")
        attributes = {}
        for name, vector in (doc.get("attributes") or {}).items():
            v = np.asarray(vector, np.float64)
            if v.shape != (self.z_dim,):
                raise ValueError(f"attribute {name} has shape {v.shape}")
            attributes[str(name)] = v
        for array in (mean, std, dirs, *attributes.values()):
            if not np.all(np.isfinite(array)):
                raise ValueError("non-finite numbers")
        self.mean, self.std, self.dirs, self.attributes = mean, std, dirs, attributes

    @property
    def pc_names(self) -> list[str]:
        return [f"pc{k + 1}" for k in range(len(self.dirs))]

    @property
    def names(self) -> list[str]:
        return self.pc_names + list(self.attributes)

    def require(self) -> None:
        if self.problem:
            raise AxesError(self.problem)

    def project(self, z: np.ndarray) -> np.ndarray:
        """PCA coordinates of ``z`` in standard deviations, (K,)."""
        safe = np.where(self.std > 0, self.std, 1.0)
        return self.dirs @ (z - self.mean) / safe

    def compose(self, pcs: np.ndarray, amounts: dict[str, float]) -> np.ndarray:
        """``mean + sum pc_k std_k dir_k + sum amount_a attr_a`` (no residual), (Z,)."""
        z = self.mean + (pcs * self.std) @ self.dirs
        for name, amount in amounts.items():
            if amount:
                z = z + amount * self.attributes[name]
        return z


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

    def __post_init__(self) -> None:
        self.pcs = np.zeros(len(self.axes.dirs))
        self.residual = np.zeros(self.axes.z_dim)

    @property
    def z(self) -> np.ndarray:
        """The client's latent vector, (Z,) float64."""
        return self.axes.compose(self.pcs, self.amounts) + self.residual

    def set_z(self, z: np.ndarray) -> None:
        """Take a whole vector: coordinates become its projections, amounts 0."""
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
