"""The cache-aside flow in one object: read through L1 -> Redis -> database, write the database first and
then the cache. Everything that decides what a request sees lives here; the views only translate to HTTP.

    read:   Redis doubted (cache/core/trust.py) -> database, fill forward.
            L1 hit -> answer.  Redis hit -> (refresh early if XFetch says so) -> answer.
            miss -> Bloom filter says "never existed" -> 404.
            miss -> one loader per key in this process (single-flight) and in the fleet (the load lock in
                    the same Redis step as the look); the others wait for its fill; it loads and fills.
    write:  Bloom add (if it may create the id) -> database (If-Match / If-None-Match checked in the write)
            -> Redis (only if newer, announced to every process) -> L1. A failed precondition touches no cache.
    delete: database -> versioned tombstone in Redis and L1.
    time:   every wait draws on the request's Deadline.
One ItemCache per process, built by the composition root (cache/service.py) and handed to whoever needs it.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from redis import Redis

from cache.core.bloom import BloomFilter
from cache.core.entry import MISS, CacheEntry, _Miss, jittered
from cache.core.guard import CircuitBreaker, RedisDown
from cache.core.lock import Acquired, FleetLock, HeldByOther
from cache.core.lru import LRUCache
from cache.core.metrics import (
    DB_LOADS,
    L1_ENTRIES,
    L1_FLUSHES,
    REFRESH_FAILURES,
    REQUESTS_BY_TIER,
    STAMPEDE_WAITS,
    counted_write,
)
from cache.core.redis_tier import Found, RedisTier, SetOutcome
from cache.core.stampede import FillNotifier, SingleFlight, backoff_delays
from cache.core.topology import Topology
from cache.core.trust import L1Trust
from db import (
    DatabaseUnavailable,
    Deadline,
    Deleted,
    IfExists,
    IfVersionIn,
    ItemStore,
    NotFound,
    Precondition,
    PreconditionFailed,
    Unconditional,
    WriteResult,
)

logger = logging.getLogger(__name__)
R = TypeVar("R")
ITEM_NAMESPACE = "item:"


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The settings the flow reads (each named after its variable in docs/CONFIGURATION.md)."""

    enabled: bool  # CACHE_ENABLED
    key_prefix: str  # CACHE_KEY_PREFIX
    ttl: float  # CACHE_TTL
    negative_ttl: float  # CACHE_NEGATIVE_TTL
    long_ttl: float  # CACHE_LONG_TTL
    ttl_jitter: float  # CACHE_TTL_JITTER
    xfetch_beta: float  # CACHE_XFETCH_BETA
    stampede_protection: bool  # CACHE_STAMPEDE_PROTECTION
    lock_wait: float  # CACHE_LOCK_WAIT
    lock_ttl: float  # CACHE_LOCK_TTL


@dataclass(frozen=True, slots=True)
class Read:
    entry: CacheEntry  # entry.exists is False for an id that does not exist
    tier: str  # where the answer came from: lru, redis, db; for an absent id also negative (cached) or bloom


@dataclass(frozen=True, slots=True)
class Written:
    item_id: str
    entry: CacheEntry  # the committed version, as now cached
    created: bool


@dataclass
class ItemCache:
    settings: CacheSettings
    lru: LRUCache[CacheEntry]  # L1
    redis: RedisTier  # L2
    lock: FleetLock
    bloom: BloomFilter | None
    breaker: CircuitBreaker
    trust: L1Trust
    store: ItemStore | None  # the database: loads, and (for the background services) its change log
    bulk: Redis  # the same Redis for batches (warming, the change log), with a longer timeout
    topology: Topology  # a cluster's slots, asked for again after a failover
    bloom_missed: bool = False  # a Bloom filter add failed: the filter may lack an id until rebuilt
    fills: FillNotifier = field(default_factory=FillNotifier)
    _flights: SingleFlight[Read] = field(default_factory=SingleFlight)
    _db_reads: SingleFlight[CacheEntry] = field(default_factory=SingleFlight)  # reads past a doubted Redis

    @property
    def origin(self) -> str:
        return self.redis.origin

    def set_origin(self, origin: str) -> None:
        """A new process (after a fork) announces its writes under a name of its own."""
        self.redis.origin = self.lock.origin = origin

    def key(self, item_id: str) -> str:
        return f"{self.settings.key_prefix}{ITEM_NAMESPACE}{item_id}"

    def item_id(self, key: str) -> str:
        return key[len(self.settings.key_prefix) + len(ITEM_NAMESPACE) :]

    def ttl_ms(self, entry: CacheEntry, ttl: float | None = None) -> int:
        """`ttl` (default CACHE_TTL for an item, CACHE_NEGATIVE_TTL for an absent id), jittered, in ms."""
        if ttl is None:
            ttl = self.settings.ttl if entry.exists else self.settings.negative_ttl
        return jittered(ttl, self.settings.ttl_jitter)

    def get_l1(self, key: str) -> CacheEntry | None:
        """L1 alone: its live entry for `key` while L1 is trusted, else None."""
        return self.lru.get(key) if self.trust.usable else None

    def get(self, key: str) -> tuple[CacheEntry | _Miss, str | None]:
        """L1, then Redis (copied into L1): (entry, "lru" | "redis") or (MISS, None); MISS while Redis is doubted."""
        entry = self.get_l1(key)
        if entry is not None:
            return entry, "lru"
        if not self.trust.redis_current:
            return MISS, None
        generation = self.trust.generation
        found = self.redis.get(key, self.item_id(key))
        if not isinstance(found, CacheEntry) or not self.take_redis_copy(key, found, generation):
            return MISS, None
        return found, "redis"

    def set(self, key: str, entry: CacheEntry, ttl: float | None = None) -> SetOutcome:
        """A change the database committed: Redis (unless it holds a newer version; announced to every
        process), then L1. Tried past an open breaker: other processes may trust Redis again already, and a
        change skipped here would reach it only at the change follower's next pass."""
        generation, ttl_ms = self.trust.generation, self.ttl_ms(entry, ttl)
        outcome = self.redis.set_committed(key, entry, ttl_ms)
        # Our own announcement never reaches our L1, and an untrusted L1 takes no entry: drop any older copy.
        self.lru.invalidate(key, entry.version)
        return self._then_l1(key, entry, generation, outcome)

    def fill(self, key: str, entry: CacheEntry, release: Acquired | None = None) -> SetOutcome:
        """A read's fill: as `set`, but skipped while the breaker is open, and `release` frees the load lock."""
        generation = self.trust.generation
        outcome = self.redis.set_if_newer(key, entry, self.ttl_ms(entry), release)
        return self._then_l1(key, entry, generation, outcome)

    def refresh(self, key: str, entry: CacheEntry, ttl: float | None) -> SetOutcome:
        """As `fill`, and a copy of this very version already in Redis takes `ttl` (an early refresh)."""
        generation = self.trust.generation
        outcome = self.redis.refresh(key, entry, self.ttl_ms(entry, ttl))
        return self._then_l1(key, entry, generation, outcome)

    def delete(self, key: str, version: int | None = None) -> None:
        """Remove `key` from every tier of every process; with `version` (a committed delete), leave a
        tombstone at that version for CACHE_NEGATIVE_TTL instead, so no slower reader puts an older one back."""
        if version is not None:
            self.set(key, CacheEntry.build(self.item_id(key), version, None))
            return
        self.redis.delete(key)  # announced: the other processes drop their copy whatever its version
        self.lru.delete(key)

    def _then_l1(self, key: str, entry: CacheEntry, generation: int, outcome: SetOutcome) -> SetOutcome:
        """L1 follows Redis: it takes the entry unless Redis holds a newer version."""
        if outcome is not SetOutcome.NEWER:
            self.fill_l1(key, entry, generation)
        return outcome

    def fill_l1(self, key: str, entry: CacheEntry, generation: int) -> None:
        """Copy into L1, unless L1 is not trusted or was flushed since the caller's read began."""
        if self.trust.usable and self.trust.generation == generation and self.lru.set(key, entry):
            L1_ENTRIES.set(len(self.lru))

    def take_redis_copy(self, key: str, entry: CacheEntry, generation: int) -> bool:
        """Whether a copy read from Redis may be served (not if older than a version this process has seen:
        Redis lost or missed a write); one it may serve is copied into L1."""
        if entry.version < self.lru.known_version(key):
            return False
        self.fill_l1(key, entry, generation)
        return True

    def flush_l1(self, reason: str) -> None:
        """Empty L1 (counted in cache_l1_flushes_total{reason})."""
        self.trust.new_generation()
        self.lru.clear()
        L1_ENTRIES.set(0)
        L1_FLUSHES.labels(reason).inc()

    def read_l1_hit(self, item_id: str) -> CacheEntry | None:
        """The item as `read_item` would answer it from L1 (counted as that read), or None: ask read_item."""
        if not self.settings.enabled:
            return None
        entry = self.get_l1(self.key(item_id))
        if entry is None or not entry.exists:
            return None
        REQUESTS_BY_TIER["lru"].inc()
        return entry

    def read_item(self, item_id: str, deadline: Deadline) -> Read:
        """The entry for `item_id` and where it came from (cache_requests_total{tier}). Waits for another's
        load end at `deadline`. Raises DatabaseUnavailable only when the cache had nothing and the database
        is down."""
        read = self._read(item_id, deadline)
        REQUESTS_BY_TIER[read.tier].inc()
        return read

    def _read(self, item_id: str, deadline: Deadline) -> Read:
        settings = self.settings
        if not settings.enabled:
            return Read(self._load(item_id), "db")
        key = self.key(item_id)
        if not self.trust.redis_current:
            return self._read_through(key, item_id, deadline)
        entry, tier = self.get(key)
        if isinstance(entry, CacheEntry) and tier is not None:
            if tier == "redis" and entry.exists and entry.refresh_due(settings.xfetch_beta):
                refreshed = self._refresh_early(key, item_id, entry)
                if refreshed is not None:
                    return Read(refreshed, "db")
            return _cached(entry, tier)
        if self.bloom is not None and not self.bloom.might_contain(item_id):
            return Read(CacheEntry.build(item_id, 0, None), "bloom")
        if not settings.stampede_protection:
            entry = self._load(item_id)
            self.fill(key, entry)
            return Read(entry, "db")
        # Followers wait as long as the leader may: its own wait for another process, then one load.
        timeout = deadline.cap(settings.lock_wait + settings.lock_ttl)
        read, waited = self._flights.run(key, functools.partial(self._load_once, key, item_id, deadline), timeout)
        if waited:
            STAMPEDE_WAITS.inc()
        return read

    def _read_through(self, key: str, item_id: str, deadline: Deadline) -> Read:
        """Redis may hold copies older than what another process served: the database answers, and its fill
        only moves Redis forward; with the database down too, Redis's copy beats a 503. Concurrent readers
        share one database read, but not the fill: a fill waits on the Redis in doubt."""
        store = self._store()
        if store.known_down() and (copy := self._redis_copy(key, item_id)):  # no wait for a connection
            return copy
        try:
            timeout = deadline.cap(self.settings.lock_wait + self.settings.lock_ttl)
            entry, waited = self._db_reads.run(key, functools.partial(self._load, item_id), timeout)
        except DatabaseUnavailable:
            if copy := self._redis_copy(key, item_id):
                return copy
            raise
        if waited:
            STAMPEDE_WAITS.inc()
        else:
            self.fill(key, entry)  # the reader that read fills
        return Read(entry, "db")

    def _redis_copy(self, key: str, item_id: str) -> Read | None:
        cached = self.redis.get(key, item_id)
        return _cached(cached, "redis") if isinstance(cached, CacheEntry) else None

    def _load_once(self, key: str, item_id: str, deadline: Deadline) -> Read:
        """Load under the fleet lock; if another process holds it, wait for its fill instead."""
        found = self._look_or_lock(key, item_id)  # filled while we came here? Then no load at all
        if isinstance(found, CacheEntry):
            return _cached(found, "redis")
        if isinstance(found, HeldByOther):
            STAMPEDE_WAITS.inc()
            waited = self._wait_for_fill(key, item_id, deadline)
            if isinstance(waited, CacheEntry):
                return _cached(waited, "redis")
            found = waited
        try:
            entry = self._load(item_id)
        except BaseException:
            if found is not None:
                self.lock.release(FleetLock.for_item(key), found.token)
            raise
        self.fill(key, entry, release=found)  # a fill: if Redis misses it, the next read refills
        return Read(entry, "db")

    def _look_or_lock(self, key: str, item_id: str) -> CacheEntry | Acquired | HeldByOther | None:
        """One Redis step: the entry if cached by now (into L1, as `get`), else the load lock (or who holds
        it). One step, because a fill releases the lock as it lands. None: Redis failed, is doubted, or
        holds a copy older than this process has seen; load without the lock."""
        if not self.trust.redis_current:
            return None
        generation = self.trust.generation
        found = self.redis.read_or_lock(key, item_id, FleetLock.for_item(key), self.lock.new_token(), self.lock.ttl_ms)
        if isinstance(found, Found):
            return found.entry if self.take_redis_copy(key, found.entry, generation) else None
        return None if isinstance(found, RedisDown) else found

    def _wait_for_fill(self, key: str, item_id: str, deadline: Deadline) -> CacheEntry | Acquired | None:
        """Wait (CACHE_LOCK_WAIT at most, never past `deadline`) for another process's fill: the entry, the
        lock if its holder vanished, or None (load without the lock) when the wait ran out or Redis failed."""
        for delay in backoff_delays(deadline.cap(self.settings.lock_wait)):
            self.fills.wait(key, delay)
            found = self._look_or_lock(key, item_id)
            if not isinstance(found, HeldByOther):
                return found
        return None

    def _load(self, item_id: str) -> CacheEntry:
        started = time.perf_counter()
        item = self._store().get(item_id)
        load_ms = max(1, int((time.perf_counter() - started) * 1000))
        DB_LOADS.inc()
        if item is None:  # version 0 for "absent": any real write (version >= 1) replaces it
            return CacheEntry.build(item_id, 0, None, load_ms)
        return CacheEntry.build(item_id, item.version, item.to_json(), load_ms)

    def _refresh_early(self, key: str, item_id: str, cached: CacheEntry) -> CacheEntry | None:
        """Reload a hot key before it expires, in one process (the lock holder); it earns twice its TTL, up
        to CACHE_LONG_TTL. None: serve `cached`."""
        held = self.lock.acquire(FleetLock.for_item(key))
        if not isinstance(held, Acquired):
            return None  # another process is refreshing it (or Redis failed): the cached value is still good
        try:
            # A copy that now outlives the one we saw was refreshed (or written) by another since we looked.
            current = self.redis.get(key, item_id)
            if isinstance(current, CacheEntry) and current.remaining_ms > cached.remaining_ms:
                return None
            entry = self._load(item_id)
            ttl = min(max(2 * cached.ttl_ms / 1000, self.settings.ttl), self.settings.long_ttl)
            self.refresh(key, entry, ttl if entry.exists else None)
            return entry
        except DatabaseUnavailable as exc:
            REFRESH_FAILURES.inc()  # the cached copy is still valid: a failed refresh must not fail the read
            logger.warning("early refresh of %s failed, serving the cached copy: %s", item_id, exc)
            return None
        finally:
            self.lock.release(FleetLock.for_item(key), held.token)

    def write_item(
        self, item_id: str, fields: dict[str, Any], expect: Precondition, deadline: Deadline
    ) -> Written | PreconditionFailed:
        """Upsert in the database if `expect` holds, then refresh both tiers. A failed precondition, a
        database failure or the deadline running out (DeadlineExceeded: rolled back) leave the cache as it was."""
        store = self._store()
        if isinstance(expect, Unconditional) and self.lru.known_version(self.key(item_id)) > 0:
            # Seen written here: most likely an update of the live row, which needs no Bloom filter add.
            update = lambda: _live_only(store.upsert_if(item_id, fields, IfExists(), deadline))  # noqa: E731
            if (updated := self.write_through(item_id, update, new_id=False)) is not None:
                return updated  # else no live row: written in full below
        new_id = not isinstance(expect, IfExists | IfVersionIn)  # If-Match: only a live row, never a new id
        return self.write_through(item_id, lambda: store.upsert_if(item_id, fields, expect, deadline), new_id)

    def write_through(self, item_id: str, write: Callable[[], WriteResult | R], new_id: bool = True) -> Written | R:
        """Run a database `write` of `item_id` (cache_write_outcomes_total), then cache what it committed
        (any other outcome is returned as it is). A write that may create the id (`new_id`) adds it to the
        Bloom filter first: never "absent" for a committed id. An update of a live row adds nothing."""
        if new_id and self.bloom is not None and not self.bloom.add(item_id):
            self.bloom_missed = True
        result = counted_write(write)
        if not isinstance(result, WriteResult):
            return result
        entry = CacheEntry.build(result.item.id, result.item.version, result.item.to_json())
        if self.settings.enabled:
            self.set(self.key(result.item.id), entry)
        return Written(result.item.id, entry, result.created)

    def remove_item(
        self, item_id: str, expect: Precondition, deadline: Deadline
    ) -> Deleted | NotFound | PreconditionFailed:
        """Delete in the database if `expect` holds, then leave a versioned tombstone in both tiers."""
        store = self._store()
        result = counted_write(lambda: store.delete_if(item_id, expect, deadline))
        if isinstance(result, Deleted) and self.settings.enabled:
            self.delete(self.key(item_id), result.version)
        return result

    def _store(self) -> ItemStore:
        assert self.store is not None, "this cache has no database: build it with a store"
        return self.store


def _cached(entry: CacheEntry, tier: str) -> Read:
    return Read(entry, tier if entry.exists else "negative")


def _live_only(result: WriteResult | PreconditionFailed) -> WriteResult | None:
    return result if isinstance(result, WriteResult) else None
