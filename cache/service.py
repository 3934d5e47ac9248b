"""The composition root: builds this process's Redis clients, its ItemCache and the background services
(the invalidation listener, the chores, the change follower, the inspector) and starts them after the
fork. The one module that imports every layer of the cache; the app (app.py) and gunicorn.conf.py call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

import cache
from cache.changelog.follower import ChangeFollower
from cache.changelog.inspector import Inspector
from cache.changelog.maintenance import Maintenance
from cache.coherence.apply import Coherence
from cache.coherence.listener import Listener, Watchdog
from cache.core.background import Background
from cache.core.bloom import BloomFilter
from cache.core.entry import CacheEntry
from cache.core.guard import CircuitBreaker, Guard
from cache.core.item_cache import CacheSettings, ItemCache
from cache.core.lock import FleetLock
from cache.core.lru import LRUCache
from cache.core.redis_tier import CHANNEL, RedisTier, connect, connect_cluster, new_origin
from cache.core.topology import Topology
from cache.core.trust import L1Trust
from config import Config
from db import ItemStore

# A pipeline of a thousand scripts can outlast a request's REDIS_SOCKET_TIMEOUT on a busy Redis; batches
# are nobody's request, so they may wait this long instead.
BULK_TIMEOUT = 5.0


@dataclass
class CacheService:
    """One process's cache and the background services that keep it coherent."""

    cache: ItemCache
    check_eviction_policy: bool  # the embedded Redis has no INFO to check it with
    listener: Listener | None = None
    chores: Maintenance | None = None
    follower: ChangeFollower | None = None
    inspector: Inspector | None = None
    workers: list[Background] = field(default_factory=list)

    def start(self) -> None:
        """Start the listener and the chores and, with a database, the change follower and the inspector
        (one of each at work per fleet, by lease). L1 is bypassed until the listener is subscribed."""
        item_cache, store = self.cache, self.cache.store
        item_cache.trust.set_subscribed(False)
        self.chores = Maintenance(item_cache)
        redis_tier = item_cache.redis
        self.listener = Listener(
            redis_tier.client, redis_tier.channel, Coherence(item_cache), Watchdog(), origin=item_cache.origin
        )
        self.workers = [self.listener, self.chores]
        if store is not None:
            item_cache.trust.follow_log()
            self.follower = ChangeFollower(item_cache, store, check_eviction_policy=self.check_eviction_policy)
            self.inspector = Inspector(item_cache, store)
            self.workers += [self.follower, self.inspector]
        for worker in self.workers:
            worker.start()

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def settings(config: Config) -> CacheSettings:
    return CacheSettings(
        enabled=config.cache_enabled,
        key_prefix=config.key_prefix,
        ttl=config.cache_ttl,
        negative_ttl=config.negative_ttl,
        long_ttl=config.cache_long_ttl,
        ttl_jitter=config.ttl_jitter,
        xfetch_beta=config.xfetch_beta,
        stampede_protection=config.stampede_protection,
        lock_wait=config.lock_wait,
        lock_ttl=config.lock_ttl,
    )


def build(
    config: Config, client: redis.Redis | None = None, store: ItemStore | None = None, bulk: redis.Redis | None = None
) -> CacheService:
    """This process's cache over `client` (default: the Redis REDIS_URL names; without one, app.py passes
    the embedded Redis's) and `bulk` for batches (default: `client` if given, else a client with BULK_TIMEOUT)."""
    if client is None and not config.redis_url:
        raise ValueError("no REDIS_URL and no client: pass the embedded Redis's client (app.py does)")
    bulk = bulk or client or _client(config, max(BULK_TIMEOUT, config.redis_socket_timeout))
    client = client or _client(config, config.redis_socket_timeout)
    trust = L1Trust(follows_log=False)  # until a change follower starts (CacheService.start)
    breaker = CircuitBreaker(
        config.breaker_threshold,
        config.breaker_cooldown,
        on_change=trust.on_breaker_change,
        on_failure=trust.doubt_redis,
    )
    guard, origin = Guard(breaker), new_origin()
    item_cache = ItemCache(
        settings=settings(config),
        lru=LRUCache(config.l1_max_items, config.l1_ttl, max_bytes=config.l1_max_bytes, weigh=CacheEntry.held_bytes),
        redis=RedisTier(client, guard, config.key_prefix + CHANNEL, origin, config.compress_min_bytes),
        lock=FleetLock(client, guard, int(config.lock_ttl * 1000), origin),
        bloom=BloomFilter(client, guard, config.key_prefix) if config.bloom else None,
        breaker=breaker,
        trust=trust,
        store=store,
        bulk=bulk,
        topology=Topology([client, bulk] if bulk is not client else [client], guard),
    )
    return CacheService(item_cache, check_eviction_policy=not config.fakeredis)


def _client(config: Config, socket_timeout: float) -> redis.Redis:
    assert config.redis_url is not None
    if config.redis_cluster:
        return connect_cluster(config.redis_url, socket_timeout, config.redis_tls_verify)
    return connect(config.redis_url, socket_timeout, config.redis_tls_verify)


_service: CacheService | None = None
_listen_after_fork = False  # enable_listener() was called: every cache this process builds listens


def init_cache(
    config: Config, client: redis.Redis | None = None, store: ItemStore | None = None, bulk: redis.Redis | None = None
) -> ItemCache:
    """Build this process's cache (replacing any before it) and make it the one `cache.cache_get` and the
    others use. A listening process (enable_listener() ran) starts its background services too."""
    global _service
    _stop()
    _service = build(config, client, store, bulk)
    cache.install(_service.cache)
    if _listen_after_fork:
        _service.start()
    return _service.cache


def enable_listener() -> None:
    """Listen in this process (gunicorn's post_fork): now if the cache exists, else once init_cache builds
    it. Call it after any fork, never before."""
    global _listen_after_fork
    _listen_after_fork = True
    if _service is not None and _service.listener is None:
        _service.cache.set_origin(new_origin())  # preloaded in the master: this is a new process
        _service.cache.flush_l1("subscribe")
        _service.start()


def start_listener() -> None:
    """Start this process's background services now (tests, tools)."""
    service = running()
    if service.listener is None:
        service.start()


def running() -> CacheService:
    """This process's cache service (for the edge: app.py, gunicorn.conf.py, tools and tests)."""
    if _service is None:
        raise RuntimeError("cache not initialised: call init_cache(config) first (create_app does)")
    return _service


def reset() -> None:
    """Stop the background services and forget this process's cache (tests)."""
    global _service, _listen_after_fork
    _stop()
    _service, _listen_after_fork = None, False
    cache.install(None)


def _stop() -> None:
    if _service is not None:
        _service.stop()
