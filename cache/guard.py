"""Every Redis call goes through one guard: on failure it is logged (op and key, never values), counted in
cache_redis_errors_total{op} and absorbed, so the cache never takes a request down; the circuit breaker
skips Redis while it is known to be down, except for what keeps Redis up with the database: a write's cache
update and the change follower's calls (Guard.even_if_open)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from cache.breaker import CircuitBreaker
from cache.metrics import REDIS_ERRORS

logger = logging.getLogger(__name__)
R = TypeVar("R")

REDIS_ERRORS_CAUGHT = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


class RedisDown:
    """The result of a guarded call that did not happen: Redis failed, or the breaker is open."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REDIS_DOWN"


REDIS_DOWN = RedisDown()


class Guard:
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker

    def __call__(self, op: str, key: str, call: Callable[..., R], *args: Any, **kwargs: Any) -> R | RedisDown:
        """`call(*args, **kwargs)`, or REDIS_DOWN at once while the breaker is open or when the call fails."""
        if not self.breaker.allow():
            return REDIS_DOWN
        return self._call(op, key, True, call, args, kwargs)

    def even_if_open(self, op: str, key: str, call: Callable[..., R], *args: Any, **kwargs: Any) -> R | RedisDown:
        """As calling the guard, but tried while the breaker is open too: for what keeps Redis up with the
        database (cache_set, and the change follower's calls through PastBreaker). Past an open breaker a
        success leaves it open (one answer proves little, the probe decides); after the cooldown this call
        is the probe."""
        return self._call(op, key, self.breaker.allow(), call, args, kwargs)

    def _call(self, op: str, key: str, allowed: bool, call: Callable[..., R], args: Any, kwargs: Any) -> R | RedisDown:
        breaker = self.breaker
        try:
            result = call(*args, **kwargs)
        except REDIS_ERRORS_CAUGHT as exc:
            REDIS_ERRORS.labels(op).inc()
            # Past an open breaker its opening was the warning: one a write would flood the log for the outage.
            level = logging.WARNING if allowed else logging.DEBUG
            logger.log(level, "redis %s failed for key %s: %s: %s", op, key, type(exc).__name__, exc)
            if not isinstance(exc, redis.ResponseError):
                breaker.failure()
            elif allowed:  # Redis answered (the command was wrong): it is up, and a probe must not stay out
                breaker.success()
            return REDIS_DOWN
        if allowed:
            breaker.success()
        return result


class PastBreaker:
    """A guard whose every call is Guard.even_if_open: for the change follower, whose calls keep Redis up with
    what the database committed while other processes may already trust it again (like a write's; no request
    waits on them)."""

    def __init__(self, guard: Guard) -> None:
        self.guard = guard

    def __call__(self, op: str, key: str, call: Callable[..., R], *args: Any, **kwargs: Any) -> R | RedisDown:
        return self.guard.even_if_open(op, key, call, *args, **kwargs)
