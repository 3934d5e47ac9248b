"""The cache-aside flow in one place: read through L1 -> Redis -> DB, write the DB first and then the cache.

Everything that decides what a request sees lives here; the views only translate to HTTP.

    read:   L1 hit -> answer.  Redis hit -> (refresh early if XFetch says so) -> answer.
            miss -> Bloom filter says "never existed" -> 404.
            miss -> one loader per key in this process (single-flight) and in the fleet (Redis lock);
                    the others wait for its fill; the loader reads the DB and fills Redis and L1.
    write:  Bloom add -> DB -> Redis (only if newer, announced to every process) -> L1.
    delete: DB -> versioned tombstone in Redis and L1.
"""

from __future__ import annotations

import time
from typing import Any

from cache import CacheEntry, cache_delete, cache_get, cache_key, cache_set, state
from cache.metrics import DB_LOADS, REQUESTS_BY_TIER, STAMPEDE_WAITS
from cache.stampede import SingleFlight, backoff_delays, should_refresh
from db import ItemStore, WriteResult

_flights: SingleFlight[tuple[CacheEntry, str]] = SingleFlight()


def read_item(store: ItemStore, item_id: str) -> tuple[CacheEntry, str]:
    """The entry for `item_id` and the tier that answered ("lru", "redis" or "db").

    `entry.exists` is False for an id that does not exist: that answer is cached too (negative entry).
    Raises DatabaseUnavailable only when the cache had nothing and the database is down.
    """
    if not state().config.cache_enabled:
        REQUESTS_BY_TIER["db"].inc()
        return _load(store, item_id), "db"
    key = cache_key(item_id)
    entry, tier = cache_get(key)
    if isinstance(entry, CacheEntry) and tier is not None:
        if tier == "redis" and entry.exists and _refresh_due(entry):
            refreshed = _refresh_early(store, item_id, key, entry)
            if refreshed is not None:
                return refreshed, "db"
        REQUESTS_BY_TIER[tier if entry.exists else "negative"].inc()
        return entry, tier
    bloom = state().bloom
    if bloom is not None and not bloom.might_contain(item_id):
        REQUESTS_BY_TIER["bloom"].inc()
        return CacheEntry.build(item_id, 0, None), "redis"
    config = state().config
    if not config.stampede_protection:
        entry = _load(store, item_id)
        cache_set(key, entry, replay=False)
        REQUESTS_BY_TIER["db"].inc()
        return entry, "db"
    # Followers wait as long as the leader may: its own wait for another process, then one load.
    follower_timeout = config.lock_wait + config.lock_ttl
    (entry, tier), waited = _flights.run(key, lambda: _load_once(store, item_id, key), follower_timeout)
    if waited:
        STAMPEDE_WAITS.inc()
    REQUESTS_BY_TIER[tier if entry.exists or tier == "db" else "negative"].inc()
    return entry, tier


def _load_once(store: ItemStore, item_id: str, key: str) -> tuple[CacheEntry, str]:
    """Load under the fleet lock; if another process holds it, wait for its fill instead."""
    s = state()
    lock_key, token = s.lock.key(key), s.lock.new_token()
    # One step: filled while we came here? Then no load at all. Else take the lock (or learn who has it).
    found = s.redis.read_or_lock(key, item_id, lock_key, token, s.lock.ttl_ms)
    if isinstance(found, CacheEntry) and found.version >= s.lru.known_version(key):
        return found, "redis"
    holder: str | None = token if found is True else None  # None: Redis failed, load without a lock
    if found is False:
        STAMPEDE_WAITS.inc()
        waited = _wait_for_fill(key)
        if isinstance(waited, CacheEntry):
            return waited, "redis"
        holder = waited
    try:
        entry = _load(store, item_id)
    except BaseException:
        if holder is not None:
            s.lock.release(key, holder)
        raise
    # A fill, not a write: if Redis misses it, the next read refills. The lock goes in the same step.
    cache_set(key, entry, replay=False, release=(lock_key, holder) if holder else None)
    return entry, "db"


def _wait_for_fill(key: str) -> CacheEntry | str | None:
    """Wait (bounded by CACHE_LOCK_WAIT) for another process's fill: the entry when it lands, a lock token
    if its holder vanished and we got the lock, None when the wait ran out (the caller loads anyway)."""
    s = state()
    for delay in backoff_delays(s.config.lock_wait):
        s.fills.wait(key, delay)
        entry, _ = cache_get(key)
        if isinstance(entry, CacheEntry):
            return entry
        token = s.lock.acquire(key)
        if token is not None:
            return token
    return None


def _load(store: ItemStore, item_id: str) -> CacheEntry:
    started = time.perf_counter()
    item = store.get(item_id)
    load_ms = max(1, int((time.perf_counter() - started) * 1000))
    DB_LOADS.inc()
    # Version 0 for "absent": any real write (version >= 1) replaces it, whatever the order.
    if item is None:
        return CacheEntry.build(item_id, 0, None, load_ms)
    return CacheEntry.build(item_id, item.version, item.to_json(), load_ms)


def _refresh_due(entry: CacheEntry) -> bool:
    return should_refresh(entry.load_ms, entry.remaining_ms, state().config.xfetch_beta)


def _refresh_early(store: ItemStore, item_id: str, key: str, cached: CacheEntry) -> CacheEntry | None:
    """Reload a hot key before it expires, in one process (the lock holder); a key refreshed early was
    being read near its expiry, so it earns twice its TTL, up to CACHE_LONG_TTL."""
    s = state()
    token = s.lock.acquire(key)
    if token is None:
        return None  # someone else is refreshing it; the cached value is still good
    try:
        entry = _load(store, item_id)
        ttl = min(max(2 * cached.ttl_ms / 1000, s.config.cache_ttl), s.config.cache_long_ttl)
        cache_set(key, entry, ttl if entry.exists else None, replay=False, extend=True)
        REQUESTS_BY_TIER["db"].inc()
        return entry
    finally:
        s.lock.release(key, token)


def write_item(store: ItemStore, item_id: str, fields: dict[str, Any]) -> tuple[WriteResult, CacheEntry]:
    """Upsert in the database (the source of truth), then refresh both tiers with the new version.

    The Bloom filter learns the id first, so it never says "absent" for a committed item. If the database
    write fails it raises and the cache is not touched.
    """
    s = state()
    if s.bloom is not None and not s.bloom.add(item_id):
        s.pending.bloom_missed = True
    result = store.upsert(item_id, fields)
    entry = CacheEntry.build(item_id, result.item.version, result.item.to_json())
    if s.config.cache_enabled:
        cache_set(cache_key(item_id), entry)
    return result, entry


def remove_item(store: ItemStore, item_id: str) -> bool:
    """Delete in the database, then leave a versioned tombstone in both tiers. False: no such item."""
    version = store.delete(item_id)
    if version is None:
        return False
    if state().config.cache_enabled:
        cache_delete(cache_key(item_id), version)
    return True
