"""The cache inspector (Uber's CacheFront name): a background sampler, one per fleet, that compares a steady
sample of cached entries (Redis, and this worker's L1) with the database, and exports how many it checked
and how many were stale: how an operator sees the staleness bound hold in production, not only in tests.

A cached entry older than the database may just be a change in flight (the follower applies it within
milliseconds), so it is only a suspect at first; it counts as stale if it is still older than that
database version BOUND seconds later.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cache.core.background import Background
from cache.core.guard import RedisDown
from cache.core.item_cache import ItemCache
from cache.core.lock import Lease
from cache.core.metrics import INSPECTOR_CHECKED, INSPECTOR_STALE
from db import DatabaseUnavailable, ItemStore

logger = logging.getLogger(__name__)

SAMPLE = 100  # entries per tier per look
INTERVAL = 1.0  # seconds between looks
BOUND = 1.0  # seconds a suspect has to catch up before it counts as stale (the promised bound)
LEASE_MS = 5000


@dataclass(frozen=True, slots=True)
class Cached:
    tier: str  # "redis" or "lru"
    key: str
    item_id: str
    version: int
    exists: bool


@dataclass(frozen=True, slots=True)
class Suspect:
    cached: Cached
    database_version: int
    seen_at: float


class Inspector(Background):
    thread_name = "cache-inspector"

    def __init__(self, cache: ItemCache, store: ItemStore, timer: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.cache, self.store, self.timer = cache, store, timer
        self.lease = Lease(cache.lock, f"{cache.settings.key_prefix}{{inspector}}:lease", LEASE_MS)
        self.suspects: list[Suspect] = []
        self._keys: Iterator[Any] = iter(())

    def stop(self, timeout: float = 5.0) -> None:
        super().stop(timeout)
        self.lease.release()

    def _run(self) -> None:
        while not self.stopped.wait(INTERVAL):
            try:
                if self.lease.hold():
                    self.inspect_once()
            except DatabaseUnavailable as exc:
                logger.info("cache inspector: database unavailable: %s", exc)
            except Exception:  # a bug in the inspector must never touch serving
                logger.exception("cache inspector failed")

    def inspect_once(self) -> None:
        """Re-check the suspects whose bound has passed, then sample anew."""
        now = self.timer()
        due = [s for s in self.suspects if now - s.seen_at >= BOUND]
        self.suspects = [s for s in self.suspects if now - s.seen_at < BOUND]
        for suspect in due:
            current = self._cached_now(suspect.cached)
            if current is not None and current.version < suspect.database_version and current.exists:
                INSPECTOR_STALE.labels(suspect.cached.tier).inc()
                logger.warning(
                    "cache inspector: %s holds %s at version %d, the database had %d over %.1fs ago",
                    suspect.cached.tier, suspect.cached.item_id, current.version, suspect.database_version, BOUND,
                )  # fmt: skip
        sample = self._sample_redis() + self._sample_l1()
        if not sample:
            return
        database = self.store.versions(sorted({c.item_id for c in sample}))
        for cached in sample:
            INSPECTOR_CHECKED.labels(cached.tier).inc()
            version = _newer_in_database(cached, database.get(cached.item_id))
            if version is not None:
                self.suspects.append(Suspect(cached, version, now))

    def _sample_redis(self) -> list[Cached]:
        keys = list(itertools.islice(self._keys, SAMPLE))
        if not keys:  # a full walk of the keyspace is done: start another
            pattern = f"{self.cache.settings.key_prefix}item:*"
            self._keys = self.cache.bulk.scan_iter(match=pattern, count=SAMPLE)
            keys = list(itertools.islice(self._keys, SAMPLE))
        return self._read_redis([k.decode() if isinstance(k, bytes) else k for k in keys])

    def _read_redis(self, keys: list[str]) -> list[Cached]:
        """What Redis holds for `keys`, in one round trip (floors and vanished keys left out)."""
        if not keys:
            return []
        pipe = self.cache.bulk.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, "v", "f")
            pipe.hstrlen(key, "b")  # '' is an id known to be absent; the body itself is not needed
        replies = self.cache.redis.guard("inspect", "-", pipe.execute)
        if isinstance(replies, RedisDown):
            return []
        found = []
        for key, (version, floor), body_length in zip(keys, replies[::2], replies[1::2], strict=True):
            if version is not None and floor is None:
                found.append(Cached("redis", key, self.cache.item_id(key), int(version), body_length > 0))
        return found

    def _sample_l1(self) -> list[Cached]:
        return [
            Cached("lru", key, self.cache.item_id(key), entry.version, entry.exists)
            for key, entry in self.cache.lru.sample(SAMPLE)
        ]

    def _cached_now(self, cached: Cached) -> Cached | None:
        if cached.tier == "redis":
            return next(iter(self._read_redis([cached.key])), None)
        entry = self.cache.lru.get(cached.key)
        return None if entry is None else Cached("lru", cached.key, cached.item_id, entry.version, entry.exists)


def _newer_in_database(cached: Cached, row: tuple[int, bool] | None) -> int | None:
    """The database's version when it is newer than what is cached (and says something else), else None."""
    if row is None:  # no row at all: only a cached live copy disagrees (an item gone for good)
        return cached.version + 1 if cached.exists else None
    version, deleted = row
    if version <= cached.version or (deleted and not cached.exists):
        return None  # as new, or both say "absent"
    return version
