"""The fleet lock: one holder across every process, for a miss's load, an early refresh and warming.

`SET key token NX PX ttl`; released and renewed only by compare-and-act on the token, so a holder whose
lock expired never frees or extends someone else's. A crashed holder's lock frees itself after its TTL.
The Lua below is the protocol's one definition: the miss path's scripts (cache/core/redis_tier.py) embed the
same snippets to look-and-lock or fill-and-release in one step.
"""

from __future__ import annotations

import copy
import secrets
from dataclasses import dataclass

import redis

from cache.core.guard import REDIS_DOWN, Guard, PastBreaker, RedisDown


def take_lua(key: str, token: str, ttl_ms: str) -> str:
    """Lua that takes the lock `key` for `token` if it is free; true when it did."""
    return f"redis.call('SET', {key}, {token}, 'NX', 'PX', {ttl_ms})"


def release_lua(key: str, token: str) -> str:
    """Lua that frees the lock `key` if `token` still holds it; 1 when it did, else 0."""
    return f"(redis.call('GET', {key}) == {token} and redis.call('DEL', {key}) or 0)"


# KEYS[1]: the lock   ARGV[1]: the holder's token
# returns: 1 released; 0 not ours any more (it expired, and maybe someone else holds it now)
RELEASE = f"return {release_lua('KEYS[1]', 'ARGV[1]')}"

# KEYS[1]: the lock   ARGV[1]: the holder's token   ARGV[2]: the new TTL (ms)
# returns: 1 renewed; 0 not ours any more
RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"


# KEYS[1]: a lease   ARGV[1]: the holder's token   ARGV[2]: its TTL (ms)
# returns: 1 taken; 0 someone holds it. SET NX, for a lease: at maxmemory Redis refuses a script's first write
# unless it is a DEL (the free key's DEL changes nothing), and a lease of a few bytes must not wait for memory:
# without it a full Redis would have no change follower (and so announce nothing) until it had room again.
TAKE_LEASE = (
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end "
    "redis.call('DEL', KEYS[1]) redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1"
)


@dataclass(frozen=True, slots=True)
class Acquired:
    """The lock is ours; `token` releases or renews it."""

    token: str


class HeldByOther:
    """Another process holds the lock."""

    __slots__ = ()


HELD_BY_OTHER = HeldByOther()
LockResult = Acquired | HeldByOther | RedisDown


class FleetLock:
    def __init__(self, client: redis.Redis, guard: Guard | PastBreaker, ttl_ms: int, origin: str) -> None:
        self.client, self.guard, self.ttl_ms, self.origin = client, guard, ttl_ms, origin
        self._release = client.register_script(RELEASE)
        self._renew = client.register_script(RENEW)
        self._take_lease = client.register_script(TAKE_LEASE)

    def past_breaker(self) -> FleetLock:
        """This lock, its calls tried while the breaker is open too (the change follower's renewals)."""
        if not isinstance(self.guard, Guard):
            raise TypeError(f"past_breaker() of a lock whose guard is a {type(self.guard).__name__}")
        lock = copy.copy(self)  # the same scripts; its origin is never asked: a Lease passes its own token
        lock.guard = PastBreaker(self.guard)
        return lock

    @staticmethod
    def for_item(item_key: str) -> str:
        """`{<item key>}:lock`: the hash tag puts it in its item's Cluster slot, so one script can touch both."""
        return f"{{{item_key}}}:lock"

    def new_token(self) -> str:
        return f"{self.origin}:{secrets.token_hex(8)}"

    def acquire(self, lock_key: str, ttl_ms: int | None = None, token: str | None = None) -> LockResult:
        token = token or self.new_token()
        taken = self.guard("lock", lock_key, self.client.set, lock_key, token, nx=True, px=ttl_ms or self.ttl_ms)
        if isinstance(taken, RedisDown):
            return REDIS_DOWN
        return Acquired(token) if taken else HELD_BY_OTHER

    def take_lease(self, lock_key: str, ttl_ms: int, token: str) -> LockResult:
        """As `acquire`, for a Lease: taken on a Redis at maxmemory too (TAKE_LEASE)."""
        taken = self.guard("lease", lock_key, self._take_lease, keys=[lock_key], args=[token, ttl_ms])
        if isinstance(taken, RedisDown):
            return REDIS_DOWN
        return Acquired(token) if taken == 1 else HELD_BY_OTHER

    def release(self, lock_key: str, token: str) -> bool:
        """True when this token held the lock and freed it."""
        return self.guard("unlock", lock_key, self._release, keys=[lock_key], args=[token]) == 1

    def renew(self, lock_key: str, token: str, ttl_ms: int | None = None) -> bool:
        """True when this token still held the lock and now holds it for `ttl_ms` more."""
        args = [token, ttl_ms or self.ttl_ms]
        return self.guard("renew", lock_key, self._renew, keys=[lock_key], args=args) == 1


class Lease:
    """A background job that one process of the fleet runs at a time: the fleet lock on `key`, renewed by
    its holder on every pass; a holder that dies frees it within `ttl_ms`, and another takes over.

    The token is the same for the life of the Lease: a take or a renewal whose reply timed out (Redis
    frozen, then back) may still have landed, and the process recognises that lease as its own at its next
    look, instead of nobody holding the job until it expires.

    `renewals` (default `lock`) is the lock the holder renews through: the change follower's is tried past
    an open breaker. A process that does not hold the lease looks and takes through `lock`, so one whose
    breaker is open leaves the lease to the others and calls nothing."""

    def __init__(self, lock: FleetLock, key: str, ttl_ms: int, renewals: FleetLock | None = None) -> None:
        self.lock, self.key, self.ttl_ms = lock, key, ttl_ms
        self.renewals = renewals or lock
        self.token = lock.new_token()
        self.held: Acquired | None = None

    def hold(self) -> bool:
        """Renew the lease if it is ours, else try to take it: True while this process holds it. A lease
        found ours again after a failed call counts as taken anew (`held` is a new object)."""
        if (self.renewals if self.held else self.lock).renew(self.key, self.token, self.ttl_ms):
            self.held = self.held or Acquired(self.token)
            return True
        taken = self.lock.take_lease(self.key, self.ttl_ms, self.token)
        self.held = taken if isinstance(taken, Acquired) else None
        return self.held is not None

    def release(self) -> None:
        if self.held is not None:
            self.lock.release(self.key, self.held.token)
            self.held = None
