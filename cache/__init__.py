"""The cache API: module-level functions over an in-process LRU (L1) and Redis (L2).

The seed's cacheGet / cacheSet / cacheDelete are `cache_get`, `cache_set`, `cache_delete` here. State is
per process and built by `init_cache` (in each gunicorn worker, after the fork); tests call `reset()`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import redis

from cache.entry import MISS, CacheEntry, _Miss
from cache.lru import LRUCache
from cache.metrics import L1_ENTRIES
from cache.redis_tier import NEWER, RedisTier, connect
from config import Config

logger = logging.getLogger(__name__)

ITEM_NAMESPACE = "item:"


@dataclass
class _State:
    config: Config
    lru: LRUCache[CacheEntry]
    redis: RedisTier
    key_start: int  # len(prefix + "item:"): where the id starts in a key


_state: _State | None = None


def init_cache(config: Config, client: redis.Redis | None = None) -> None:
    """Build this process's tiers. `client` overrides the Redis that `config` names (tests)."""
    global _state
    if client is None and config.redis_url:
        client = connect(config.redis_url, config.redis_socket_timeout)
    elif client is None:
        from cache import embedded  # imported here: `python -m cache.embedded` must not find it loaded

        client = embedded.client()
    prefix = config.key_prefix
    _state = _State(
        config=config,
        lru=LRUCache(config.l1_max_items, config.l1_ttl),
        redis=RedisTier(client),
        key_start=len(prefix) + len(ITEM_NAMESPACE),
    )


def reset() -> None:
    """Forget this process's cache state (tests; after a fork)."""
    global _state
    _state = None


def state() -> _State:
    if _state is None:
        raise RuntimeError("cache not initialised: call init_cache(config) first (create_app does)")
    return _state


def cache_key(item_id: str) -> str:
    """`"item:" + id`, under CACHE_KEY_PREFIX."""
    return f"{state().config.key_prefix}{ITEM_NAMESPACE}{item_id}"


def cache_get(key: str) -> tuple[CacheEntry | _Miss, str | None]:
    """L1, then Redis (promoting a hit into L1). Returns (entry, "lru" | "redis") or (MISS, None)."""
    s = state()
    entry = s.lru.get(key)
    if entry is not None:
        return entry, "lru"
    found = s.redis.get(key, key[s.key_start :])
    if found is MISS:
        return MISS, None
    assert isinstance(found, CacheEntry)
    if s.lru.set(key, found):
        L1_ENTRIES.set(len(s.lru))
    return found, "redis"


def cache_set(key: str, entry: CacheEntry, ttl: int | None = None) -> bool:
    """Write Redis, then L1, unless a newer version is already cached. False when it was refused.

    `ttl` defaults to CACHE_TTL for an item and CACHE_NEGATIVE_TTL for an absent id. A Redis failure
    is absorbed (logged, counted) and L1 is still written.
    """
    s = state()
    if ttl is None:
        ttl = s.config.cache_ttl if entry.exists else s.config.negative_ttl
    if s.redis.set_if_newer(key, entry, ttl * 1000) == NEWER:
        return False
    if s.lru.set(key, entry):
        L1_ENTRIES.set(len(s.lru))
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


__all__ = ["MISS", "CacheEntry", "cache_delete", "cache_get", "cache_key", "cache_set", "init_cache", "reset"]
