"""Every Redis call goes through one guard: on failure it is logged (op and key, never values), counted in
cache_redis_errors_total{op} and absorbed, so the cache never takes a request down; the circuit breaker
skips Redis altogether while it is known to be down."""

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
        breaker = self.breaker
        if not breaker.allow():
            return REDIS_DOWN
        try:
            result = call(*args, **kwargs)
        except REDIS_ERRORS_CAUGHT as exc:
            REDIS_ERRORS.labels(op).inc()
            logger.warning("redis %s failed for key %s: %s: %s", op, key, type(exc).__name__, exc)
            if not isinstance(exc, redis.ResponseError):  # Redis answered: it is up, the command was wrong
                breaker.failure()
            return REDIS_DOWN
        breaker.success()
        return result
