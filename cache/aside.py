"""The cache-aside flow in one place: read through L1 -> Redis -> DB, write the DB first and then the cache.

Everything that decides what a request sees lives here; the views only translate to HTTP.
"""

from __future__ import annotations

from typing import Any

from cache import MISS, CacheEntry, cache_delete, cache_get, cache_key, cache_set
from cache.metrics import DB_LOADS, REQUESTS_BY_TIER
from db import ItemStore, WriteResult


def read_item(store: ItemStore, item_id: str) -> tuple[CacheEntry, str]:
    """The entry for `item_id` and the tier that answered ("lru", "redis" or "db").

    `entry.exists` is False for an id that does not exist: that answer is cached too (negative entry).
    Raises DatabaseUnavailable only when the cache had nothing and the database is down.
    """
    key = cache_key(item_id)
    entry, tier = cache_get(key)
    if entry is not MISS:
        assert isinstance(entry, CacheEntry) and tier is not None
        REQUESTS_BY_TIER[tier if entry.exists else "negative"].inc()
        return entry, tier
    item = store.get(item_id)
    DB_LOADS.inc()
    REQUESTS_BY_TIER["db"].inc()
    # Version 0 for "absent": any real write (version >= 1) replaces it, whatever the order.
    entry = CacheEntry.build(item_id, item.version, item.to_json()) if item else CacheEntry.build(item_id, 0, None)
    cache_set(key, entry, replay=False)  # a fill, not a write: if Redis missed it, the next read refills
    return entry, "db"


def write_item(store: ItemStore, item_id: str, fields: dict[str, Any]) -> tuple[WriteResult, CacheEntry]:
    """Upsert in the database (the source of truth), then refresh both tiers with the new version.

    If the database write fails it raises and the cache is not touched.
    """
    result = store.upsert(item_id, fields)
    entry = CacheEntry.build(item_id, result.item.version, result.item.to_json())
    cache_set(cache_key(item_id), entry)
    return result, entry


def remove_item(store: ItemStore, item_id: str) -> bool:
    """Delete in the database, then leave a versioned tombstone in both tiers. False: no such item."""
    version = store.delete(item_id)
    if version is None:
        return False
    cache_delete(cache_key(item_id), version)
    return True
