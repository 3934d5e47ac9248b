"""The L1 tier: a thread-safe, TTL'd LRU of versioned entries, bounded by count and by bytes held. Knows
nothing of Redis or Flask."""

from __future__ import annotations

import math
import random
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar


class Versioned(Protocol):
    @property
    def version(self) -> int: ...


V = TypeVar("V", bound=Versioned)
# What a slot costs beside its key and value: the tuple, its expiry float and version int, and the
# OrderedDict's entry and link (measured with tracemalloc: about 200-300 bytes a slot in all).
SLOT_BYTES = 200


def _nothing(value: object) -> int:
    return 0


class LRUCache(Generic[V]):
    """OrderedDict + move_to_end. Each slot holds (expires_at, version, value or None, bytes).

    A slot whose value is None is a *floor*: it answers as a miss but refuses any later `set` of an
    older version, which is how an invalidation keeps a slow reader from putting old data back.
    At most `max_items` slots, holding at most `max_bytes` in all: a slot weighs SLOT_BYTES, its key's
    sys.getsizeof and `weigh(value)` (what the value holds in memory); the least recently used go first.
    """

    def __init__(
        self,
        max_items: int,
        ttl: float,
        timer: Callable[[], float] = time.monotonic,
        max_bytes: float = math.inf,
        weigh: Callable[[V], int] = _nothing,
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.timer = timer
        self.weigh = weigh
        self.bytes = 0  # what the slots weigh in all
        self._slots: OrderedDict[str, tuple[float, int, V | None, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> V | None:
        """The live value for `key`, or None (absent, expired, or a floor). The hot path: kept minimal."""
        slots = self._slots
        with self._lock:
            slot = slots.get(key)
            if slot is None:
                return None
            if slot[0] > self.timer():
                slots.move_to_end(key)
                return slot[2]
            del slots[key]
            self.bytes -= slot[3]
            return None

    def set(self, key: str, value: V) -> bool:
        """Store `value` unless the slot already holds this version or a newer one (or a newer floor), or
        it alone weighs more than `max_bytes`."""
        if self.max_items <= 0:
            return False
        size = SLOT_BYTES + sys.getsizeof(key) + self.weigh(value)
        if size > self.max_bytes:
            return False
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and slot[0] > self.timer() and _refuses(slot, value.version):
                return False
            self._put(key, (self.timer() + self.ttl, value.version, value, size))
            return True

    def invalidate(self, key: str, version: int) -> bool:
        """Drop `key` unless it already holds `version` or newer; leave a floor at `version`.

        Returns False when the cached value was already as new as `version` (a stale message).
        """
        if self.max_items <= 0:
            return True
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and slot[0] > self.timer() and slot[1] >= version:
                if slot[2] is not None or slot[1] > version:
                    return False
            self._put(key, (self.timer() + self.ttl, version, None, SLOT_BYTES + sys.getsizeof(key)))
            return True

    def known_version(self, key: str) -> int:
        """The newest version this cache has seen for `key` (a value's or a floor's), or -1.

        Versions only grow, so whatever copy is older than this is stale, wherever it came from."""
        with self._lock:
            slot = self._slots.get(key)
            return slot[1] if slot is not None and slot[0] > self.timer() else -1

    def sample(self, n: int) -> list[tuple[str, V]]:
        """Up to `n` live values with their keys, chosen at random (the cache inspector's sample)."""
        with self._lock:
            now = self.timer()
            live = [(key, slot[2]) for key, slot in self._slots.items() if slot[2] is not None and slot[0] > now]
        return random.sample(live, min(n, len(live)))

    def delete(self, key: str) -> None:
        with self._lock:
            slot = self._slots.pop(key, None)
            if slot is not None:
                self.bytes -= slot[3]

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()
            self.bytes = 0

    def __len__(self) -> int:
        return len(self._slots)

    def _put(self, key: str, slot: tuple[float, int, V | None, int]) -> None:
        old = self._slots.get(key)
        self.bytes += slot[3] - (old[3] if old is not None else 0)
        self._slots[key] = slot
        self._slots.move_to_end(key)
        while len(self._slots) > self.max_items or self.bytes > self.max_bytes:
            self.bytes -= self._slots.popitem(last=False)[1][3]


def _refuses(slot: tuple[float, int, object, int], version: int) -> bool:
    """A value refuses the same or an older version; a floor refuses only older ones."""
    held = slot[1]
    return version <= held if slot[2] is not None else version < held
