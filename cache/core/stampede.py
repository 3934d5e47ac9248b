"""Miss protection in one process: one load per key (single-flight), readers woken by another process's
fill, TTL jitter, and probabilistic early refresh of hot keys (XFetch). The fleet-wide lock: cache/core/lock.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    """Threads of one process asking for the same key while its load runs wait for that load's result."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call[T]] = {}
        self._lock = threading.Lock()

    def run(self, key: str, load: Callable[[], T], timeout: float) -> tuple[T, bool]:
        """`load()`'s result, and whether this thread waited for another's call (True) or ran it."""
        with self._lock:
            call = self._calls.get(key)
            leader = call is None
            if call is None:
                call = self._calls[key] = _Call()
        if not leader:
            with self._lock:
                call.waiters += 1
            if call.done.wait(timeout):
                return call.result(), True
            return load(), False  # the leader is stuck: load anyway rather than fail
        try:
            call.value = load()
        except BaseException as exc:
            call.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            call.done.set()
        return call.value, False

    def waiting(self, key: str) -> int:
        """How many callers have waited for the load of `key` now running (tests, diagnostics)."""
        with self._lock:
            call = self._calls.get(key)
            return call.waiters if call is not None else 0


class _Call(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None
        self.waiters = 0

    def result(self) -> T:
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


class FillNotifier:
    """Readers waiting for another process's load sleep on an event that the invalidation listener sets
    when that fill is announced, instead of polling Redis blindly."""

    def __init__(self) -> None:
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()

    def wait(self, key: str, timeout: float) -> bool:
        with self._lock:
            event = self._events.setdefault(key, threading.Event())
        try:
            return event.wait(timeout)
        finally:
            with self._lock:
                if self._events.get(key) is event:
                    del self._events[key]

    def notify(self, key: str) -> None:
        with self._lock:
            event = self._events.get(key)
        if event is not None:
            event.set()


def backoff_delays(total: float, first: float = 0.002, cap: float = 0.05) -> list[float]:
    """Waits that double from `first` up to `cap` and add up to about `total` seconds."""
    delays, spent, delay = [], 0.0, first
    while spent < total:
        delays.append(min(delay, total - spent))
        spent += delays[-1]
        delay = min(delay * 2, cap)
    return delays


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)
