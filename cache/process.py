"""This process's cache, built once per process (in each gunicorn worker, after the fork) by `init_cache`.
The public API over it is in cache/__init__.py; what its listener hears is applied in cache/coherence/apply.py,
its background chores run in cache/changelog/maintenance.py; when it trusts L1 and Redis is in cache/core/trust.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import redis
from redis import Redis

from cache.core.bloom import BloomFilter
from cache.core.breaker import CircuitBreaker
from cache.changelog.follower import ChangeFollower
from cache.changelog.inspector import Inspector
from cache.changelog.maintenance import Maintenance
from cache.coherence.apply import Coherence
from cache.coherence.listener import Listener, Watchdog
from cache.core.announce import CHANNEL, new_origin
from cache.core.entry import CacheEntry
from cache.core.guard import Guard
from cache.core.metrics import L1_ENTRIES, L1_FLUSHES, REDIS_CATCHING_UP
from cache.core.redis_tier import RedisTier, connect, connect_cluster
from cache.core.stampede import FillNotifier, jittered
from cache.core.lock import FleetLock
from cache.core.lru import LRUCache
from cache.core.trust import L1Trust
from config import Config
from db import ItemStore

logger = logging.getLogger(__name__)

ITEM_NAMESPACE = "item:"
# A pipeline of a thousand scripts can outlast a request's REDIS_SOCKET_TIMEOUT on a busy Redis (seen: a
# 100,000-item warm failing at 0.25 s); batches are nobody's request, so they may wait this long instead.
BULK_TIMEOUT = 5.0
# While Redis calls keep failing (a cluster failover?), ask the cluster for its slots at most this often.
TOPOLOGY_INTERVAL = 1.0


@dataclass
class CacheProcess:
    config: Config
    lru: LRUCache[CacheEntry]  # L1: CACHE_L1_MAX_ITEMS entries, CACHE_L1_MAX_BYTES, each trusted CACHE_L1_TTL at most
    redis: RedisTier
    lock: FleetLock
    bloom: BloomFilter | None
    breaker: CircuitBreaker
    store: ItemStore | None  # the database: its change log is followed, the Bloom filter rebuilt from it
    bulk: Redis  # the same Redis for batches (warming, the change log): a longer timeout, see BULK_TIMEOUT
    trust: L1Trust = field(default_factory=L1Trust)
    bloom_missed: bool = False  # a Bloom filter add failed: the filter may lack an id until rebuilt
    fills: FillNotifier = field(default_factory=FillNotifier)
    listener: Listener | None = None
    chores: Maintenance | None = None
    follower: ChangeFollower | None = None
    inspector: Inspector | None = None
    _next_topology: float = field(default=float("-inf"), init=False, repr=False)

    @property
    def origin(self) -> str:
        return self.redis.origin

    def set_origin(self, origin: str) -> None:
        """A new process (after a fork) announces its writes under a name of its own."""
        self.redis.origin = self.lock.origin = origin

    def key(self, item_id: str) -> str:
        return f"{self.config.key_prefix}{ITEM_NAMESPACE}{item_id}"

    def item_id(self, key: str) -> str:
        return key[len(self.config.key_prefix) + len(ITEM_NAMESPACE) :]

    def ttl_ms(self, entry: CacheEntry, ttl: float | None = None) -> int:
        """`ttl` (default CACHE_TTL for an item, CACHE_NEGATIVE_TTL for an absent id), jittered, in ms."""
        if ttl is None:
            ttl = self.config.cache_ttl if entry.exists else self.config.negative_ttl
        return jittered(ttl, self.config.ttl_jitter)

    def fill_l1(self, key: str, entry: CacheEntry, generation: int) -> None:
        """Copy into L1, unless L1 is not trusted or was flushed since the caller's read began."""
        if self.trust.usable and self.trust.generation == generation and self.lru.set(key, entry):
            L1_ENTRIES.set(len(self.lru))

    def take_redis_copy(self, key: str, entry: CacheEntry, generation: int) -> bool:
        """Whether a copy read from Redis (by a read that began at `generation`) may be served: not if it is
        older than a version this process has seen (Redis lost a newer write in a failover, or missed one
        in an outage: the caller loads it again, repairing Redis). One it may serve is copied into L1."""
        if entry.version < self.lru.known_version(key):
            return False
        self.fill_l1(key, entry, generation)
        return True

    def topologies(self) -> list[Any]:
        """The cluster clients' views of the slots (nodes_manager), for requests and for batches; none
        outside a cluster."""
        views = (getattr(client, "nodes_manager", None) for client in (self.redis.client, self.bulk))
        return [view for view in views if view is not None]

    def refresh_topology(self) -> None:
        """A cluster client learns of a failover slowly: ask the cluster for its slots now, for both clients
        (the one for requests and the one for batches, which the change follower's pipeline uses). Raises
        what the client raises when no node answers; nothing to do outside a cluster."""
        for view in self.topologies():
            view.initialize()

    def refresh_topology_soon(self, now: float) -> None:
        """refresh_topology, at most every TOPOLOGY_INTERVAL (`now`: time.monotonic()), a failure absorbed
        and counted: for the background chores whose Redis calls keep failing. Seen in CI: a failed-over
        primary's address kept failing the change follower's pipeline on the batch client for over 30 s
        while every request's call had moved on."""
        if now < self._next_topology or not self.topologies():  # outside a cluster it would only count as a
            return  # success, and each success resets the breaker's run of failures
        self._next_topology = now + TOPOLOGY_INTERVAL
        self.redis.guard("topology", "-", self.refresh_topology)

    def flush_l1(self, reason: str) -> None:
        """Empty L1 (counted in cache_l1_flushes_total{reason})."""
        self.trust.new_generation()
        self.lru.clear()
        L1_ENTRIES.set(0)
        L1_FLUSHES.labels(reason).inc()

    def doubt_redis(self) -> None:
        """Redis may have missed writes (or lost them): read through to the database until the change
        follower has applied the log up to where it stands once Redis answers (cache/core/trust.py). Only a
        process that follows the log (listening, with a database) can tell when that is."""
        if self.follower is None:
            return
        self.trust.doubt_redis()
        REDIS_CATCHING_UP.set(1)
        if self.chores is not None:
            self.chores.wake()  # the chores' thread watches the catch-up: never this request's thread

    def on_breaker_change(self, closed: bool) -> None:
        self.trust.set_redis_answers(closed)
        if closed:
            self.doubt_redis()


def build(config: Config, client: redis.Redis | None = None, store: ItemStore | None = None) -> CacheProcess:
    """This process's tiers over `client` (default: the Redis that `config` names, or the embedded one)."""
    bulk = client or _client(config, max(BULK_TIMEOUT, config.redis_socket_timeout))
    client = client or _client(config, config.redis_socket_timeout)
    breaker = CircuitBreaker(config.breaker_threshold, config.breaker_cooldown)
    guard, origin = Guard(breaker), new_origin()
    process = CacheProcess(
        config=config,
        lru=LRUCache(config.l1_max_items, config.l1_ttl, max_bytes=config.l1_max_bytes, weigh=CacheEntry.held_bytes),
        redis=RedisTier(client, guard, config.key_prefix + CHANNEL, origin, config.compress_min_bytes),
        lock=FleetLock(client, guard, int(config.lock_ttl * 1000), origin),
        bloom=BloomFilter(client, guard, config.key_prefix) if config.bloom else None,
        breaker=breaker,
        store=store,
        bulk=bulk,
    )
    breaker.on_change, breaker.on_failure = process.on_breaker_change, process.doubt_redis
    return process


def start_listening(process: CacheProcess) -> None:
    """Start the pub/sub listener and the chores' thread and, with a database, the change follower and the
    inspector (one of each at work per fleet, by lease). L1 is bypassed until the listener is subscribed."""
    process.trust.set_subscribed(False)
    process.chores = Maintenance(process)
    process.listener = Listener(process.redis.client, process.redis.channel, Coherence(process), Watchdog())
    if process.store is not None:
        process.follower = ChangeFollower(process, process.store)
        process.inspector = Inspector(process, process.store)
    for worker in (process.listener, process.chores, process.follower, process.inspector):
        if worker is not None:
            worker.start()


def stop_listening(process: CacheProcess) -> None:
    for worker in (process.listener, process.chores, process.follower, process.inspector):
        if worker is not None:
            worker.stop()


def _client(config: Config, socket_timeout: float) -> redis.Redis:
    if config.redis_url and config.redis_cluster:
        return connect_cluster(config.redis_url, socket_timeout, config.redis_tls_verify)
    if config.redis_url:
        return connect(config.redis_url, socket_timeout, config.redis_tls_verify)
    from cache import embedded  # imported here: `python -m cache.embedded` must not find it loaded

    return embedded.client()
