"""The cache API: module-level functions over an in-process LRU (L1) and Redis (L2).

The seed's cacheGet / cacheSet / cacheDelete are `cache_get`, `cache_set`, `cache_delete`; a read's fill
and an early refresh have names of their own (`cache_fill`, `cache_refresh`). The state behind them is
per process (cache/process.py), built by `init_cache`; tests call `reset()`.
"""

from __future__ import annotations

import redis

from cache.core.announce import new_origin
from cache.core.entry import MISS, CacheEntry, _Miss
from cache.core.redis_tier import SetOutcome
from cache.core.lock import Acquired
from cache.process import CacheProcess, build, start_listening, stop_listening
from config import Config
from db import ItemStore

_process: CacheProcess | None = None
_listen_after_fork = False  # enable_listener() was called: every cache this process builds listens


def init_cache(config: Config, client: redis.Redis | None = None, store: ItemStore | None = None) -> None:
    """Build this process's cache over `client` (default: the Redis `config` names). A listening process
    (enable_listener() ran) follows `store`'s change log and rebuilds the Bloom filter from it."""
    global _process
    _stop()
    _process = build(config, client, store)
    if _listen_after_fork:
        start_listening(_process)


def enable_listener() -> None:
    """Listen in this process (gunicorn's post_fork): now if the cache exists, else once init_cache builds
    it. Call it after any fork, never before."""
    global _listen_after_fork
    _listen_after_fork = True
    if _process is not None and _process.listener is None:
        _process.set_origin(new_origin())  # preloaded in the master: this is a new process
        _process.flush_l1("subscribe")
        start_listening(_process)


def start_listener() -> None:
    """Start this process's listener now (tests, tools); L1 is bypassed until it is subscribed."""
    if state().listener is None:
        start_listening(state())


def reset() -> None:
    """Stop the listener and forget this process's cache (tests)."""
    global _process, _listen_after_fork
    _stop()
    _process, _listen_after_fork = None, False


def state() -> CacheProcess:
    if _process is None:
        raise RuntimeError("cache not initialised: call init_cache(config) first (create_app does)")
    return _process


def cache_key(item_id: str) -> str:
    """`"item:" + id`, under CACHE_KEY_PREFIX."""
    return state().key(item_id)


def cache_get_l1(key: str) -> CacheEntry | None:
    """L1 alone: its live entry for `key` while L1 is trusted, else None (cache/core/trust.py)."""
    s = _process or state()  # the attribute, not the call: this is the L1-hit path
    return s.lru.get(key) if s.trust.usable else None


def cache_get(key: str) -> tuple[CacheEntry | _Miss, str | None]:
    """L1, then Redis (copied into L1). Returns (entry, "lru" | "redis") or (MISS, None); MISS while Redis
    is doubted (cache/core/trust.py: it may lack writes made while it was away)."""
    entry = cache_get_l1(key)
    if entry is not None:
        return entry, "lru"
    s = _process or state()
    if not s.trust.redis_current:
        return MISS, None
    generation = s.trust.generation
    found = s.redis.get(key, s.item_id(key))
    if not isinstance(found, CacheEntry) or not s.take_redis_copy(key, found, generation):
        return MISS, None
    return found, "redis"


def cache_set(key: str, entry: CacheEntry, ttl: float | None = None) -> SetOutcome:
    """The seed's cacheSet, for a change the database committed: Redis (unless it holds a newer version;
    announced to every process), then L1. Redis is tried even while this process's breaker is open: other
    processes may trust Redis again already (cache/core/trust.py), and a change skipped here would reach it only
    at the change follower's next pass, while they served the version before it. A write Redis missed
    reaches it through the change log (the follower applies it when Redis answers again; cache/changelog/follower.py)."""
    s = state()
    generation, ttl_ms = s.trust.generation, s.ttl_ms(entry, ttl)
    outcome = s.redis.set_committed(key, entry, ttl_ms)
    # Our own announcement never reaches our L1 (the listener ignores it), and an untrusted L1 (Redis or the
    # listener down) takes no entry: it must still drop any older copy, or serve it once trusted again.
    s.lru.invalidate(key, entry.version)
    return _then_l1(s, key, entry, generation, outcome)


def cache_fill(key: str, entry: CacheEntry, release: Acquired | None = None) -> SetOutcome:
    """A read's fill from the database: as cache_set, but skipped while the breaker is open (the next read
    refills if Redis missed it), and `release` frees the caller's load lock in the same step."""
    s = state()
    generation = s.trust.generation
    outcome = s.redis.set_if_newer(key, entry, s.ttl_ms(entry), release)
    return _then_l1(s, key, entry, generation, outcome)


def cache_refresh(key: str, entry: CacheEntry, ttl: float | None) -> SetOutcome:
    """An early refresh: as cache_fill, and a copy of this very version already in Redis takes `ttl`."""
    s = state()
    generation = s.trust.generation
    outcome = s.redis.refresh(key, entry, s.ttl_ms(entry, ttl))
    return _then_l1(s, key, entry, generation, outcome)


def cache_delete(key: str, version: int | None = None) -> None:
    """Remove `key` from every tier of every process. With `version` (a delete the database made), leave
    a tombstone at that version for CACHE_NEGATIVE_TTL instead, so no slower reader can put an older one back."""
    s = state()
    if version is not None:
        cache_set(key, CacheEntry.build(s.item_id(key), version, None))
        return
    s.redis.delete(key)  # announced: the other processes drop their copy whatever its version
    s.lru.delete(key)


def flush_l1(reason: str) -> None:
    """Empty this process's L1 (counted in cache_l1_flushes_total{reason})."""
    state().flush_l1(reason)


def _then_l1(s: CacheProcess, key: str, entry: CacheEntry, generation: int, outcome: SetOutcome) -> SetOutcome:
    """L1 follows Redis: it takes the entry unless Redis refused it for a newer version (or Redis failed:
    then L1 still serves this process the version its database just committed)."""
    if outcome is not SetOutcome.NEWER:
        s.fill_l1(key, entry, generation)
    return outcome


def _stop() -> None:
    if _process is not None:
        stop_listening(_process)


__all__ = [
    "MISS",
    "CacheEntry",
    "CacheProcess",
    "SetOutcome",
    "cache_delete",
    "cache_fill",
    "cache_get",
    "cache_get_l1",
    "cache_key",
    "cache_refresh",
    "cache_set",
    "enable_listener",
    "flush_l1",
    "init_cache",
    "reset",
    "start_listener",
    "state",
]
