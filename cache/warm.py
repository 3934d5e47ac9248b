"""Warming and flushing: stream the table into Redis (and rebuild the Bloom filter) in constant memory;
flush what this service owns, and only that.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cache import CacheEntry, cache_key, flush_l1, state
from cache.invalidation import FLUSH_ALL, encode_message
from cache.stampede import jittered
from db import ItemStore

logger = logging.getLogger(__name__)

BATCH = 1000
BLOOM_GRACE = 1.0  # seconds between announcing a rebuild and scanning: writes already past their
#                    Bloom add (before the announcement) commit within this, so the scan sees them
BUILD_LOCK_MS = 60_000  # renewed every batch; a dead builder frees it within a minute


class WarmInProgress(Exception):
    """Another process is warming (or rebuilding the Bloom filter) right now."""


@dataclass
class WarmResult:
    items: int
    seconds: float
    bloom_rebuilt: bool


Progress = Callable[[int, int], None]


def lock_key() -> str:
    """The key that lets one warm (or Bloom filter rebuild) run at a time across the fleet."""
    s = state()
    return s.bloom.build_lock if s.bloom else f"{s.config.key_prefix}warm-lock"


def warm(store: ItemStore, *, fill_cache: bool = True, progress: Progress | None = None) -> WarmResult:
    """Write every item to Redis with CACHE_LONG_TTL (jittered, pipelined per batch; never over a newer
    version) and rebuild the Bloom filter from the same scan. One warm at a time across the fleet."""
    s = state()
    token = secrets.token_hex(8)
    lock = lock_key()
    if not s.redis.client.set(lock, token, nx=True, px=BUILD_LOCK_MS):
        raise WarmInProgress("a warm or Bloom filter rebuild is already running")
    started, done = time.monotonic(), 0
    try:
        total = store.count()
        bloom_size = s.bloom.begin_build(total) if s.bloom else None
        if bloom_size:
            time.sleep(BLOOM_GRACE)
        for batch in store.iterate(BATCH):
            pipe = s.redis.client.pipeline(transaction=False)
            if fill_cache:
                for item in batch:
                    entry = CacheEntry.build(item.id, item.version, item.to_json())
                    ttl_ms = jittered(s.config.cache_long_ttl, s.config.ttl_jitter)
                    # No announcement: a warm writes what the database already says; no L1 is older.
                    s.redis.set_if_newer(cache_key(item.id), entry, ttl_ms, extend=True, client=pipe)
            if s.bloom and bloom_size:
                s.bloom.add_batch(pipe, (item.id for item in batch), *bloom_size)
            pipe.pexpire(lock, BUILD_LOCK_MS)
            pipe.execute()
            done += len(batch)
            if progress:
                progress(done, total)
        if s.bloom:
            s.bloom.finish_build()
    finally:
        if s.redis.client.get(lock) == token.encode():
            s.redis.client.delete(lock)
    result = WarmResult(items=done, seconds=time.monotonic() - started, bloom_rebuilt=bool(s.bloom))
    logger.info("warmed %d items in %.1fs (bloom rebuilt: %s)", done, result.seconds, result.bloom_rebuilt)
    return result


def log_progress(every: int = 10_000) -> Progress:
    """Progress for a log, not a terminal: a line every `every` items and at the end."""

    def report(done: int, total: int) -> None:
        if done % every < BATCH or done == total:
            logger.info("warming: %d/%d items", done, total)

    return report


def in_background(store: ItemStore, *, fill_cache: bool, only_if_no_bloom: bool = False) -> threading.Thread:
    """Warm (or just rebuild the Bloom filter) in a daemon thread of this process; a second process
    trying at the same time gives way (WarmInProgress)."""

    def run() -> None:
        s = state()
        if only_if_no_bloom and (s.bloom is None or s.bloom.is_built()):
            return
        try:
            warm(store, fill_cache=fill_cache, progress=log_progress())
        except WarmInProgress:
            logger.info("warm skipped: another process is doing it")
        except Exception:  # noqa: BLE001 - a failed warm must not take the worker down; it is logged
            logger.exception("warm failed")

    thread = threading.Thread(target=run, name="cache-warm", daemon=True)
    thread.start()
    return thread


def flush() -> int:
    """Delete this service's item keys (under its prefix: never FLUSHDB) and every process's L1.
    Returns how many Redis keys were deleted."""
    s = state()
    client, deleted, batch = s.redis.client, 0, []
    for key in client.scan_iter(match=f"{s.config.key_prefix}item:*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    client.publish(s.channel, encode_message(FLUSH_ALL, 0, s.origin))  # every other process flushes L1
    flush_l1("admin")
    return deleted
