"""The Bloom filter in Redis (fakeredis and real): Python and Lua agree, no false "absent", ~1% false "maybe"."""

from __future__ import annotations

import pytest

from cache.core.bloom import BloomFilter, positions, size_for
from cache.core.guard import CircuitBreaker, Guard
from cache.core.redis_tier import connect
from tests.support import free_port


@pytest.fixture
def bloom(redis_client, key_prefix) -> BloomFilter:
    return BloomFilter(redis_client, Guard(CircuitBreaker()), key_prefix)


def build(bloom: BloomFilter, ids: list[str]) -> tuple[int, int]:
    m, k = bloom.begin_build(len(ids))
    pipe = bloom.client.pipeline(transaction=False)
    bloom.add_batch(pipe, ids, m, k)
    pipe.execute()
    bloom.finish_build()
    return m, k


def test_sizing_for_one_percent():
    m, k = size_for(10_000)
    assert 95_000 < m < 96_000 and k == 7


def test_ignored_until_built(bloom):
    assert not bloom.is_built()
    assert bloom.might_contain("anything")
    assert bloom.add("early")  # nothing to add to yet, and that is no failure


def test_lua_and_python_set_the_same_bits(bloom, redis_client):
    m, k = build(bloom, [])
    assert bloom.add("Item_42-x")
    assert all(redis_client.getbit(bloom.bits, p) for p in positions("Item_42-x", m, k))
    assert bloom.might_contain("Item_42-x")


def test_no_false_absent_and_about_one_percent_false_maybe_at_capacity(bloom):
    members = [f"member-{n}" for n in range(10_000)]
    build(bloom, members)
    assert all(bloom.might_contain(i) for i in members[::25])
    false_maybe = sum(bloom.might_contain(f"stranger-{n}") for n in range(3000))
    assert false_maybe <= 60  # <= 2% of strangers get through to the database


def test_writes_during_a_rebuild_reach_the_new_filter(bloom):
    build(bloom, ["old"])
    m, k = bloom.begin_build(10)
    assert bloom.add("created-during-build")  # the live filter and the one being built both learn it
    pipe = bloom.client.pipeline(transaction=False)
    bloom.add_batch(pipe, ["scanned"], m, k)
    pipe.execute()
    bloom.finish_build()
    assert bloom.might_contain("created-during-build") and bloom.might_contain("scanned")


def test_disabled_filter_stops_answering_absent(bloom):
    build(bloom, ["a"])
    assert not bloom.might_contain("never")
    assert bloom.disable()
    assert bloom.might_contain("never")


def test_evicted_bits_drop_the_filter_instead_of_answering_absent(bloom, redis_client):
    # Under an allkeys-* maxmemory-policy Redis may evict the bits and keep the meta hash.
    build(bloom, ["member", "other"])
    redis_client.delete(bloom.bits)
    assert bloom.add("newcomer")  # must not start a bit array holding only this id
    assert bloom.might_contain("member") and bloom.might_contain("other")
    assert not bloom.is_built()  # so maintenance rebuilds it
    build(bloom, ["member"])
    redis_client.delete(bloom.bits)
    assert bloom.might_contain("member")
    assert not bloom.is_built()


def test_redis_down_means_doubt_not_absent(key_prefix):
    dead = BloomFilter(connect(f"redis://127.0.0.1:{free_port()}/0", 0.2), Guard(CircuitBreaker()), key_prefix)
    assert dead.might_contain("x")
    assert not dead.add("x")


def test_one_queued_add_of_many_ids_sets_each_ids_bits_in_both_filters_during_a_rebuild(bloom, redis_client):
    m, k = build(bloom, ["old"])
    ids = [f"bulk-{n}" for n in range(300)]
    next_m, next_k = bloom.begin_build(1000)
    pipe = bloom.client.pipeline(transaction=False)
    bloom.queue_add(pipe, ids)  # one script call for all of them (one hash tag: legal on a cluster too)
    assert pipe.execute() == [2]  # both filters
    assert all(redis_client.getbit(bloom.bits, p) for i in ids for p in positions(i, m, k))
    assert all(redis_client.getbit(bloom.next_bits, p) for i in ids for p in positions(i, next_m, next_k))
    bloom.finish_build()
    assert all(bloom.might_contain(i) for i in ids)
