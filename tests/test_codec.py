"""Compression in Redis: large values stored smaller, both formats decode, garbage is a miss (never a 500)."""

from __future__ import annotations

import json
import random
import string

import pytest

import cache
from cache import CacheEntry, cache_get, cache_key, cache_set
from cache import service as cache_service
from cache.core import entry as codec
from cache.core.metrics import COMPRESSION_SAVED, DECODE_ERRORS
from config import load_config
from tests.support import running_cache


def item_body(size: int) -> bytes:
    """A realistic item of about `size` bytes: reviews with varied users, ratings and text."""
    rng = random.Random(size)
    vocabulary = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(800)]
    reviews, body = [], b""
    while len(body) < size:
        text = " ".join(rng.choice(vocabulary) for _ in range(rng.randint(5, 30)))
        reviews.append({"user": f"user-{rng.randint(1, 10**6)}", "rating": rng.randint(1, 5), "text": text})
        body = json.dumps({"id": "big", "reviews": reviews, "version": 1}).encode()
    return body


@pytest.fixture
def cache_with(redis_client, key_prefix):
    def init(**env: str):
        cache_service.init_cache(load_config({"CACHE_KEY_PREFIX": key_prefix, **env}), client=redis_client)
        return redis_client

    yield init
    cache_service.reset()


def test_20_kib_item_is_stored_smaller_and_reads_back_identical(cache_with, capsys):
    client = cache_with()
    body = item_body(20 * 1024)
    saved = COMPRESSION_SAVED._value.get()
    key = cache_key("big")
    cache_set(key, CacheEntry.build("big", 1, body))
    stored = client.hget(key, "b")
    assert stored[:1] == codec.COMPRESSED and len(stored) < len(body)
    assert COMPRESSION_SAVED._value.get() - saved == len(body) - len(stored)
    running_cache().lru.clear()
    assert cache_get(key)[0].body == body
    with capsys.disabled():
        print(f"\n[compression] {len(body)} bytes of JSON stored as {len(stored)} ({len(stored) / len(body):.1%})")


def test_small_values_stay_plain_json(cache_with):
    client = cache_with()
    key = cache_key("small")
    cache_set(key, CacheEntry.build("small", 1, b'{"id":"small"}'))
    assert client.hget(key, "b") == b'{"id":"small"}'


def test_entries_written_either_way_decode_after_the_threshold_changes(redis_client, key_prefix):
    body = item_body(4096)
    cache_service.init_cache(
        load_config({"CACHE_KEY_PREFIX": key_prefix, "CACHE_COMPRESS_MIN_BYTES": "0"}), client=redis_client
    )
    cache_set(cache_key("plain"), CacheEntry.build("plain", 1, body))
    cache_service.init_cache(
        load_config({"CACHE_KEY_PREFIX": key_prefix, "CACHE_COMPRESS_MIN_BYTES": "1024"}), client=redis_client
    )
    cache_set(cache_key("packed"), CacheEntry.build("packed", 1, body))
    assert redis_client.hget(cache_key("plain"), "b") == body
    assert cache_get(cache_key("plain"))[0].body == body and cache_get(cache_key("packed"))[0].body == body
    cache_service.init_cache(
        load_config({"CACHE_KEY_PREFIX": key_prefix, "CACHE_COMPRESS_MIN_BYTES": "0"}), client=redis_client
    )
    assert cache_get(cache_key("packed"))[0].body == body  # turning compression off keeps old entries readable
    cache_service.reset()


@pytest.mark.parametrize("garbage", [b"\x02binary", b"\x01not zlib at all", b"plain text", b"\x01" + b"x\x9c\x03\x00"])
def test_a_value_that_does_not_decode_is_a_miss_and_is_deleted(cache_with, garbage):
    client = cache_with()
    key = cache_key("bad")
    client.hset(key, mapping={"v": 3, "b": garbage})
    errors = DECODE_ERRORS._value.get()
    assert cache_get(key) == (cache.MISS, None)
    assert client.exists(key) == 0 and DECODE_ERRORS._value.get() == errors + 1


def test_a_corrupt_value_is_served_from_the_database_not_a_500(make_app):
    app = make_app()
    client = app.test_client()
    client.put("/items/c1", data='{"n": 1}', headers={"Content-Type": "application/json"})
    running_cache().redis.client.hset(cache_key("c1"), "b", b"\x01garbage")
    running_cache().lru.clear()
    response = client.get("/items/c1")
    assert response.status_code == 200 and response.json["n"] == 1 and response.headers["X-Cache"] == "db"
