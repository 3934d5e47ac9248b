"""Single-flight, the fleet lock, backoff, jitter and XFetch, each on its own."""

from __future__ import annotations

import threading
import time

import pytest

from cache.stampede import FleetLock, SingleFlight, backoff_delays, jittered, should_refresh


def test_single_flight_runs_one_load_for_concurrent_callers():
    flight: SingleFlight[int] = SingleFlight()
    calls, started = [], threading.Event()
    release = threading.Event()

    def load() -> int:
        calls.append(1)
        started.set()
        release.wait(5)
        return 42

    results: list[tuple[int, bool]] = []
    leader = threading.Thread(target=lambda: results.append(flight.run("k", load, timeout=5)))
    leader.start()
    started.wait(5)
    followers = [threading.Thread(target=lambda: results.append(flight.run("k", load, timeout=5))) for _ in range(9)]
    for t in followers:
        t.start()
    time.sleep(0.05)
    release.set()
    for t in [leader, *followers]:
        t.join(5)
    assert len(calls) == 1
    assert sorted(results) == [(42, False)] + [(42, True)] * 9


def test_single_flight_shares_the_leaders_error_and_forgets_it():
    flight: SingleFlight[int] = SingleFlight()

    def fail() -> int:
        raise RuntimeError("db down")

    with pytest.raises(RuntimeError):
        flight.run("k", fail, timeout=1)
    assert flight.run("k", lambda: 7, timeout=1) == (7, False)  # the next call starts afresh


def test_single_flight_follower_loads_itself_when_the_leader_is_stuck():
    flight: SingleFlight[str] = SingleFlight()
    stuck = threading.Event()
    threading.Thread(target=lambda: flight.run("k", lambda: stuck.wait(5) and "late", timeout=5), daemon=True).start()
    time.sleep(0.05)
    assert flight.run("k", lambda: "own", timeout=0.1) == ("own", False)
    stuck.set()


def test_fleet_lock_is_exclusive_and_only_its_holder_releases_it(redis_client, key_prefix):
    lock = FleetLock(redis_client, ttl_ms=5000, origin="me")
    item = f"{key_prefix}item:a"
    token = lock.acquire(item)
    assert token and token.startswith("me:") and lock.key(item) == "{" + item + "}:lock"
    assert lock.acquire(item) is None
    lock.release(item, "someone-elses-token")
    assert lock.acquire(item) is None
    lock.release(item, token)
    assert lock.acquire(item) is not None


def test_fleet_lock_frees_itself_when_its_holder_dies(redis_client, key_prefix):
    lock = FleetLock(redis_client, ttl_ms=100, origin="me")
    item = f"{key_prefix}item:a"
    assert lock.acquire(item)
    assert 0 < redis_client.pttl(lock.key(item)) <= 100
    time.sleep(0.15)
    assert lock.acquire(item) is not None


def test_backoff_doubles_up_to_its_cap_and_adds_up_to_the_total():
    delays = backoff_delays(1.0, first=0.01, cap=0.08)
    assert delays[:4] == [0.01, 0.02, 0.04, 0.08] and max(delays) == 0.08
    assert sum(delays) == pytest.approx(1.0)


def test_jitter_spreads_ttl_by_the_fraction_given():
    assert jittered(100, 0.1, rand=lambda: 0.0) == 90_000
    assert jittered(100, 0.1, rand=lambda: 1.0) == 110_000
    assert jittered(100, 0.0, rand=lambda: 0.7) == 100_000


def test_xfetch_refreshes_only_near_expiry_in_proportion_to_load_time():
    # -delta * beta * ln(rand): with rand = e^-1 the margin is exactly delta * beta.
    rand = lambda: 0.36787944117144233  # noqa: E731
    assert should_refresh(load_ms=50, remaining_ms=40, beta=1.0, rand=rand)
    assert not should_refresh(load_ms=50, remaining_ms=60, beta=1.0, rand=rand)
    assert should_refresh(load_ms=50, remaining_ms=90, beta=2.0, rand=rand)  # a larger beta refreshes earlier
    assert not should_refresh(load_ms=50, remaining_ms=1, beta=0.0, rand=rand)  # off
    assert not should_refresh(load_ms=0, remaining_ms=1, beta=1.0, rand=rand)  # load time unknown
    assert not should_refresh(load_ms=50, remaining_ms=-1, beta=1.0, rand=rand)  # no TTL
