"""The client table: who the server remembers, and who is forgotten first.

Clients are kept in two segments (a segmented LRU). A new client is a *newcomer*; once it
has been heard from for :data:`SETTLE_S` it is *settled*. When the table is full, the least
recently heard newcomer is forgotten first, and a settled client only when no newcomer is
left — so a flood of new source ports (each a new client) forgets its own earlier ports,
not the musicians already playing.

While newcomers are being forgotten to make room (within :data:`CROWDED_S` of the last
such eviction) the table is *crowded*, and :meth:`ClientTable.newcomer` says a decode for a
newcomer may wait behind the settled clients' (see ``Engine``): the model's time goes to the
clients the server already knows.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

SETTLE_S = 0.5  # seconds from a client's first message to the one that settles it
CROWDED_S = 1.0  # seconds after an eviction during which newcomers' decodes may wait


class ClientTable(Generic[K, V]):
    """At most ``capacity`` clients; newcomers are forgotten before settled clients."""

    def __init__(self, capacity: int, on_evict: Callable[[K, V], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = capacity
        self.on_evict = on_evict
        self.clock = clock
        self._new: OrderedDict[K, tuple[V, float]] = OrderedDict()  # value, first heard
        self._settled: OrderedDict[K, V] = OrderedDict()
        self._last_eviction = -float("inf")

    def get(self, key: K) -> V | None:
        """The client under ``key`` (now the most recently heard), settling it once it has
        been around for SETTLE_S."""
        value = self._settled.get(key)
        if value is not None:
            self._settled.move_to_end(key)
            return value
        entry = self._new.get(key)
        if entry is None:
            return None
        value, first = entry
        if self.clock() - first >= SETTLE_S:
            del self._new[key]
            self._settled[key] = value
        else:
            self._new.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        """A new client (a newcomer); the table forgets one past its capacity."""
        self._settled.pop(key, None)
        self._new[key] = (value, self.clock())
        self._new.move_to_end(key)
        while len(self) > self.capacity:
            if len(self._new) > 1 or not self._settled:
                old_key, (old_value, _) = self._new.popitem(last=False)
                self._last_eviction = self.clock()
            else:
                old_key, old_value = self._settled.popitem(last=False)
            if self.on_evict is not None:
                self.on_evict(old_key, old_value)

    def pop(self, key: K) -> V | None:
        entry = self._new.pop(key, None)
        if entry is not None:
            return entry[0]
        return self._settled.pop(key, None)

    def newcomer(self, key: K) -> bool:
        """Whether ``key`` is a newcomer while the table is crowded with them."""
        return key in self._new and self.clock() - self._last_eviction < CROWDED_S

    def __len__(self) -> int:
        return len(self._new) + len(self._settled)

    def values(self) -> list[V]:
        return [value for value, _ in self._new.values()] + list(self._settled.values())
