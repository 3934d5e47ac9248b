"""Cache writes to replay: those Redis did not take (it was down), and, after an outage, the ones it did
take just before: a failover to a replica (asynchronous replication) can lose the last writes a primary
acknowledged, and nobody would know.

Replaying is always safe: the write script never replaces a newer version.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from cache.entry import CacheEntry
from cache.metrics import PENDING_WRITES
from cache.redis_tier import SetOutcome

RECENT_SECONDS = 10.0  # how far back an outage puts acknowledged writes in doubt


class PendingWrites:
    """Newest entry per key, bounded; replayed (oldest first) when Redis answers again."""

    def __init__(self, max_keys: int = 10000, timer: Callable[[], float] = time.monotonic) -> None:
        self.max_keys, self.timer = max_keys, timer
        self._entries: OrderedDict[str, tuple[CacheEntry, int]] = OrderedDict()
        self._recent: deque[tuple[float, str, CacheEntry, int]] = deque(maxlen=max_keys)
        self._lock = threading.Lock()
        self.dropped = 0
        self.outage = False  # a write failed since the last replay: recent writes are in doubt too
        self.bloom_missed = False  # a Bloom filter add failed: the filter may lack an id

    def written(self, key: str, entry: CacheEntry, ttl_ms: int) -> None:
        """Redis took this write; keep it a while in case Redis loses it in a failover."""
        self._recent.append((self.timer(), key, entry, ttl_ms))

    def remember(self, key: str, entry: CacheEntry, ttl_ms: int) -> None:
        """Redis did not take this write: replay it later."""
        with self._lock:
            self.outage = True
            self._add(key, entry, ttl_ms)

    def _add(self, key: str, entry: CacheEntry, ttl_ms: int) -> None:
        held = self._entries.get(key)
        if held is None or held[0].version < entry.version:
            self._entries[key] = (entry, ttl_ms)
        while len(self._entries) > self.max_keys:  # beyond this, CACHE_TTL bounds the staleness
            self._entries.popitem(last=False)
            self.dropped += 1
        PENDING_WRITES.set(len(self._entries))

    def replay(self, write: Callable[[str, CacheEntry, int], SetOutcome]) -> int:
        """Write each pending entry with `write`; stop at the first failure. Returns how many were written.
        After an outage, the writes Redis acknowledged in the last RECENT_SECONDS are replayed too."""
        with self._lock:
            if self.outage:
                self.outage = False
                horizon = self.timer() - RECENT_SECONDS
                for written_at, key, entry, ttl_ms in list(self._recent):
                    if written_at >= horizon:
                        self._add(key, entry, ttl_ms)
        done = 0
        while True:
            with self._lock:
                PENDING_WRITES.set(len(self._entries))
                if not self._entries:
                    return done
                key, (entry, ttl_ms) = next(iter(self._entries.items()))
            if write(key, entry, ttl_ms) is SetOutcome.FAILED:
                return done
            with self._lock:
                if self._entries.get(key, (None,))[0] is entry:
                    del self._entries[key]
            done += 1

    def __len__(self) -> int:
        return len(self._entries)
