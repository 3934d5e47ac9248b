"""Coherence in one process: the listener and the L1 bypass (writes Redis missed: tests/test_trust.py).

"Another process" is played by writing through a second RedisTier with another origin id, which is
exactly what another worker's cache_set sends. Several real processes: tests/integration/.
"""

from __future__ import annotations

import pytest
import redis

import cache
from cache import CacheEntry, SetOutcome, cache_get, cache_key, cache_set
from cache import service as cache_service
from cache.coherence.listener import ConnectionSilent, Listener, Watchdog
from cache.core.guard import CircuitBreaker, Guard
from cache.core.item_cache import ItemCache
from cache.core.metrics import INVALIDATION_LAG, INVALIDATIONS, L1_FLUSHES
from cache.core.redis_tier import RedisTier, decode_message, encode_flush, encode_message
from config import load_config
from tests.support import FakeClock, running_cache, wait_until


def counter(metric, *labels) -> float:
    return (metric.labels(*labels) if labels else metric)._value.get()


def lag_count() -> float:
    return next(s.value for s in INVALIDATION_LAG.collect()[0].samples if s.name.endswith("_count"))


@pytest.fixture
def listening(key_prefix):
    def start(client: redis.Redis, **env: str) -> ItemCache:
        config = load_config({"CACHE_KEY_PREFIX": key_prefix, "REDIS_SOCKET_TIMEOUT": "0.25", **env})
        cache_service.init_cache(config, client=client)
        cache_service.start_listener()
        wait_until(lambda: running_cache().trust.usable, timeout=5)
        return running_cache()

    yield start
    cache_service.reset()


def other_process_writes(client: redis.Redis, key: str, version: int, body: bytes = b"{}") -> None:
    s = running_cache()
    entry = CacheEntry.build(s.item_id(key), version, body)
    other = RedisTier(client, Guard(CircuitBreaker()), s.redis.channel, "another-process", 1024)
    assert other.set_if_newer(key, entry, 60_000) is SetOutcome.WRITTEN


def test_subscribing_flushes_and_enables_l1(redis_client, listening):
    flushes = counter(L1_FLUSHES, "subscribe")
    listening(redis_client)
    assert cache_service.running().listener.subscribed and counter(L1_FLUSHES, "subscribe") == flushes + 1


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
    s = running_cache()
    redis_client.publish(s.redis.channel, encode_message(key, 4, "another-process"))  # an old, late message
    wait_until(lambda: counter(INVALIDATIONS, "stale") == stale + 1, timeout=5)
    assert cache_get(key) == (CacheEntry.build("a", 5, b'{"v":"five"}'), "lru")


def test_killed_subscriber_connection_resubscribes_and_flushes(redis_url, listening, key_prefix):
    client = redis.Redis.from_url(redis_url, protocol=2)
    s = listening(client)
    key = cache_key("a")
    cache_set(key, CacheEntry.build("a", 1, b'{"v":"one"}'))
    flushes = counter(L1_FLUSHES, "subscribe")
    assert client.client_kill_filter(_type="pubsub", skipme=True) >= 1
    wait_until(lambda: counter(L1_FLUSHES, "subscribe") >= flushes + 1 and s.trust.usable, timeout=10)
    assert cache_get(key)[1] == "redis"  # the flush emptied L1: possibly missed messages cannot linger
    other_process_writes(client, key, 2, b'{"v":"two"}')
    wait_until(lambda: cache_get(key)[0].version == 2, timeout=5)


class SilentPubSub:
    """A subscribed connection that confirms the subscribe, then never answers a PING; each read of it
    advances the fake clock by the time the real read would have waited."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock, self.pings = clock, 0
        self.queue = [{"type": "subscribe", "channel": b"c", "data": 1}]

    def get_message(self, timeout: float):
        self.clock.tick(timeout)
        return self.queue.pop(0) if self.queue else None

    def ping(self) -> None:
        self.pings += 1


class Recorder:
    def __init__(self) -> None:
        self.events: list[object] = []

    def before_subscribe(self) -> None: ...

    def on_subscribed(self, reason: str) -> None:
        self.events.append(("subscribed", reason))

    def on_lost(self) -> None:
        self.events.append("lost")

    def on_message(self, message) -> None:
        self.events.append(message)


def test_watchdog_gives_up_on_a_silent_connection_after_the_pong_timeout():
    clock = FakeClock(0.0)
    events = Recorder()
    listener = Listener(None, "c", events, Watchdog(ping_interval=0.5, pong_timeout=2.0, timer=clock))
    pubsub = SilentPubSub(clock)
    with pytest.raises(ConnectionSilent, match="no pong"):
        listener._watch(pubsub)
    assert events.events == [("subscribed", "subscribe")] and pubsub.pings == 1
    assert 2.5 <= clock.now <= 3.0  # one ping at 0.5 s, then 2 s without its pong


def test_watchdog_gives_up_when_the_subscribe_is_never_confirmed():
    clock = FakeClock(0.0)
    listener = Listener(None, "c", Recorder(), Watchdog(ping_interval=10.0, pong_timeout=1.0, timer=clock))
    pubsub = SilentPubSub(clock)
    pubsub.queue.clear()
    with pytest.raises(ConnectionSilent, match="no subscribe confirmation"):
        listener._watch(pubsub)
    assert 1.0 < clock.now <= 1.25


def test_a_malformed_message_is_dropped_and_a_good_one_decoded():
    assert decode_message(b"not json") is None and decode_message(b'{"k":"x"}') is None
    message = decode_message(encode_message("item:a", 3, "elsewhere"))
    assert message is not None and (message.key, message.version, message.origin) == ("item:a", 3, "elsewhere")


def test_an_unversioned_delete_drops_every_other_processs_copy(redis_client, listening):
    listening(redis_client)
    key = cache_key("a")
    cache_set(key, CacheEntry.build("a", 7, b'{"v":7}'))
    assert cache_get(key)[1] == "lru"
    applied = counter(INVALIDATIONS, "applied")
    other = RedisTier(redis_client, Guard(CircuitBreaker()), running_cache().redis.channel, "another-process", 1024)
    assert other.delete(key) is True
    wait_until(lambda: counter(INVALIDATIONS, "applied") == applied + 1, timeout=5)
    assert cache_get(key) == (cache.MISS, None)  # gone from Redis and from this process's L1


def test_own_announcements_are_counted_without_being_parsed(monkeypatch):
    """The listener tells this process's own announcements apart by how they begin: no JSON parse for them."""
    from cache.coherence import listener as listener_module

    events = RecordingEvents()
    listener = Listener(None, "c", events, Watchdog(), origin="here:1:ab")
    parsed: list[bytes] = []
    monkeypatch.setattr(listener_module, "decode_message", lambda data: parsed.append(data) or decode_message(data))
    listener._dispatch({"type": "message", "data": encode_message("item:a", 3, "here:1:ab")})
    listener._dispatch({"type": "message", "data": encode_message("item:a", 4, "here:1:abc")})  # another's
    assert events.own == 1 and len(parsed) == 1  # only the other process's message was parsed
    assert [(m.key, m.version, m.origin) for m in events.messages] == [("item:a", 4, "here:1:abc")]


def test_a_flush_message_says_its_reason_and_an_unknown_one_counts_as_admin():
    bulk = decode_message(encode_flush("elsewhere", "bulk_change"))
    assert bulk is not None and (bulk.key, bulk.reason) == ("*", "bulk_change")
    odd = decode_message(b'{"o":"x","k":"*","v":0,"t":1.0,"r":"anything a sender says"}')
    assert odd is not None and odd.reason == "admin"  # metric labels stay bounded
    plain = decode_message(encode_message("item:a", 3, "elsewhere"))
    assert plain is not None and plain.reason == "admin"


class RecordingEvents:
    def __init__(self) -> None:
        self.own, self.messages = 0, []

    def before_subscribe(self) -> None: ...

    def on_subscribed(self, reason: str) -> None: ...

    def on_lost(self) -> None: ...

    def on_message(self, message) -> None:
        self.messages.append(message)

    def on_own(self) -> None:
        self.own += 1
