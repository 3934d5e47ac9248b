"""Single-flight, the fleet lock, backoff, jitter and XFetch, each on its own."""

from __future__ import annotations

import threading

import pytest

from cache.core.entry import jittered, should_refresh
from cache.core.stampede import FillNotifier, SingleFlight, backoff_delays
from tests.support import wait_until


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
    wait_until(lambda: flight.waiting("k") == 9, timeout=5)  # every follower is waiting on the leader
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
    leading, stuck = threading.Event(), threading.Event()

    def load() -> str:
        leading.set()
        stuck.wait(5)
        return "late"

    threading.Thread(target=lambda: flight.run("k", load, timeout=5), daemon=True).start()
    assert leading.wait(5)  # the leader is inside its load
    assert flight.run("k", lambda: "own", timeout=0.01) == ("own", False)
    stuck.set()


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


def test_fill_notifier_wakes_the_waiter_for_that_key_only():
    fills = FillNotifier()
    woken: list[bool] = []
    waiter = threading.Thread(target=lambda: woken.append(fills.wait("a", timeout=5)))
    waiter.start()
    wait_until(lambda: "a" in fills._events, timeout=5)
    fills.notify("b")  # another key: nobody here waits for it
    assert waiter.is_alive()
    fills.notify("a")
    waiter.join(5)
    assert woken == [True] and fills._events == {}
