"""Every Redis call goes through one guard: on failure it is logged (op and key, never values), counted in
cache_redis_errors_total{op} and absorbed, so the cache never takes a request down; the circuit breaker
skips Redis while it is known to be down, except for what keeps Redis up with the database: a write's cache
update and the change follower's calls (Guard.even_if_open). A call Redis answers with an error (OOM at
maxmemory, READONLY, ...) is a *refusal*: Redis is up and says no, call after call, so it is logged once a
minute at most (Refusals) and counted in cache_redis_refusals_total{op} too."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from cache.core.breaker import CircuitBreaker
from cache.core.metrics import REDIS_ERRORS, REDIS_REFUSALS

logger = logging.getLogger(__name__)
R = TypeVar("R")

REDIS_ERRORS_CAUGHT = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


class RedisDown:
    """The result of a guarded call that did not happen: Redis failed, or the breaker is open."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REDIS_DOWN"


REDIS_DOWN = RedisDown()
REFUSAL_LOG_INTERVAL = 60.0  # seconds: a Redis that refuses calls is logged at most this often per process


class Refusals:
    """Counts every refusal in cache_redis_refusals_total{op}; logs the first as a warning, then at most one a
    REFUSAL_LOG_INTERVAL saying how many came since (a full Redis refuses every write: one line each would
    flood the log)."""

    def __init__(self, timer: Callable[[], float] = time.monotonic) -> None:
        self.timer = timer
        self.unlogged = 0
        self.next_log = float("-inf")
        self._lock = threading.Lock()

    def refused(self, op: str, key: str, reason: str) -> None:
        REDIS_REFUSALS.labels(op).inc()
        with self._lock:
            now = self.timer()
            quiet, since = now < self.next_log, self.unlogged
            self.unlogged = since + 1 if quiet else 0
            self.next_log = self.next_log if quiet else now + REFUSAL_LOG_INTERVAL
        if quiet:
            logger.debug("redis refused %s for key %s: %s", op, key, reason)
            return
        logger.warning(
            "redis refused %s for key %s: %s (%d more refusals since the last such line; all counted in "
            "cache_redis_refusals_total, logged at most every %.0f s)",
            op,
            key,
            reason,
            since,
            REFUSAL_LOG_INTERVAL,
        )


class Guard:
    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.refusals = Refusals()

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
            if isinstance(exc, redis.ResponseError):
                self.refusals.refused(op, key, f"{type(exc).__name__}: {exc}")
                if allowed:  # Redis answered: it is up, and a probe must not stay out
                    breaker.success()
                return REDIS_DOWN
            # Past an open breaker its opening was the warning: one a write would flood the log for the outage.
            level = logging.WARNING if allowed else logging.DEBUG
            logger.log(level, "redis %s failed for key %s: %s: %s", op, key, type(exc).__name__, exc)
            breaker.failure()
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
