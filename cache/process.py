"""This process's cache: its state, built once per process (in each gunicorn worker, after the fork),
and the wiring of its invalidation listener: flush and bypass L1, replay missed writes, keep the Bloom
filter present. The public API over it is in cache/__init__.py.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis

from cache import breaker as breakers
from cache import outbox
from cache.bloom import BloomFilter
from cache.entry import CacheEntry
from cache.invalidation import CHANNEL, FLUSH_ALL, Listener, encode_message, new_origin
from cache.lru import LRUCache
from cache.metrics import L1_ENTRIES, L1_FLUSHES
from cache.outbox import Outbox, drain
from cache.redis_tier import RedisTier, connect, guard
from cache.replay import PendingWrites
from cache.stampede import FillNotifier, FleetLock
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
    lock: FleetLock
    bloom: BloomFilter | None
    origin: str = field(default_factory=new_origin)
    pending: PendingWrites = field(default_factory=PendingWrites)
    fills: FillNotifier = field(default_factory=FillNotifier)
    listener: Listener | None = None
    # L1 is only trusted while invalidations can reach it: the listener is subscribed and Redis answers
    # (a process whose Redis calls fail cannot count on hearing of other processes' writes either).
    # `generation` changes whenever that trust is lost, so a read that began before never fills L1.
    l1_usable: bool = True
    subscribed: bool = True  # no listener (tests, tools): nothing to wait for
    redis_answers: bool = True
    generation: int = 0
    bloom_checked_at: float = float("-inf")
    topology_refreshed_at: float = float("-inf")


_state: _State | None = None
_listen_on_init = False
_bloom_rebuilder: Callable[[], object] | None = None
_outbox: Outbox | None = None
BLOOM_CHECK_INTERVAL = 30.0  # seconds between a listener's checks that the Bloom filter exists
OUTBOX_INTERVAL = 1.0  # seconds between a listener's looks at the database's list of missed cache writes


def init_cache(config: Config, client: redis.Redis | None = None, listen: bool | None = None) -> None:
    """Build this process's tiers. `client` overrides the Redis that `config` names (tests); `listen`
    starts the invalidation listener (default: if `enable_listener()` was called in this process)."""
    global _state
    reset()
    breakers.configure(config.breaker_threshold, config.breaker_cooldown, on_change=_on_breaker)
    if client is None and config.redis_url:
        client = connect(config.redis_url, config.redis_socket_timeout, config.redis_cluster, config.redis_tls_verify)
    elif client is None:
        from cache import embedded  # imported here: `python -m cache.embedded` must not find it loaded

        client = embedded.client()
    prefix = config.key_prefix
    origin = new_origin()
    _state = _State(
        config=config,
        lru=LRUCache(config.l1_max_items, config.l1_ttl),
        redis=RedisTier(client, config.compress_min_bytes),
        key_start=len(prefix) + len(ITEM_NAMESPACE),
        channel=prefix + CHANNEL,
        lock=FleetLock(client, int(config.lock_ttl * 1000), origin),
        bloom=BloomFilter(client, prefix) if config.bloom else None,
        origin=origin,
    )
    if _listen_on_init if listen is None else listen:
        _start_listener(_state)


def enable_listener() -> None:
    """Run an invalidation listener in this process: now if the cache exists (an app preloaded before a
    fork), else as soon as `init_cache` builds it. Call it after any fork, never before."""
    global _listen_on_init
    _listen_on_init = True
    if _state is not None and _state.listener is None:
        _state.origin = _state.lock.origin = new_origin()  # preloaded in the master: this is a new process
        flush_l1("subscribe")
        _start_listener(_state)


def _set_trust(s: _State, *, subscribed: bool | None = None, redis_answers: bool | None = None) -> None:
    if subscribed is not None:
        s.subscribed = subscribed
    if redis_answers is not None:
        s.redis_answers = redis_answers
    usable = s.subscribed and s.redis_answers
    if not usable:
        s.generation += 1
    s.l1_usable = usable


def _on_breaker(closed: bool) -> None:
    if _state is not None:
        _set_trust(_state, redis_answers=closed)
        if closed:
            _replay_pending(_state)  # Redis is back: our writes first, before others read old versions


def _start_listener(s: _State) -> None:
    _set_trust(s, subscribed=False)  # until subscribed: a message could be missed
    nodes = getattr(s.redis.client, "nodes_manager", None)  # Redis Cluster
    s.listener = Listener(
        s.redis.client,
        s.channel,
        s.origin,
        # A cluster client may still point at the node that just failed: ask the cluster anew first.
        before_subscribe=nodes.initialize if nodes is not None else None,
        on_subscribed=lambda reason: _on_subscribed(s, reason),
        on_lost=lambda: _on_lost(s),
        on_message=lambda key, version: _on_message(s, key, version),
        on_tick=lambda: _maintain(s),
    )
    s.listener.start()
    threading.Thread(target=_drain_outbox_loop, args=(s, s.listener), name="cache-outbox", daemon=True).start()


def _on_subscribed(s: _State, reason: str) -> None:
    flush_l1(reason)
    breakers.breaker.success()  # Redis just answered our SUBSCRIBE: no need to wait out the cooldown
    _set_trust(s, subscribed=True)
    _replay_pending(s)  # before anything else: Redis may still hold versions older than our writes


def _on_message(s: _State, key: str, version: int) -> bool:
    """Another process wrote `key` at `version` (or flushed everything): drop what L1 holds of it."""
    if key == FLUSH_ALL:
        flush_l1("admin")
        return True
    s.fills.notify(key)  # a reader in this process may be waiting for that very fill
    return s.lru.invalidate(key, version)


def _on_lost(s: _State) -> None:
    _set_trust(s, subscribed=False)


def set_bloom_rebuilder(rebuild: Callable[[], object] | None) -> None:
    """What a listener calls when it finds no Bloom filter (none built yet, flushed, or disabled)."""
    global _bloom_rebuilder
    _bloom_rebuilder = rebuild


def set_outbox(outbox: Outbox | None) -> None:
    """Where to record cache writes Redis missed, so that any process (not only the writer) repairs them."""
    global _outbox
    _outbox = outbox


def _drain_outbox_loop(s: _State, listener: Listener) -> None:
    """Its own thread: a database call can take up to DATABASE_TIMEOUT, far past the listener's pong
    deadline, so it must never run on the listener's thread."""
    while not listener.stopped.wait(OUTBOX_INTERVAL):
        if _outbox is not None and listener.subscribed and s.redis_answers:
            drain(_outbox, s.redis, s.lru, s.config.key_prefix + ITEM_NAMESPACE, s.channel, s.origin)


def _maintain(s: _State) -> None:
    """The listener's periodic chores, while Redis answers: replay missed writes, keep a Bloom filter."""
    _replay_pending(s)
    if s.bloom is None or _bloom_rebuilder is None or time.monotonic() - s.bloom_checked_at < BLOOM_CHECK_INTERVAL:
        return
    s.bloom_checked_at = time.monotonic()
    if not s.bloom.is_built():
        _bloom_rebuilder()


def _replay_pending(s: _State) -> None:
    if s.pending.bloom_missed and s.bloom is not None and s.bloom.disable():
        s.pending.bloom_missed = False  # it may lack an id now: stop trusting it until it is rebuilt
        s.bloom_checked_at = float("-inf")
        logger.warning("a Bloom filter add failed while Redis was down: filter disabled until rebuilt")
    if len(s.pending):
        written = s.pending.replay(lambda key, entry, ttl_ms: write_redis(s, key, entry, ttl_ms))
        if written:
            logger.info("replayed %d cache write(s) Redis had missed; %d still pending", written, len(s.pending))
        nodes = getattr(s.redis.client, "nodes_manager", None)
        if len(s.pending) and nodes is not None and time.monotonic() - s.topology_refreshed_at > 1.0:
            # A cluster client learns of a failover slowly; our writes wait on it: ask the cluster now.
            s.topology_refreshed_at = time.monotonic()
            guard("topology", "-", nodes.initialize, None)


def flush_l1(reason: str) -> None:
    """Empty this process's L1 (counted in cache_l1_flushes_total{reason})."""
    s = state()
    s.generation += 1
    s.lru.clear()
    L1_ENTRIES.set(0)
    L1_FLUSHES.labels(reason).inc()


def reset() -> None:
    """Stop the listener and forget this process's cache state and hooks (init_cache starts with it)."""
    global _state, _outbox, _bloom_rebuilder
    if _state is not None and _state.listener is not None:
        _state.listener.stop()
    _state, _outbox, _bloom_rebuilder = None, None, None


def state() -> _State:
    if _state is None:
        raise RuntimeError("cache not initialised: call init_cache(config) first (create_app does)")
    return _state


def write_redis(
    s: _State,
    key: str,
    entry: CacheEntry,
    ttl_ms: int,
    replay: bool = False,
    extend: bool = False,
    release: tuple[str, str] | None = None,
) -> int | None:
    message = encode_message(key, entry.version, s.origin)
    result = s.redis.set_if_newer(key, entry, ttl_ms, s.channel, message, extend=extend, release=release)
    if replay and s.listener is not None:
        if result is None:
            s.pending.remember(key, entry, ttl_ms)
            if _outbox is not None:
                outbox.record(_outbox, key[s.key_start :], entry.version)
        else:
            s.pending.written(key, entry, ttl_ms)
    return result
