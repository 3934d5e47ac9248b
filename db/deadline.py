"""A request's deadline: what is left of REQUEST_TIMEOUT, passed to everything the request waits for."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


class DeadlineExceeded(Exception):
    """The request's time ran out while waiting for `waiting_for`; a write was rolled back, nothing committed."""

    def __init__(self, waiting_for: str) -> None:
        super().__init__(f"the request's deadline ran out waiting for {waiting_for}")
        self.waiting_for = waiting_for


@dataclass(frozen=True, slots=True)
class Deadline:
    expires_at: float  # on `clock`'s scale; math.inf: never
    clock: Callable[[], float] = field(default=time.monotonic, compare=False)

    @classmethod
    def after(cls, seconds: float, clock: Callable[[], float] = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    @classmethod
    def never(cls) -> Deadline:
        """No time limit (tools, tests, the store's unconditional calls)."""
        return cls(math.inf)

    def remaining(self) -> float:
        """Seconds left, never below 0 (inf for `never`)."""
        return max(0.0, self.expires_at - self.clock())

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def cap(self, seconds: float) -> float:
        """`seconds`, or what is left if that is less: a wait of its own that must also fit the deadline."""
        return min(seconds, self.remaining())

    def check(self, waiting_for: str) -> float:
        """What is left; DeadlineExceeded (naming what the caller was about to wait for) when nothing is."""
        left = self.remaining()
        if left <= 0.0:
            raise DeadlineExceeded(waiting_for)
        return left
