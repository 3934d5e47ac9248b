"""Warming and flushing: stream the table into Redis and the Bloom filter in constant memory, one builder
at a time across the fleet (the fleet lock, renewed every batch); flush what this service owns, and only that.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cache.core.entry import CacheEntry, jittered
from cache.core.guard import REDIS_ERRORS_CAUGHT, RedisDown
from cache.core.item_cache import ItemCache
from cache.core.lock import Acquired, HeldByOther
from cache.core.redis_tier import encode_flush
from db import Item, ItemStore

logger = logging.getLogger(__name__)

BATCH = 1000
BLOOM_GRACE = 1.0  # seconds between announcing a rebuild and scanning: writes already past their
#                    Bloom add (before the announcement) commit within this, so the scan sees them
BUILD_LOCK_MS = 60_000  # renewed every batch; a dead builder frees it within a minute

Progress = Callable[[int, int], None]


class WarmInProgress(Exception):
    """Another process is warming (or rebuilding the Bloom filter) right now."""


class CacheUnavailable(Exception):
    """Redis did not answer: nothing was warmed or flushed."""


@dataclass
class WarmResult:
    items: int  # rows scanned
    seconds: float
    cache_filled: bool
    bloom_rebuilt: bool


def lock_key(cache: ItemCache) -> str:
    """The key that lets one warm (or Bloom filter rebuild) run at a time across the fleet."""
    return cache.bloom.build_lock if cache.bloom else f"{cache.settings.key_prefix}warm-lock"


def take_lock(cache: ItemCache) -> Acquired:
    """The builder's lock, or WarmInProgress / CacheUnavailable."""
    held = cache.lock.acquire(lock_key(cache), BUILD_LOCK_MS)
    if isinstance(held, RedisDown):
        raise CacheUnavailable("Redis is not answering; try again when it is")
    if isinstance(held, HeldByOther):
        raise WarmInProgress("a warm or Bloom filter rebuild is already running")
    return held


def warm(cache: ItemCache, store: ItemStore, hold: Acquired, progress: Progress | None = None) -> WarmResult:
    """Write every item to Redis with CACHE_LONG_TTL (jittered; never over a newer version) and rebuild
    the Bloom filter from the same scan, under `hold` (from take_lock), which is released at the end."""
    return _build(cache, store, hold, functools.partial(_queue_items, cache), progress)


def rebuild_bloom(cache: ItemCache, store: ItemStore, hold: Acquired) -> WarmResult:
    """Rebuild only the Bloom filter, under `hold`."""
    return _build(cache, store, hold, None, None)


def warm_in_background(cache: ItemCache, store: ItemStore) -> threading.Thread:
    """Take the lock now (WarmInProgress / CacheUnavailable to the caller), warm in a daemon thread."""
    hold = take_lock(cache)
    return _in_background(functools.partial(warm, cache, store, hold, log_progress()))


def rebuild_bloom_in_background(cache: ItemCache, store: ItemStore) -> threading.Thread | None:
    """Rebuild the Bloom filter in a daemon thread, unless another process is already building one."""
    try:
        hold = take_lock(cache)
    except (WarmInProgress, CacheUnavailable) as exc:
        logger.info("bloom filter rebuild skipped: %s", exc)
        return None
    # At INFO: the chores try again every half minute, and a Redis that fails or refuses writes is reported by
    # the guard already (a full Redis would otherwise add a warning per worker per try).
    return _in_background(functools.partial(rebuild_bloom, cache, store, hold), "bloom filter rebuild", logging.INFO)


def log_progress() -> Progress:
    """Progress for a log, not a terminal: a line at each tenth of the items (at most one a batch) and at the
    end, so a warm of any size says how far it is in about ten lines."""

    def report(done: int, total: int) -> None:
        step = max(BATCH, -(-total // 10))
        if done % step < BATCH or done == total:
            logger.info("warming: %d/%d items", done, total)

    return report


def flush(cache: ItemCache) -> int:
    """Delete this service's item keys (under its prefix: never FLUSHDB) and every process's L1.
    Returns how many Redis keys were deleted; CacheUnavailable when Redis does not answer."""
    deleted = cache.redis.guard("flush", "-", _unlink_items, cache)
    if isinstance(deleted, RedisDown):
        raise CacheUnavailable("Redis is not answering; nothing was flushed")
    message = encode_flush(cache.origin, "admin")
    cache.redis.guard("flush", "-", cache.redis.client.publish, cache.redis.channel, message)  # other processes
    cache.flush_l1("admin")
    return deleted


def _build(
    cache: ItemCache,
    store: ItemStore,
    hold: Acquired,
    queue_items: Callable[[Any, list[Item]], None] | None,
    progress: Progress | None,
) -> WarmResult:
    lock, started, done = lock_key(cache), time.monotonic(), 0
    try:
        total = store.count()
        bloom = cache.bloom
        bloom_size = bloom.begin_build(total) if bloom else None
        if bloom_size:
            time.sleep(BLOOM_GRACE)
        for batch in store.iterate(BATCH):
            pipe = cache.bulk.pipeline(transaction=False)
            if queue_items is not None:
                queue_items(pipe, batch)
            if bloom and bloom_size:
                bloom.add_batch(pipe, (item.id for item in batch), *bloom_size)
            if isinstance(cache.redis.guard("warm", "-", pipe.execute), RedisDown):
                raise CacheUnavailable(f"Redis stopped answering after {done} items")
            if not cache.lock.renew(lock, hold.token, BUILD_LOCK_MS):
                raise WarmInProgress(f"lost the builder's lock after {done} items; another process took over")
            done += len(batch)
            if progress:
                progress(done, total)
        if bloom:
            bloom.finish_build()
    except REDIS_ERRORS_CAUGHT as exc:  # the Bloom filter's own calls are not guarded: they must all succeed
        raise CacheUnavailable(f"Redis failed after {done} items: {type(exc).__name__}") from exc
    finally:
        cache.lock.release(lock, hold.token)
    result = WarmResult(done, time.monotonic() - started, queue_items is not None, bool(cache.bloom))
    what = "warmed %d items" if result.cache_filled else "rebuilt the bloom filter from %d ids"
    logger.info(what + " in %.1fs", done, result.seconds)
    return result


def _queue_items(cache: ItemCache, pipe: Any, batch: list[Item]) -> None:
    for item in batch:
        entry = CacheEntry.build(item.id, item.version, item.to_json())
        ttl_ms = jittered(cache.settings.long_ttl, cache.settings.ttl_jitter)
        cache.redis.queue_warm(pipe, cache.key(item.id), entry, ttl_ms)


def _unlink_items(cache: ItemCache) -> int:
    client, deleted, batch = cache.bulk, 0, []
    for key in client.scan_iter(match=f"{cache.settings.key_prefix}item:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def _in_background(run: Callable[[], WarmResult], what: str = "warm", level: int = logging.WARNING) -> threading.Thread:
    """Run `run` in a daemon thread; a stop (Redis failed or refused, or another builder took over) is logged
    at `level`."""

    def guarded() -> None:
        try:
            run()
        except (WarmInProgress, CacheUnavailable) as exc:
            logger.log(level, "%s stopped: %s", what, exc)
        except Exception:  # a failed warm must not take the worker down; it is logged
            logger.exception("warm failed")

    thread = threading.Thread(target=guarded, name="cache-warm", daemon=True)
    thread.start()
    return thread
