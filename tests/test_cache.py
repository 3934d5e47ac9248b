"""The cache API (cache_get / cache_set / cache_delete) on fakeredis and on a real Redis."""

from __future__ import annotations

import pytest
import redis

from cache import MISS, CacheEntry, SetOutcome, cache_delete, cache_get, cache_key, cache_set
from cache import service as cache_service
from cache.core.metrics import REDIS_ERRORS
from cache.core.redis_tier import connect
from config import load_config
from tests.support import free_port, open_breaker, running_cache, timing_out


@pytest.fixture
def cache_on(redis_client, key_prefix):
    def init(**env: str) -> redis.Redis:
        cache_service.init_cache(load_config({"CACHE_KEY_PREFIX": key_prefix, **env}), client=redis_client)
        return redis_client

    yield init
    cache_service.reset()


def entry(item_id: str, version: int, body: bytes | None = b'{"id":"x"}') -> CacheEntry:
    return CacheEntry.build(item_id, version, body)


def test_key_is_item_namespace_under_prefix(cache_on, key_prefix):
    cache_on()
    assert cache_key("42") == f"{key_prefix}item:42"


def test_miss_then_set_then_hit_from_lru(cache_on):
    cache_on()
    key = cache_key("a")
    assert cache_get(key) == (MISS, None)
    assert cache_set(key, entry("a", 1)) is SetOutcome.WRITTEN
    assert cache_get(key) == (entry("a", 1), "lru")


def test_redis_hit_is_promoted_into_lru(cache_on):
    client = cache_on()
    key = cache_key("a")
    cache_set(key, entry("a", 3, b'{"v":3}'))
    running_cache().lru.clear()  # as if another process had written it
    assert cache_get(key) == (entry("a", 3, b'{"v":3}'), "redis")
    assert cache_get(key)[1] == "lru"
    assert client.hget(key, "v") == b"3" and client.hget(key, "b") == b'{"v":3}'


def test_redis_ttl_is_spread_by_jitter(cache_on):
    client = cache_on(CACHE_TTL="100", CACHE_TTL_JITTER="0.1")
    ttls = []
    for n in range(40):
        key = cache_key(f"k{n}")
        cache_set(key, entry(f"k{n}", 1))
        ttls.append(client.pttl(key))
    assert all(89_000 <= t <= 110_000 for t in ttls)  # +-10%, less the moment it took
    assert max(ttls) - min(ttls) > 5_000  # keys written together do not expire together


def test_redis_value_keeps_version_body_load_time_and_ttl(cache_on):
    client = cache_on(CACHE_TTL="120", CACHE_TTL_JITTER="0")
    key = cache_key("a")
    cache_set(key, CacheEntry.build("a", 1, b'{"id":"a"}', load_ms=7))
    assert client.hgetall(key) == {b"v": b"1", b"b": b'{"id":"a"}', b"d": b"7", b"t": b"120000"}
    assert 110_000 < client.pttl(key) <= 120_000
    found = running_cache().redis.get(key, "a")
    assert (found.load_ms, found.ttl_ms) == (7, 120_000) and 110_000 < found.remaining_ms <= 120_000


def test_older_version_never_replaces_newer(cache_on):
    client = cache_on()
    key = cache_key("a")
    assert cache_set(key, entry("a", 5, b'{"v":"new"}')) is SetOutcome.WRITTEN
    running_cache().lru.clear()
    assert cache_set(key, entry("a", 4, b'{"v":"old"}')) is SetOutcome.NEWER  # the slow reader loses
    assert client.hget(key, "b") == b'{"v":"new"}'
    assert cache_get(key)[0].body == b'{"v":"new"}'


def test_delete_leaves_versioned_tombstone_that_blocks_older_fills(cache_on):
    client = cache_on(CACHE_NEGATIVE_TTL="7")
    key = cache_key("a")
    cache_set(key, entry("a", 2))
    cache_delete(key, version=3)
    found, tier = cache_get(key)
    assert found.version == 3 and not found.exists and tier == "lru"
    assert 0 < client.pttl(key) <= 7700  # CACHE_NEGATIVE_TTL, +-10% jitter
    running_cache().lru.clear()
    assert cache_set(key, entry("a", 2)) is SetOutcome.NEWER  # a reader that loaded v2 before the delete
    assert not cache_get(key)[0].exists
    assert cache_set(key, entry("a", 4, b'{"v":"reborn"}')) is SetOutcome.WRITTEN  # a re-create wins
    assert cache_get(key)[0].body == b'{"v":"reborn"}'


def test_plain_delete_removes_from_both_tiers(cache_on):
    client = cache_on()
    key = cache_key("a")
    cache_set(key, entry("a", 1))
    cache_delete(key)
    assert cache_get(key) == (MISS, None)
    assert client.exists(key) == 0


def test_l1_disabled_reads_from_redis_every_time(cache_on):
    cache_on(CACHE_L1_MAX_ITEMS="0")
    key = cache_key("a")
    cache_set(key, entry("a", 1))
    assert cache_get(key)[1] == "redis"
    assert cache_get(key)[1] == "redis"


def test_redis_down_is_absorbed_and_counted(key_prefix):
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2)  # the service's own client policy
    cache_service.init_cache(load_config({"CACHE_KEY_PREFIX": key_prefix}), client=dead)
    try:
        before = REDIS_ERRORS.labels("get")._value.get()
        key = cache_key("a")
        assert cache_get(key) == (MISS, None)
        assert REDIS_ERRORS.labels("get")._value.get() == before + 1
        assert cache_set(key, entry("a", 1)) is SetOutcome.FAILED  # L1 still takes it
        assert cache_get(key)[1] == "lru"
    finally:
        cache_service.reset()


def test_redis_copy_older_than_a_version_this_process_has_seen_is_a_miss(cache_on):
    """After a failover loses a write, Redis may hold an older version than one already announced."""
    client = cache_on()
    key = cache_key("a")
    cache_set(key, entry("a", 5))
    running_cache().lru.invalidate(key, 6)  # version 6 was announced...
    assert cache_get(key) == (MISS, None)  # ...so Redis' version 5 is not served
    cache_set(key, entry("a", 6, b'{"v":6}'))  # the reload repairs Redis
    assert client.hget(key, "v") == b"6"


def test_own_write_redis_missed_while_l1_untrusted_never_lets_the_older_copy_back(cache_on, monkeypatch):
    """The worker that acknowledged a write must not serve the version before it once its breaker closes
    (its own announcement never reaches its L1, and an untrusted L1 takes no entry)."""
    cache_on(REDIS_BREAKER_COOLDOWN="60")
    s, key = running_cache(), cache_key("a")
    cache_set(key, entry("a", 1))
    assert cache_get(key) == (entry("a", 1), "lru")
    open_breaker(s.breaker)  # Redis is down for this process: L1 bypassed
    monkeypatch.setattr(s.redis, "_set_if_newer", timing_out)  # and the write's own call fails too
    assert cache_set(key, entry("a", 2, b'{"v":2}')) is SetOutcome.FAILED and not s.trust.usable
    monkeypatch.undo()
    s.breaker.success()  # Redis answers again, before the change log brought it version 2
    assert cache_get(key) == (MISS, None)  # Redis still holds version 1: neither tier may serve it
