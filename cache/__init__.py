"""The cache API: module-level functions over an in-process LRU (L1) and Redis (L2).

The seed's cacheGet / cacheSet / cacheDelete are `cache_get`, `cache_set`, `cache_delete` here. State is
per process and built by `init_cache` (cache/process.py); tests call `reset()`. Coherence between
processes (cache/invalidation.py) runs when `enable_listener()` was called first (gunicorn's post_fork,
`python app.py`) or `init_cache(..., listen=True)`.
"""

from __future__ import annotations

from cache import process
from cache.entry import MISS, CacheEntry, _Miss
from cache.metrics import L1_ENTRIES
from cache.process import (
    ITEM_NAMESPACE,
    _State,
    enable_listener,
    flush_l1,
    init_cache,
    reset,
    set_bloom_rebuilder,
    set_outbox,
    state,
    write_redis,
)
from cache.redis_tier import NEWER
from cache.stampede import jittered


def cache_key(item_id: str) -> str:
    """`"item:" + id`, under CACHE_KEY_PREFIX."""
    return f"{state().config.key_prefix}{ITEM_NAMESPACE}{item_id}"


def cache_get(key: str) -> tuple[CacheEntry | _Miss, str | None]:
    """L1, then Redis (promoting a hit into L1). Returns (entry, "lru" | "redis") or (MISS, None)."""
    s = process._state or state()  # the attribute, not the call: this is the L1-hit path
    if s.l1_usable:
        entry = s.lru.get(key)
        if entry is not None:
            return entry, "lru"
    generation = s.generation
    found = s.redis.get(key, key[s.key_start :])
    if found is MISS:
        return MISS, None
    assert isinstance(found, CacheEntry)
    if s.config.l1_max_items and found.version < s.lru.known_version(key):
        # Redis lost a newer write (a failover) or missed one (an outage): load it again, repairing Redis.
        return MISS, None
    _fill_l1(s, key, found, generation)
    return found, "redis"


def cache_set(
    key: str,
    entry: CacheEntry,
    ttl: float | None = None,
    *,
    replay: bool = True,
    extend: bool = False,
    release: tuple[str, str] | None = None,
) -> bool:
    """Write Redis (announcing it to the other processes), then L1, unless a newer version is already
    cached. False when it was refused.

    `ttl` (seconds, spread by CACHE_TTL_JITTER) defaults to CACHE_TTL for an item and CACHE_NEGATIVE_TTL
    for an absent id; `extend` gives the same version already cached the new TTL (an early refresh);
    `release` (lock key, token) frees the caller's load lock in the same step. A
    Redis failure is absorbed (logged, counted) and L1 is still written; with `replay` (a write, not a
    read's fill) the entry is also remembered and written to Redis when it answers again.
    """
    s = state()
    if ttl is None:
        ttl = s.config.cache_ttl if entry.exists else s.config.negative_ttl
    generation = s.generation
    if write_redis(s, key, entry, jittered(ttl, s.config.ttl_jitter), replay, extend, release) == NEWER:
        return False
    _fill_l1(s, key, entry, generation)
    return True


def cache_delete(key: str, version: int | None = None) -> None:
    """Remove `key` from both tiers. With `version` (a delete the database made), leave a tombstone at
    that version for CACHE_NEGATIVE_TTL instead, so no slower reader can put an older version back."""
    s = state()
    if version is None:
        s.redis.delete(key)
        s.lru.delete(key)
        return
    cache_set(key, CacheEntry.build(key[s.key_start :], version, None))


def _fill_l1(s: _State, key: str, entry: CacheEntry, generation: int) -> None:
    if s.l1_usable and s.generation == generation and s.lru.set(key, entry):
        L1_ENTRIES.set(len(s.lru))


__all__ = [
    "ITEM_NAMESPACE",
    "MISS",
    "CacheEntry",
    "_State",
    "cache_delete",
    "cache_get",
    "cache_key",
    "cache_set",
    "enable_listener",
    "flush_l1",
    "init_cache",
    "reset",
    "set_bloom_rebuilder",
    "set_outbox",
    "state",
]
