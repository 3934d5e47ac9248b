"""A Redis at maxmemory (noeviction) or a read-only replica refuses writes: what the cache still gets through
to it, against a real redis-server of the test's own (fakeredis has no maxmemory). The fleet-level check is
tests/integration/test_maxmemory.py."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import redis

from cache.changelog import warm
from cache.changelog.eviction import POLICIES_WARNED, policy_warning
from cache.core.entry import CacheEntry
from cache.core.guard import REFUSAL_LOG_INTERVAL, CircuitBreaker, Guard, Refusals
from cache.core.lock import FleetLock, Lease
from cache.core.metrics import REDIS_REFUSALS
from cache.core.redis_tier import RedisTier, SetOutcome
from tests.integration.maxmemory import fill
from tests.support import FakeClock, RedisServer, free_port, redis_server_available, running_cache, wait_until

CHANNEL = "test-invalidate"
OOM = "OOM command not allowed when used memory > 'maxmemory'."


@pytest.fixture
def full_redis() -> Iterator[redis.Redis]:
    """A client of a redis-server of its own at a small maxmemory, noeviction, not yet full: the test fills it."""
    if not redis_server_available():
        pytest.skip("no redis-server on PATH")
    server = RedisServer()
    server.extra_args = ["--maxmemory", "1200kb", "--maxmemory-policy", "noeviction"]
    with server:
        client = redis.Redis.from_url(server.url)
        yield client
        client.close()


def tier_of(client: redis.Redis) -> RedisTier:
    return RedisTier(client, Guard(CircuitBreaker()), CHANNEL, "writer", 10**9)


def entry(version: int) -> CacheEntry:
    return CacheEntry.build("x", version, json.dumps({"v": version}).encode())


def test_a_refused_write_leaves_a_floor_over_the_older_copy_and_is_announced(full_redis):
    tier = tier_of(full_redis)
    assert tier.set_committed("item:x", entry(1), 60_000) is SetOutcome.WRITTEN
    listener = full_redis.pubsub()
    listener.subscribe(CHANNEL)
    fill(full_redis)
    refused_before = REDIS_REFUSALS.labels("set")._value.get()
    assert tier.set_committed("item:x", entry(2), 60_000) is SetOutcome.REFUSED
    assert full_redis.hgetall("item:x") == {b"v": b"2", b"f": b"1"}  # the older body gone: a miss, at v2
    assert REDIS_REFUSALS.labels("set")._value.get() == refused_before + 1
    assert heard(listener) == ("item:x", 2)
    listener.close()


def test_a_write_a_read_only_replica_refuses_is_announced_all_the_same(full_redis):
    tier = tier_of(full_redis)
    assert tier.set_committed("item:x", entry(1), 60_000) is SetOutcome.WRITTEN
    full_redis.replicaof("127.0.0.1", free_port())  # a replica now (of nothing that answers): READONLY
    listener = full_redis.pubsub()
    listener.subscribe(CHANNEL)
    refused_before = REDIS_REFUSALS.labels("set")._value.get()
    assert tier.set_committed("item:x", entry(2), 60_000) is SetOutcome.FAILED  # the older copy is still there...
    assert full_redis.hget("item:x", "v") == b"1"
    assert REDIS_REFUSALS.labels("set")._value.get() == refused_before + 1
    assert heard(listener) == ("item:x", 2)  # ...but every process hears of v2: none serves v1 from L1 or Redis
    listener.close()


def heard(listener: redis.client.PubSub) -> tuple[str, int]:
    """The (key, version) of the first announcement `listener` hears."""
    messages: list[dict] = []

    def announced() -> bool:
        got = listener.get_message(timeout=0.1)
        messages.extend([got] if got and got["type"] == "message" else [])
        return bool(messages)

    wait_until(announced)
    message = json.loads(messages[0]["data"])
    return message["k"], message["v"]


def filled(client: redis.Redis) -> RedisTier:
    fill(client)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("anything", "x")  # it is full
    return tier_of(client)


def test_a_lease_is_taken_on_a_full_redis(full_redis):
    tier = filled(full_redis)  # without it, no change follower: nothing announces what the database commits
    lease = Lease(FleetLock(full_redis, tier.guard, 3000, "me"), "{changelog}:lease", 3000)
    assert lease.hold() is True
    assert full_redis.get("{changelog}:lease") == lease.token.encode()
    assert lease.hold() is True  # renewed


def test_the_applied_position_is_announced_on_a_full_redis(full_redis):
    tier = filled(full_redis)  # without it, a worker that doubted Redis waits 30 s to trust it again
    assert tier.announce_applied("{changelog}:applied", 7, -1) == -1
    assert tier.announce_applied("{changelog}:applied", 9, 7) == 7
    assert full_redis.get("{changelog}:applied") == b"9"


def test_refusals_are_each_counted_and_logged_at_most_once_an_interval(caplog):
    clock = FakeClock()
    refusals = Refusals(timer=clock)
    before = REDIS_REFUSALS.labels("set")._value.get()
    with caplog.at_level(logging.DEBUG, logger="cache.core.guard"):
        for _ in range(500):
            refusals.refused("set", "item:x", "OOM command not allowed")
        clock.tick(REFUSAL_LOG_INTERVAL)
        refusals.refused("set", "item:y", "OOM command not allowed")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "(499 more refusals since the last such line" in warnings[1]
    assert REDIS_REFUSALS.labels("set")._value.get() == before + 501


@pytest.mark.parametrize("policy", POLICIES_WARNED)
def test_every_evicting_policy_is_warned_about_saying_why(policy):
    warning = policy_warning(policy)
    assert warning is not None and policy in warning and "noeviction" in warning


def test_noeviction_is_supported():
    assert policy_warning("noeviction") is None


def test_a_bloom_filter_rebuild_refused_by_a_full_redis_is_no_warning_each_try(make_app, caplog, monkeypatch):
    # The chores retry a missing filter every 30 s in every worker: a Redis refusing the bits (OOM) is logged
    # once by the guard, not again by each try.
    app = make_app()
    item_cache, store = running_cache(), app.extensions["item_store"]
    monkeypatch.setattr(warm, "BLOOM_GRACE", 0.0)
    real_pipeline = item_cache.bulk.pipeline

    def refusing_pipeline(*args, **kwargs):
        pipe = real_pipeline(*args, **kwargs)
        pipe.execute = lambda *a, **k: (_ for _ in ()).throw(redis.exceptions.OutOfMemoryError(OOM))
        return pipe

    monkeypatch.setattr(item_cache.bulk, "pipeline", refusing_pipeline)
    store.upsert("a", {"n": 1})
    with caplog.at_level(logging.INFO, logger="cache.changelog.warm"):
        for _ in range(3):
            thread = warm.rebuild_bloom_in_background(item_cache, store)
            assert thread is not None
            thread.join(10)
    stops = [r for r in caplog.records if r.name == "cache.changelog.warm" and "rebuild stopped" in r.getMessage()]
    assert len(stops) == 3 and all(r.levelno == logging.INFO for r in stops)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records if r.name == "cache.changelog.warm")
