"""Coherence in one process: the listener, the L1 bypass, the replay of writes Redis missed.

"Another process" is played by writing through a second RedisTier with another origin id, which is
exactly what another worker's cache_set sends. Several real processes: tests/integration/.
"""

from __future__ import annotations

import time

import pytest
import redis

import cache
from cache import CacheEntry, cache_get, cache_key, cache_set
from cache.invalidation import encode_message
from cache.metrics import INVALIDATION_LAG, INVALIDATIONS, L1_FLUSHES
from cache.redis_tier import RedisTier, connect
from config import load_config
from tests.support import RedisServer, TcpProxy, wait_until


def counter(metric, *labels) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


def lag_count() -> float:
    return next(s.value for s in INVALIDATION_LAG.collect()[0].samples if s.name.endswith("_count"))


@pytest.fixture
def listening(key_prefix):
    def start(client: redis.Redis, **env: str) -> cache._State:
        config = load_config({"CACHE_KEY_PREFIX": key_prefix, "REDIS_SOCKET_TIMEOUT": "0.25", **env})
        cache.init_cache(config, client=client, listen=True)
        wait_until(lambda: cache.state().l1_usable, timeout=5)
        return cache.state()

    yield start
    cache.reset()


def other_process_writes(client: redis.Redis, key: str, version: int, body: bytes = b"{}") -> None:
    s = cache.state()
    entry = CacheEntry.build(key[s.key_start :], version, body)
    RedisTier(client).set_if_newer(key, entry, 60_000, s.channel, encode_message(key, version, "another-process"))


def test_subscribing_flushes_and_enables_l1(redis_client, listening):
    flushes = counter(L1_FLUSHES, "subscribe")
    s = listening(redis_client)
    assert s.listener.subscribed and counter(L1_FLUSHES, "subscribe") == flushes + 1


def test_write_by_another_process_invalidates_l1(redis_client, listening):
    listening(redis_client)
    key = cache_key("a")
    cache_set(key, CacheEntry.build("a", 1, b'{"v":1}'))
    assert cache_get(key)[1] == "lru"
    applied, lags = counter(INVALIDATIONS, "applied"), lag_count()
    other_process_writes(redis_client, key, 2, b'{"v":2}')
    wait_until(lambda: counter(INVALIDATIONS, "applied") == applied + 1, timeout=5)
    assert cache_get(key) == (CacheEntry.build("a", 2, b'{"v":2}'), "redis")
    assert cache_get(key)[1] == "lru"
    assert lag_count() == lags + 1


def test_own_and_stale_messages_leave_l1_alone(redis_client, listening):
    listening(redis_client)
    key = cache_key("a")
    own, stale = counter(INVALIDATIONS, "own"), counter(INVALIDATIONS, "stale")
    cache_set(key, CacheEntry.build("a", 5, b'{"v":"five"}'))
    wait_until(lambda: counter(INVALIDATIONS, "own") == own + 1, timeout=5)
    s = cache.state()
    redis_client.publish(s.channel, encode_message(key, 4, "another-process"))  # an old, late message
    wait_until(lambda: counter(INVALIDATIONS, "stale") == stale + 1, timeout=5)
    assert cache_get(key) == (CacheEntry.build("a", 5, b'{"v":"five"}'), "lru")


def test_killed_subscriber_connection_resubscribes_and_flushes(redis_url, listening, key_prefix):
    client = redis.Redis.from_url(redis_url, protocol=2)
    s = listening(client)
    key = cache_key("a")
    cache_set(key, CacheEntry.build("a", 1, b'{"v":"one"}'))
    flushes = counter(L1_FLUSHES, "subscribe")
    assert client.client_kill_filter(_type="pubsub", skipme=True) >= 1
    wait_until(lambda: counter(L1_FLUSHES, "subscribe") >= flushes + 1 and s.l1_usable, timeout=10)
    assert cache_get(key)[1] == "redis"  # the flush emptied L1: possibly missed messages cannot linger
    other_process_writes(client, key, 2, b'{"v":"two"}')
    wait_until(lambda: cache_get(key)[0].version == 2, timeout=5)


def test_write_missed_by_a_stopped_redis_is_replayed_when_it_answers(listening):
    with RedisServer() as server:
        client = connect(server.url, socket_timeout=0.25)
        s = listening(client)
        key = cache_key("a")
        cache_set(key, CacheEntry.build("a", 1, b'{"v":"one"}'))
        server.pause()  # SIGSTOP: the data stays, the server does not answer
        try:
            assert cache_set(key, CacheEntry.build("a", 2, b'{"v":"two"}'))  # the DB write succeeded; absorbed
            assert len(s.pending) == 1
            wait_until(lambda: not s.l1_usable, timeout=10)  # the watchdog notices; L1 bypassed
        finally:
            server.resume()
        wait_until(lambda: len(s.pending) == 0 and s.l1_usable, timeout=15)
        assert client.hget(key, "v") == b"2" and client.hget(key, "b") == b'{"v":"two"}'


def test_watchdog_detects_a_silent_connection_and_bypasses_l1(listening):
    with RedisServer() as server:
        proxy = TcpProxy(server.port)
        try:
            s = listening(connect(proxy.url, socket_timeout=0.25))
            key = cache_key("a")
            # Through a Python proxy on a busy machine a first call can outlast the 0.25 s timeout: retry.
            wait_until(lambda: cache_set(key, CacheEntry.build("a", 1, b'{"v":"one"}')) and cache_get(key)[1] == "lru")
            watchdog = counter(L1_FLUSHES, "watchdog")
            proxy.pause()
            paused_at = time.monotonic()
            wait_until(lambda: not s.l1_usable, timeout=10)
            detected_after = time.monotonic() - paused_at
            assert detected_after < s.listener.ping_interval + s.listener.pong_timeout + 1.0
            assert cache_get(key) == (cache.MISS, None)  # L1 bypassed; Redis does not answer in time
            proxy.resume()
            wait_until(lambda: s.l1_usable, timeout=10)
            assert counter(L1_FLUSHES, "watchdog") == watchdog + 1
            assert cache_get(key)[1] == "redis"
        finally:
            proxy.close()
