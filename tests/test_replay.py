"""Writes to replay: those Redis missed, and after an outage the ones it took just before."""

from __future__ import annotations

from cache.entry import CacheEntry
from cache.redis_tier import SetOutcome
from cache.replay import RECENT_SECONDS, PendingWrites
from tests.support import FakeClock


def entry(version: int) -> CacheEntry:
    return CacheEntry.build("a", version, b"{}")


def test_keeps_the_newest_per_key_and_stops_at_the_first_failure():
    pending = PendingWrites()
    pending.remember("k1", entry(2), 1000)
    pending.remember("k1", entry(1), 1000)  # older: ignored
    pending.remember("k2", entry(5), 1000)
    written: list[tuple[str, int]] = []
    assert pending.replay(lambda k, e, t: SetOutcome.FAILED) == 0 and len(pending) == 2  # Redis still down
    assert pending.replay(lambda k, e, t: written.append((k, e.version)) or SetOutcome.WRITTEN) == 2
    assert written == [("k1", 2), ("k2", 5)] and len(pending) == 0


def test_after_an_outage_recent_acknowledged_writes_are_replayed_too():
    timer = FakeClock()
    pending = PendingWrites(timer=timer)
    pending.written("old", entry(1), 1000)
    timer.now += RECENT_SECONDS + 1
    pending.written("recent", entry(4), 1000)  # acknowledged, maybe lost by a failover
    written: list[str] = []
    assert pending.replay(lambda k, e, t: written.append(k) or SetOutcome.WRITTEN) == 0  # no outage: nothing in doubt
    pending.remember("failed", entry(9), 1000)
    assert pending.replay(lambda k, e, t: written.append(k) or SetOutcome.WRITTEN) == 2
    assert sorted(written) == ["failed", "recent"]
    assert pending.replay(lambda k, e, t: written.append(k) or SetOutcome.WRITTEN) == 0  # once per outage
