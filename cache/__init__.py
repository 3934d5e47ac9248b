"""The cache API of the product card: `cache_get`, `cache_set`, `cache_delete` (and a read's `cache_fill`, an
early `cache_refresh`), module-level functions over this process's ItemCache (cache/core/item_cache.py).
The composition root (cache/service.py) builds that object and installs it here; the app hands it to the
views itself (app.extensions["item_cache"]).
"""

from __future__ import annotations

from cache.core.entry import MISS, CacheEntry, _Miss
from cache.core.item_cache import ItemCache
from cache.core.lock import Acquired
from cache.core.redis_tier import SetOutcome

_installed: ItemCache | None = None


def install(item_cache: ItemCache | None) -> None:
    """Make `item_cache` the one these functions use (cache/service.py does; None: none)."""
    global _installed
    _installed = item_cache


def _cache() -> ItemCache:
    if _installed is None:
        raise RuntimeError("cache not initialised: call cache.service.init_cache(config) first (create_app does)")
    return _installed


def cache_key(item_id: str) -> str:
    """`"item:" + id`, under CACHE_KEY_PREFIX."""
    return _cache().key(item_id)


def cache_get_l1(key: str) -> CacheEntry | None:
    """L1 alone: its live entry for `key` while L1 is trusted, else None."""
    return _cache().get_l1(key)


def cache_get(key: str) -> tuple[CacheEntry | _Miss, str | None]:
    """L1, then Redis (copied into L1): (entry, "lru" | "redis") or (MISS, None); MISS while Redis is doubted."""
    return _cache().get(key)


def cache_set(key: str, entry: CacheEntry, ttl: float | None = None) -> SetOutcome:
    """A change the database committed: Redis (unless it holds a newer version), announced, then L1."""
    return _cache().set(key, entry, ttl)


def cache_fill(key: str, entry: CacheEntry, release: Acquired | None = None) -> SetOutcome:
    """A read's fill from the database: as cache_set, but skipped while the breaker is open."""
    return _cache().fill(key, entry, release)


def cache_refresh(key: str, entry: CacheEntry, ttl: float | None) -> SetOutcome:
    """An early refresh: as cache_fill, and a copy of this very version already in Redis takes `ttl`."""
    return _cache().refresh(key, entry, ttl)


def cache_delete(key: str, version: int | None = None) -> None:
    """Remove `key` from every tier of every process; with `version`, leave a tombstone at that version."""
    _cache().delete(key, version)


def flush_l1(reason: str) -> None:
    """Empty this process's L1 (counted in cache_l1_flushes_total{reason})."""
    _cache().flush_l1(reason)


__all__ = [
    "MISS",
    "CacheEntry",
    "ItemCache",
    "SetOutcome",
    "cache_delete",
    "cache_fill",
    "cache_get",
    "cache_get_l1",
    "cache_key",
    "cache_refresh",
    "cache_set",
    "flush_l1",
    "install",
]
