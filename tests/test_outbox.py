"""The outbox: a cache write that never reached Redis is repaired by whichever process reaches Redis."""

from __future__ import annotations

import pytest

import cache
from cache import CacheEntry, cache_get, cache_key, cache_set
from cache.outbox import drain, record
from cache.redis_tier import connect
from config import load_config
from db import open_store
from tests.support import free_port


@pytest.fixture
def setup(redis_client, key_prefix, tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'items.sqlite3'}")
    store.init_schema()
    cache.init_cache(load_config({"CACHE_KEY_PREFIX": key_prefix}), client=redis_client)
    yield store, cache.state(), redis_client
    cache.reset()
    store.close()


def test_an_older_cached_copy_is_dropped_announced_and_the_row_cleared(setup):
    store, s, client = setup
    key = cache_key("a")
    cache_set(key, CacheEntry.build("a", 1, b'{"v":1}'))  # what Redis and L1 hold
    record(store, "a", 2)  # version 2 was committed by a writer that could not reach Redis
    pubsub = client.pubsub()
    pubsub.subscribe(s.redis.channel)
    pubsub.get_message(timeout=1)
    assert drain(store, s) == 1
    assert client.exists(key) == 0 and store.outbox_list() == []
    assert cache_get(key) == (cache.MISS, None)  # this process's L1 is floored at version 2 as well
    message = pubsub.get_message(timeout=1)
    assert message["type"] == "message" and b'"v":2' in message["data"]
    pubsub.close()


def test_a_copy_already_as_new_is_left_alone(setup):
    store, s, client = setup
    key = cache_key("a")
    cache_set(key, CacheEntry.build("a", 3, b'{"v":3}'))
    record(store, "a", 2)
    assert drain(store, s) == 1
    assert client.hget(key, "v") == b"3" and store.outbox_list() == []


def test_rows_stay_while_redis_is_unreachable(setup, key_prefix):
    store, s, _ = setup
    record(store, "a", 2)
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2)
    cache.init_cache(load_config({"CACHE_KEY_PREFIX": key_prefix}), client=dead)
    s = cache.state()
    assert drain(store, s) == 0
    assert store.outbox_list() == [("a", 2)]
