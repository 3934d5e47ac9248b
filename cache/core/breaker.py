"""A circuit breaker for Redis, one per process: after a run of failures, stop calling Redis for a while
(each call would wait out its timeout), then let one call through to see whether it is back.

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

from cache.core.metrics import CIRCUIT_OPEN

logger = logging.getLogger(__name__)

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
