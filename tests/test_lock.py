"""The fleet lock on its own: exclusive, released and renewed only by its holder, freed when it expires."""

from __future__ import annotations

import pytest

from cache.core.guard import REDIS_DOWN, CircuitBreaker, Guard
from cache.core.lock import HELD_BY_OTHER, Acquired, FleetLock, Lease
from cache.core.redis_tier import connect
from tests.support import free_port, wait_until


@pytest.fixture
def lock(redis_client) -> FleetLock:
    return FleetLock(redis_client, Guard(CircuitBreaker()), ttl_ms=5000, origin="me")


def test_is_exclusive_and_only_its_holder_releases_it(lock, redis_client, key_prefix):
    key = FleetLock.for_item(f"{key_prefix}item:a")
    assert key == "{" + f"{key_prefix}item:a" + "}:lock"
    held = lock.acquire(key)
    assert isinstance(held, Acquired) and held.token.startswith("me:")
    assert lock.acquire(key) is HELD_BY_OTHER
    assert lock.release(key, "someone-elses-token") is False
    assert lock.acquire(key) is HELD_BY_OTHER
    assert lock.release(key, held.token) is True
    assert isinstance(lock.acquire(key), Acquired)


def test_only_its_holder_renews_it(lock, redis_client, key_prefix):
    key = f"{key_prefix}warm-lock"
    held = lock.acquire(key, ttl_ms=1000)
    assert isinstance(held, Acquired) and redis_client.pttl(key) <= 1000
    assert lock.renew(key, "someone-elses-token", 60_000) is False
    assert redis_client.pttl(key) <= 1000
    assert lock.renew(key, held.token, 60_000) is True
    assert 1000 < redis_client.pttl(key) <= 60_000


def test_frees_itself_when_its_holder_dies(lock, redis_client, key_prefix):
    key = f"{key_prefix}lock"
    held = lock.acquire(key, ttl_ms=50)
    assert isinstance(held, Acquired) and 0 < redis_client.pttl(key) <= 50
    wait_until(lambda: isinstance(lock.acquire(key), Acquired), timeout=5)  # it expired; the holder never released
    assert lock.renew(key, held.token) is False  # the dead holder's token is worthless now


def test_redis_down_is_said_so_never_read_as_acquired():
    dead = connect(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2)
    lock = FleetLock(dead, Guard(CircuitBreaker()), ttl_ms=5000, origin="me")
    assert lock.acquire("k") is REDIS_DOWN
    assert lock.release("k", "t") is False and lock.renew("k", "t") is False


def test_a_lease_whose_taking_call_timed_out_is_recognised_as_its_own(lock, redis_client, key_prefix):
    """Redis frozen: the SET that takes the lease times out in the client, and lands when Redis resumes."""
    key = f"{key_prefix}{{job}}:lease"
    lease, other = Lease(lock, key, 3000), Lease(lock, key, 3000)
    redis_client.set(key, lease.token, px=3000)  # what the timed-out call did; the process knows nothing
    assert lease.held is None
    assert not other.hold()  # another process cannot take it
    assert lease.hold() and lease.held is not None  # at its next look, the process holds it: no 3 s gap
    assert lease.hold() and redis_client.pttl(key) > 2000  # and renews it
