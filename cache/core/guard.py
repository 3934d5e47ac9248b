"""Every Redis call goes through one guard: on failure it is logged (op and key, never values), counted in
cache_redis_errors_total{op} and absorbed, so the cache never takes a request down; the circuit breaker
skips Redis while it is known to be down, except for what keeps Redis up with the database: a write's cache
update and the change follower's calls (Guard.even_if_open). A call Redis answers with an error (OOM at
maxmemory, READONLY, ...) is a *refusal*: Redis is up and says no, call after call, so it is logged once a
minute at most (Refusals) and counted in cache_redis_refusals_total{op} too.

The circuit breaker, one per process: after a run of failures, stop calling Redis for a while (each call
would wait out its timeout), then let one call through to see whether it is back.

closed --(threshold consecutive failures)--> open --(cooldown)--> half-open: one probe call
half-open --(probe succeeds)--> closed;  half-open --(probe fails)--> open again
A write's cache update and the change follower's calls are tried while open too (Guard.even_if_open); their
success changes nothing here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import redis

from cache.core.metrics import CIRCUIT_OPEN, REDIS_ERRORS, REDIS_REFUSALS

logger = logging.getLogger(__name__)
R = TypeVar("R")

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(
        self,
        threshold: int = 5,
        cooldown: float = 1.0,
        timer: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] | None = None,
        on_failure: Callable[[], None] | None = None,
    ) -> None:
        """`on_change(closed)` hears the circuit open (False) and close again (True), `on_failure()` every
        failure, both on the calling thread."""
        self.threshold, self.cooldown, self.timer, self.on_change = threshold, cooldown, timer, on_change
        self.on_failure = on_failure
        CIRCUIT_OPEN.set(0)
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May a call go to Redis now? While open, no; after the cooldown, exactly one (the probe)."""
        if self.state == CLOSED:  # the hot path: no lock
            return True
        with self._lock:
            if self.state == OPEN and self.timer() - self.opened_at >= self.cooldown:
                self.state = HALF_OPEN
                return True
            return False

    def success(self) -> None:
        if self.state == CLOSED and not self.failures:
            return
        with self._lock:
            was_open = self.state != CLOSED
            self.state, self.failures = CLOSED, 0
        if was_open:
            logger.warning("redis circuit closed: Redis answers again")
            CIRCUIT_OPEN.set(0)
            if self.on_change:
                self.on_change(True)

    def failure(self) -> None:
        with self._lock:
            self.failures += 1
            opening = self.state == CLOSED and self.failures >= self.threshold
            if opening or self.state == HALF_OPEN:
                self.state, self.opened_at = OPEN, self.timer()
        if self.on_failure:
            self.on_failure()
        if opening:
            logger.warning("redis circuit open after %d failures in a row: skipping Redis", self.failures)
            CIRCUIT_OPEN.set(1)
            if self.on_change:
                self.on_change(False)


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
