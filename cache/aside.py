"""The cache-aside flow in one place: read through L1 -> Redis -> DB, write the DB first and then the cache.

Everything that decides what a request sees lives here; the views only translate to HTTP.

    read:   Redis doubted (it may lack writes made while it was away: cache/core/trust.py) -> DB, fill forward.
            L1 hit -> answer.  Redis hit -> (refresh early if XFetch says so) -> answer.
            miss -> Bloom filter says "never existed" -> 404.
            miss -> one loader per key in this process (single-flight) and in the fleet (Redis lock);
                    the others wait for its fill; the loader reads the DB and fills Redis and L1.
    write:  Bloom add -> DB (conditional: If-Match / If-None-Match checked in the write) -> Redis (only if
            newer, announced to every process) -> L1. A failed precondition touches no cache.
    delete: DB -> versioned tombstone in Redis and L1.
    time:   every wait draws on the request's Deadline: the database write (rolled back when it runs out),
            and a reader's wait for another's load (after which it loads itself).

Where to look next: the tiers and their settings (L1 size and TTL: CACHE_L1_MAX_ITEMS, CACHE_L1_TTL) are
built in cache/process.py; an invalidation from another process is applied to L1 in cache/coherence/apply.py;
a Redis failure is absorbed by cache/core/guard.py (reads fall through to the DB, writes still succeed, and
L1 is bypassed while Redis or the listener is down: cache/core/trust.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cache import CacheEntry, cache_delete, cache_fill, cache_get, cache_get_l1, cache_refresh, cache_set, state
from cache.core.guard import RedisDown
from cache.core.metrics import DB_LOADS, REFRESH_FAILURES, REQUESTS_BY_TIER, STAMPEDE_WAITS, WRITES_BY_OUTCOME
from cache.core.redis_tier import Found
from cache.core.stampede import SingleFlight, backoff_delays, should_refresh
from cache.core.lock import Acquired, FleetLock, HeldByOther
from cache.process import CacheProcess
from db import (
    CommitOutcomeUnknown,
    DatabaseUnavailable,
    Deadline,
    DeadlineExceeded,
    Deleted,
    ItemStore,
    NotFound,
    Precondition,
    PreconditionFailed,
    WriteResult,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Read:
    entry: CacheEntry  # entry.exists is False for an id that does not exist
    tier: str  # where the answer came from: lru, redis, db; for an absent id also negative (cached) or bloom


@dataclass(frozen=True, slots=True)
class Written:
    item_id: str
    entry: CacheEntry  # the committed version, as now cached
    created: bool


T = TypeVar("T")
_flights: SingleFlight[Read] = SingleFlight()
_db_reads: SingleFlight[CacheEntry] = SingleFlight()  # reads through to the database while Redis is doubted
_sleep = time.sleep  # replaced by tests: the demo's slow database (DEMO_DB_LOAD_DELAY) without the wait


def read_item(store: ItemStore, item_id: str, deadline: Deadline) -> Read:
    """The entry for `item_id` and where it came from (counted in cache_requests_total{tier}). Waits for
    another's load end at `deadline`. Raises DatabaseUnavailable only when the cache had nothing and the
    database is down."""
    read = _read(store, item_id, deadline)
    REQUESTS_BY_TIER[read.tier].inc()
    return read


def read_l1_hit(item_id: str) -> CacheEntry | None:
    """The item as `read_item` would answer it from L1 (counted as that read, tier lru), or None when L1
    cannot answer it (disabled, untrusted, absent, expired, a cached 404): then only read_item decides."""
    s = state()
    if not s.config.cache_enabled:
        return None
    entry = cache_get_l1(s.key(item_id))
    if entry is None or not entry.exists:
        return None
    REQUESTS_BY_TIER["lru"].inc()
    return entry


def _read(store: ItemStore, item_id: str, deadline: Deadline) -> Read:
    s = state()
    if not s.config.cache_enabled:
        return Read(_load(store, item_id), "db")
    key = s.key(item_id)
    if not s.trust.redis_current:
        return _read_through(s, store, item_id, deadline)
    entry, tier = cache_get(key)
    if isinstance(entry, CacheEntry) and tier is not None:
        if tier == "redis" and entry.exists and _refresh_due(s, entry):
            refreshed = _refresh_early(s, store, item_id, entry)
            if refreshed is not None:
                return Read(refreshed, "db")
        return _cached(entry, tier)
    if s.bloom is not None and not s.bloom.might_contain(item_id):
        return Read(CacheEntry.build(item_id, 0, None), "bloom")
    if not s.config.stampede_protection:
        entry = _load(store, item_id)
        cache_fill(key, entry)
        return Read(entry, "db")
    # Followers wait as long as the leader may: its own wait for another process, then one load.
    follower_timeout = deadline.cap(s.config.lock_wait + s.config.lock_ttl)
    read, waited = _flights.run(key, functools.partial(_load_once, s, store, item_id, deadline), follower_timeout)
    if waited:
        STAMPEDE_WAITS.inc()
    return read


def _read_through(s: CacheProcess, store: ItemStore, item_id: str, deadline: Deadline) -> Read:
    """Redis may hold copies older than what another process served: the database answers, and its fill
    (version-guarded) only moves Redis forward. With the database down too, Redis's copy beats a 503.

    Concurrent readers of a key share one database read (a doubt about Redis must not turn a hot key into a
    database stampede; the fleet lock lives in the Redis in doubt, so only this process's callers share),
    but not the fill: a fill waits on the Redis in doubt (its timeout, if frozen), and a reader that joined
    then would get a version read before a write it had already seen acknowledged."""
    key = s.key(item_id)
    if store.known_down() and (copy := _redis_copy(s, key, item_id)):  # no wait for a connection that won't come
        return copy
    try:
        timeout = deadline.cap(s.config.lock_wait + s.config.lock_ttl)
        entry, waited = _db_reads.run(key, functools.partial(_load, store, item_id), timeout)
    except DatabaseUnavailable:
        if copy := _redis_copy(s, key, item_id):
            return copy
        raise
    if waited:
        STAMPEDE_WAITS.inc()
    else:
        cache_fill(key, entry)  # the reader that read fills
    return Read(entry, "db")


def _redis_copy(s: CacheProcess, key: str, item_id: str) -> Read | None:
    cached = s.redis.get(key, item_id)
    return _cached(cached, "redis") if isinstance(cached, CacheEntry) else None


def _cached(entry: CacheEntry, tier: str) -> Read:
    return Read(entry, tier if entry.exists else "negative")


def _load_once(s: CacheProcess, store: ItemStore, item_id: str, deadline: Deadline) -> Read:
    """Load under the fleet lock; if another process holds it, wait for its fill instead."""
    key = s.key(item_id)
    found = _look_or_lock(s, key, item_id)  # filled while we came here? Then no load at all
    if isinstance(found, CacheEntry):
        return _cached(found, "redis")
    if isinstance(found, HeldByOther):
        STAMPEDE_WAITS.inc()
        waited = _wait_for_fill(s, key, item_id, deadline)
        if isinstance(waited, CacheEntry):
            return _cached(waited, "redis")
        found = waited
    try:
        entry = _load(store, item_id)
    except BaseException:
        if found is not None:
            s.lock.release(FleetLock.for_item(key), found.token)
        raise
    # A fill, not a write: if Redis misses it, the next read refills. The lock goes in the same step.
    cache_fill(key, entry, release=found)
    return Read(entry, "db")


def _look_or_lock(s: CacheProcess, key: str, item_id: str) -> CacheEntry | Acquired | HeldByOther | None:
    """One step in Redis: the entry if cached by now (as cache_get takes it: into L1), else the load lock (or
    who holds it). One step, because a fill releases the lock as it lands: a look and then a lock would
    take the lock just freed and load the item again. None: Redis failed, is doubted, or holds a copy older
    than this process has seen; load without the lock (as a read through a doubted Redis does)."""
    if not s.trust.redis_current:
        return None
    generation = s.trust.generation
    found = s.redis.read_or_lock(key, item_id, FleetLock.for_item(key), s.lock.new_token(), s.lock.ttl_ms)
    if isinstance(found, Found):
        return found.entry if s.take_redis_copy(key, found.entry, generation) else None
    return None if isinstance(found, RedisDown) else found


def _wait_for_fill(s: CacheProcess, key: str, item_id: str, deadline: Deadline) -> CacheEntry | Acquired | None:
    """Wait (up to CACHE_LOCK_WAIT, and no later than `deadline`) for another process's fill: the entry when
    it lands, the lock if its holder vanished; None (the caller loads without the lock) when the wait ran
    out, or a look found Redis failed, doubted or holding a copy older than this process has seen."""
    for delay in backoff_delays(deadline.cap(s.config.lock_wait)):
        s.fills.wait(key, delay)
        found = _look_or_lock(s, key, item_id)
        if not isinstance(found, HeldByOther):
            return found
    return None


def _load(store: ItemStore, item_id: str) -> CacheEntry:
    started = time.perf_counter()
    if state().config.demo_db_load_delay:
        _sleep(state().config.demo_db_load_delay)  # DEMO_DB_LOAD_DELAY: a slow database, shown by the demo
    item = store.get(item_id)
    load_ms = max(1, int((time.perf_counter() - started) * 1000))
    DB_LOADS.inc()
    # Version 0 for "absent": any real write (version >= 1) replaces it, whatever the order.
    if item is None:
        return CacheEntry.build(item_id, 0, None, load_ms)
    return CacheEntry.build(item_id, item.version, item.to_json(), load_ms)


def _refresh_due(s: CacheProcess, entry: CacheEntry) -> bool:
    return should_refresh(entry.load_ms, entry.remaining_ms, s.config.xfetch_beta)


def _refresh_early(s: CacheProcess, store: ItemStore, item_id: str, cached: CacheEntry) -> CacheEntry | None:
    """Reload a hot key before it expires, in one process (the lock holder); a key refreshed early was
    being read near its expiry, so it earns twice its TTL, up to CACHE_LONG_TTL. None: serve `cached`."""
    key = s.key(item_id)
    held = s.lock.acquire(FleetLock.for_item(key))
    if not isinstance(held, Acquired):
        return None  # another process is refreshing it (or Redis failed): the cached value is still good
    try:
        # The lock is free again once another process's refresh has landed: if Redis's copy now outlives the
        # one we saw, another process refreshed it (or wrote a newer version) since we looked.
        current = s.redis.get(key, item_id)
        if isinstance(current, CacheEntry) and current.remaining_ms > cached.remaining_ms:
            return None
        entry = _load(store, item_id)
        ttl = min(max(2 * cached.ttl_ms / 1000, s.config.cache_ttl), s.config.cache_long_ttl)
        cache_refresh(key, entry, ttl if entry.exists else None)
        return entry
    except DatabaseUnavailable as exc:
        REFRESH_FAILURES.inc()  # the cached copy is still valid: a failed refresh must not fail the read
        logger.warning("early refresh of %s failed, serving the cached copy: %s", item_id, exc)
        return None
    finally:
        s.lock.release(FleetLock.for_item(key), held.token)


def write_item(
    store: ItemStore, item_id: str, fields: dict[str, Any], expect: Precondition, deadline: Deadline
) -> Written | PreconditionFailed:
    """Upsert in the database (the source of truth) if `expect` holds, then refresh both tiers.
    A failed precondition, a database failure or the deadline running out (DeadlineExceeded: rolled back)
    leaves the cache untouched."""
    return write_through(item_id, lambda: store.upsert_if(item_id, fields, expect, deadline))


def write_through(item_id: str, write: Callable[[], WriteResult | PreconditionFailed]) -> Written | PreconditionFailed:
    """Run a database `write` of `item_id` (counted in cache_write_outcomes_total), then cache what it committed.
    The Bloom filter learns the id first, so it never says "absent" for a committed item."""
    s = state()
    if s.bloom is not None and not s.bloom.add(item_id):
        s.bloom_missed = True
    result = _counted(write)
    if isinstance(result, PreconditionFailed):
        return result
    entry = CacheEntry.build(result.item.id, result.item.version, result.item.to_json())
    if s.config.cache_enabled:
        cache_set(s.key(result.item.id), entry)
    return Written(result.item.id, entry, result.created)


def remove_item(
    store: ItemStore, item_id: str, expect: Precondition, deadline: Deadline
) -> Deleted | NotFound | PreconditionFailed:
    """Delete in the database if `expect` holds, then leave a versioned tombstone in both tiers."""
    result = _counted(lambda: store.delete_if(item_id, expect, deadline))
    if isinstance(result, Deleted) and state().config.cache_enabled:
        cache_delete(state().key(item_id), result.version)
    return result


def _counted(write: Callable[[], T]) -> T:
    """Run a database write, counting its outcome in cache_write_outcomes_total."""
    try:
        result = write()
    except DeadlineExceeded:
        WRITES_BY_OUTCOME["deadline_exceeded"].inc()
        raise
    except CommitOutcomeUnknown:
        WRITES_BY_OUTCOME["outcome_unknown"].inc()  # the change follower brings the cache to what committed
        raise
    WRITES_BY_OUTCOME["precondition_failed" if isinstance(result, PreconditionFailed) else "written"].inc()
    return result
