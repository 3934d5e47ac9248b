from __future__ import annotations

import sys
from dataclasses import dataclass

from cache.core.lru import SLOT_BYTES, LRUCache
from tests.support import FakeClock


@dataclass(frozen=True)
class Value:
    version: int
    name: str = ""


def make(max_items: int = 3, ttl: float = 10.0) -> tuple[LRUCache[Value], FakeClock]:
    timer = FakeClock(1000.0)
    return LRUCache(max_items, ttl, timer=timer), timer


def test_get_returns_what_was_set():
    lru, _ = make()
    assert lru.set("a", Value(1, "x"))
    assert lru.get("a") == Value(1, "x")
    assert lru.get("b") is None


def test_evicts_least_recently_used_beyond_max_items():
    lru, _ = make(max_items=2)
    lru.set("a", Value(1))
    lru.set("b", Value(1))
    lru.get("a")  # a is now the most recent
    lru.set("c", Value(1))
    assert lru.get("b") is None
    assert lru.get("a") == Value(1)
    assert len(lru) == 2


def test_entry_expires_after_ttl():
    lru, timer = make(ttl=5)
    lru.set("a", Value(1))
    timer.tick(4.9)
    assert lru.get("a") == Value(1)
    timer.tick(0.2)
    assert lru.get("a") is None
    assert len(lru) == 0


def test_refuses_same_or_older_version_but_accepts_newer():
    lru, _ = make()
    lru.set("a", Value(5, "five"))
    assert not lru.set("a", Value(4, "four"))
    assert not lru.set("a", Value(5, "other five"))
    assert lru.get("a") == Value(5, "five")
    assert lru.set("a", Value(6, "six"))
    assert lru.get("a") == Value(6, "six")


def test_expired_slot_no_longer_guards_versions():
    lru, timer = make(ttl=1)
    lru.set("a", Value(5))
    timer.tick(2)
    assert lru.set("a", Value(3))


def test_invalidate_leaves_a_floor_that_refuses_older_fills():
    lru, _ = make()
    lru.set("a", Value(1))
    assert lru.invalidate("a", 2)
    assert lru.get("a") is None
    assert not lru.set("a", Value(1))  # the slow reader's old copy stays out
    assert lru.set("a", Value(2))  # the version the invalidation announced may come in
    assert lru.get("a") == Value(2)


def test_invalidate_older_than_held_is_stale():
    lru, _ = make()
    lru.set("a", Value(7))
    assert not lru.invalidate("a", 6)
    assert not lru.invalidate("a", 7)
    assert lru.get("a") == Value(7)


def test_disabled_when_max_items_is_zero():
    lru, _ = make(max_items=0)
    assert not lru.set("a", Value(1))
    assert lru.get("a") is None
    assert len(lru) == 0


def test_clear_and_delete():
    lru, _ = make()
    lru.set("a", Value(1))
    lru.set("b", Value(1))
    lru.delete("a")
    assert lru.get("a") is None and lru.get("b") == Value(1)
    lru.clear()
    assert len(lru) == 0


def test_known_version_remembers_values_and_floors_until_they_expire():
    lru, timer = make(ttl=5)
    assert lru.known_version("a") == -1
    lru.set("a", Value(3))
    assert lru.known_version("a") == 3
    lru.invalidate("a", 7)
    assert lru.known_version("a") == 7 and lru.get("a") is None
    timer.tick(6)
    assert lru.known_version("a") == -1


def weighed(max_bytes: int) -> tuple[LRUCache[Value], FakeClock]:
    """An LRU whose values weigh len(name) bytes, beside each slot's SLOT_BYTES and key."""
    timer = FakeClock(1000.0)
    return LRUCache(100, 10.0, timer=timer, max_bytes=max_bytes, weigh=lambda v: len(v.name)), timer


def slot(key: str, value: Value) -> int:
    return SLOT_BYTES + sys.getsizeof(key) + len(value.name)


def test_evicts_least_recently_used_beyond_max_bytes():
    a, b, c = Value(1, "a" * 1000), Value(1, "b" * 1000), Value(1, "c" * 1000)
    lru, _ = weighed(max_bytes=slot("a", a) * 2)
    lru.set("a", a)
    lru.set("b", b)
    lru.get("a")  # a is now the most recent
    lru.set("c", c)
    assert lru.get("b") is None and lru.get("a") == a and lru.get("c") == c
    assert lru.bytes == slot("a", a) + slot("c", c) <= lru.max_bytes


def test_a_value_heavier_than_max_bytes_is_not_kept_and_evicts_nothing():
    lru, _ = weighed(max_bytes=2000)
    lru.set("a", Value(1, "a"))
    assert not lru.set("big", Value(1, "x" * 2000))
    assert lru.get("big") is None and lru.get("a") == Value(1, "a")


def test_bytes_follow_replacement_floors_deletion_expiry_and_clear():
    lru, timer = weighed(max_bytes=10_000)
    lru.set("a", Value(1, "x" * 100))
    lru.set("a", Value(2, "x" * 10))
    assert lru.bytes == slot("a", Value(2, "x" * 10))
    lru.invalidate("a", 3)  # a floor weighs its slot and key
    lru.set("b", Value(1, "y" * 50))
    assert lru.bytes == SLOT_BYTES + sys.getsizeof("a") + slot("b", Value(1, "y" * 50))
    lru.delete("a")
    assert lru.bytes == slot("b", Value(1, "y" * 50))
    timer.tick(11)
    assert lru.get("b") is None and lru.bytes == 0
    lru.set("c", Value(1, "z"))
    lru.clear()
    assert lru.bytes == 0 and len(lru) == 0
