"""The Redis circuit breaker: opens after a run of failures, skips Redis while open, probes once."""

from __future__ import annotations

import logging

import redis

import cache
from cache import CacheEntry, SetOutcome, cache_get, cache_key, cache_set
from cache import service as cache_service
from cache.core.guard import CLOSED, HALF_OPEN, OPEN, REDIS_DOWN, CircuitBreaker, Guard
from cache.core.metrics import CIRCUIT_OPEN, REDIS_ERRORS
from cache.core.redis_tier import connect
from config import load_config
from tests.support import FakeClock, RedisServer, running_cache, timing_out, wait_until


def test_opens_after_threshold_failures_in_a_row():
    b = CircuitBreaker(threshold=3, cooldown=1.0, timer=FakeClock(0.0))
    b.failure()
    b.failure()
    b.success()  # a success breaks the run
    b.failure()
    b.failure()
    assert b.state == CLOSED and b.allow()
    b.failure()
    assert b.state == OPEN and not b.allow()


def test_half_open_lets_exactly_one_probe_through_after_the_cooldown():
    timer = FakeClock(0.0)
    b = CircuitBreaker(threshold=1, cooldown=2.0, timer=timer)
    b.failure()
    timer.now = 1.9
    assert not b.allow()
    timer.now = 2.0
    assert b.allow() and b.state == HALF_OPEN
    assert not b.allow()  # only one probe at a time
    b.failure()  # the probe failed: open for another cooldown
    assert b.state == OPEN and not b.allow()
    timer.now = 4.0
    assert b.allow()
    b.success()
    assert b.state == CLOSED and b.allow()


def test_a_stopped_redis_opens_the_breaker_and_reads_stop_calling_it(key_prefix):
    with RedisServer() as server:
        client = connect(server.url, socket_timeout=0.2)
        env = {"CACHE_KEY_PREFIX": key_prefix, "REDIS_BREAKER_FAILURES": "3", "REDIS_BREAKER_COOLDOWN": "0.5"}
        cache_service.init_cache(load_config(env), client=client)
        s = running_cache()
        s.breaker.timer = timer = FakeClock(0.0)
        try:
            key = cache_key("a")
            cache_set(key, CacheEntry.build("a", 1, b'{"v":"one"}'))
            s.lru.clear()
            server.pause()
            errors = REDIS_ERRORS.labels("get")._value.get()
            for _ in range(3):
                assert cache_get(key) == (cache.MISS, None)  # each waits out the 0.2 s timeout
            assert s.breaker.state == OPEN and CIRCUIT_OPEN._value.get() == 1 and not s.trust.usable
            for _ in range(50):
                assert cache_get(key) == (cache.MISS, None)
            assert REDIS_ERRORS.labels("get")._value.get() == errors + 3  # skipped: Redis was not called
            server.resume()
            timer.now += 0.4
            assert cache_get(key) == (cache.MISS, None)  # still cooling down: not even the probe
            timer.now += 0.1
            assert cache_get(key)[1] == "redis"  # the probe, and it succeeded
            assert s.breaker.state == CLOSED and CIRCUIT_OPEN._value.get() == 0 and s.trust.usable
        finally:
            server.resume()
            cache_service.reset()


def test_a_wrong_command_is_not_an_outage(redis_client, key_prefix):
    cache_service.init_cache(
        load_config({"CACHE_KEY_PREFIX": key_prefix, "REDIS_BREAKER_FAILURES": "1"}), client=redis_client
    )
    try:
        key = cache_key("a")
        redis_client.set(key, "not a hash")  # HMGET on a string: WRONGTYPE, Redis is fine
        assert cache_get(key) == (cache.MISS, None)
        assert running_cache().breaker.state == CLOSED
    finally:
        cache_service.reset()


def test_a_call_past_an_open_breaker_changes_nothing_unless_it_is_the_probe(caplog):
    timer = FakeClock(0.0)
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, timer=timer)
    guard = Guard(breaker)
    breaker.failure()
    assert guard.even_if_open("set", "k", lambda: "OK") == "OK"  # tried, and Redis answered...
    assert breaker.state == OPEN and guard("get", "k", lambda: "hit") is REDIS_DOWN  # ...but one answer proves little
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="cache.core.guard"):
        assert guard.even_if_open("set", "k", timing_out) is REDIS_DOWN
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]  # the breaker's opening was the warning
    assert breaker.state == OPEN and breaker.opened_at == 0.0  # a failure does not stretch the cooldown
    timer.now = 1.0
    assert guard.even_if_open("set", "k", lambda: "OK") == "OK"  # past the cooldown, it is the probe
    assert breaker.state == CLOSED


def test_a_probe_that_redis_answers_with_an_error_closes_the_breaker():
    """Redis answered: it is up. The probe left the breaker half-open, refusing every call, for good."""
    timer = FakeClock(0.0)
    breaker = CircuitBreaker(threshold=1, cooldown=1.0, timer=timer)
    guard = Guard(breaker)
    breaker.failure()
    timer.now = 1.0

    def wrong_type():
        raise redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")

    assert guard("get", "k", wrong_type) is REDIS_DOWN
    assert breaker.state == CLOSED and guard("get", "k", lambda: "hit") == "hit"


def test_a_write_tries_redis_past_an_open_breaker(key_prefix, caplog):
    """Other processes may trust a Redis that answers again before this one's cooldown ends: a committed
    change must reach it then, not wait for the change log, or they would serve the version before it."""
    with RedisServer() as server:
        client = connect(server.url, socket_timeout=0.2)
        env = {"CACHE_KEY_PREFIX": key_prefix, "REDIS_BREAKER_FAILURES": "3", "REDIS_BREAKER_COOLDOWN": "60"}
        cache_service.init_cache(load_config(env), client=client)
        s, key, observer = running_cache(), cache_key("a"), connect(server.url, socket_timeout=2.0)
        try:
            cache_set(key, CacheEntry.build("a", 1, b'{"v":1}'))
            s.lru.clear()
            server.pause()
            for _ in range(3):
                assert cache_get(key) == (cache.MISS, None)  # each waits out the 0.2 s timeout
            assert s.breaker.state == OPEN
            gets, sets = REDIS_ERRORS.labels("get")._value.get(), REDIS_ERRORS.labels("set")._value.get()
            assert cache_set(key, CacheEntry.build("a", 2, b'{"v":2}')) is SetOutcome.FAILED  # tried: a timeout
            assert cache_get(key) == (cache.MISS, None)  # reads still skip Redis
            assert REDIS_ERRORS.labels("get")._value.get() == gets
            assert REDIS_ERRORS.labels("set")._value.get() == sets + 1
            server.resume()
            wait_until(observer.ping, timeout=5)
            assert cache_set(key, CacheEntry.build("a", 3, b'{"v":3}')) is SetOutcome.WRITTEN  # cooldown or not
            assert observer.hget(key, "v") == b"3"  # what every other process reads from Redis now
            assert s.breaker.state == OPEN and cache_get(key) == (cache.MISS, None)  # the probe decides, in 60 s
        finally:
            server.resume()
            observer.close()
            cache_service.reset()
