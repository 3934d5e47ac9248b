"""The cache API: module-level functions over an in-process LRU (L1) and Redis (L2).

The seed's cacheGet / cacheSet / cacheDelete are `cache_get`, `cache_set`, `cache_delete` here. State is
per process and built by `init_cache` (in each gunicorn worker, after the fork); tests call `reset()`.
Coherence between processes (cache/invalidation.py) runs when `enable_listener()` was called first
(gunicorn's post_fork, `python app.py`) or `init_cache(..., listen=True)`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis

from cache.entry import MISS, CacheEntry, _Miss
from cache.invalidation import CHANNEL, Listener, PendingWrites, encode_message, new_origin
from cache.lru import LRUCache
from cache.metrics import L1_ENTRIES, L1_FLUSHES
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
    channel: str
    origin: str = field(default_factory=new_origin)
    pending: PendingWrites = field(default_factory=PendingWrites)
    listener: Listener | None = None
    # L1 is only trusted while invalidations can reach it; `generation` changes at every flush, so a
    # read that began before a flush never puts what it read into the flushed L1.
    l1_usable: bool = True
    generation: int = 0


_state: _State | None = None
_listen_on_init = False


def init_cache(config: Config, client: redis.Redis | None = None, listen: bool | None = None) -> None:
    """Build this process's tiers. `client` overrides the Redis that `config` names (tests); `listen`
    starts the invalidation listener (default: if `enable_listener()` was called in this process)."""
    global _state
    reset()
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
        channel=prefix + CHANNEL,
    )
    if _listen_on_init if listen is None else listen:
        _start_listener(_state)


def enable_listener() -> None:
    """Run an invalidation listener in this process: now if the cache exists (an app preloaded before a
    fork), else as soon as `init_cache` builds it. Call it after any fork, never before."""
    global _listen_on_init
    _listen_on_init = True
    if _state is not None and _state.listener is None:
        _state.origin = new_origin()  # preloaded in the master: this worker is a new process
        flush_l1("subscribe")
        _start_listener(_state)


def _start_listener(s: _State) -> None:
    s.l1_usable = False  # until subscribed: a message could be missed
    s.listener = Listener(
        s.redis.client,
        s.channel,
        s.origin,
        on_subscribed=lambda reason: _on_subscribed(s, reason),
        on_lost=lambda: _on_lost(s),
        on_message=s.lru.invalidate,
        on_tick=lambda: _replay_pending(s),
    )
    s.listener.start()


def _on_subscribed(s: _State, reason: str) -> None:
    flush_l1(reason)
    s.l1_usable = True
    _replay_pending(s)


def _on_lost(s: _State) -> None:
    s.l1_usable = False
    s.generation += 1


def _replay_pending(s: _State) -> None:
    if len(s.pending):
        written = s.pending.replay(lambda key, entry, ttl_ms: _write_redis(s, key, entry, ttl_ms))
        if written:
            logger.info("replayed %d cache write(s) Redis had missed; %d still pending", written, len(s.pending))


def flush_l1(reason: str) -> None:
    """Empty this process's L1 (counted in cache_l1_flushes_total{reason})."""
    s = state()
    s.generation += 1
    s.lru.clear()
    L1_ENTRIES.set(0)
    L1_FLUSHES.labels(reason).inc()


def reset() -> None:
    """Stop the listener and forget this process's cache state (tests)."""
    global _state
    if _state is not None and _state.listener is not None:
        _state.listener.stop()
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
    if s.l1_usable:
        entry = s.lru.get(key)
        if entry is not None:
            return entry, "lru"
    generation = s.generation
    found = s.redis.get(key, key[s.key_start :])
    if found is MISS:
        return MISS, None
    assert isinstance(found, CacheEntry)
    _fill_l1(s, key, found, generation)
    return found, "redis"


def cache_set(key: str, entry: CacheEntry, ttl: int | None = None, *, replay: bool = True) -> bool:
    """Write Redis (announcing it to the other processes), then L1, unless a newer version is already
    cached. False when it was refused.

    `ttl` defaults to CACHE_TTL for an item and CACHE_NEGATIVE_TTL for an absent id. A Redis failure is
    absorbed (logged, counted) and L1 is still written; with `replay` (a write, not a read's fill) the
    entry is also remembered and written to Redis when it answers again.
    """
    s = state()
    if ttl is None:
        ttl = s.config.cache_ttl if entry.exists else s.config.negative_ttl
    generation = s.generation
    if _write_redis(s, key, entry, ttl * 1000, replay) == NEWER:
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


def _write_redis(s: _State, key: str, entry: CacheEntry, ttl_ms: int, replay: bool = False) -> int | None:
    result = s.redis.set_if_newer(key, entry, ttl_ms, s.channel, encode_message(key, entry.version, s.origin))
    if result is None and replay and s.listener is not None:
        s.pending.remember(key, entry, ttl_ms)
    return result


def _fill_l1(s: _State, key: str, entry: CacheEntry, generation: int) -> None:
    if s.l1_usable and s.generation == generation and s.lru.set(key, entry):
        L1_ENTRIES.set(len(s.lru))


__all__ = [
    "MISS",
    "CacheEntry",
    "cache_delete",
    "cache_get",
    "cache_key",
    "cache_set",
    "enable_listener",
    "flush_l1",
    "init_cache",
    "reset",
]
