"""Miss protection: one load per key per process (single-flight), one per key across the fleet (a Redis
lock), TTL jitter, and probabilistic early refresh of hot keys (XFetch).
"""

from __future__ import annotations

import math
import random
import secrets
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

import redis

from cache.redis_tier import guard

T = TypeVar("T")

# KEYS[1]: the lock's key   ARGV[1]: the token its holder set
# returns: 1 released; 0 not ours any more (it expired, and maybe someone else holds it now)
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


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


class _Call(Generic[T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: T | None = None
        self.error: BaseException | None = None

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


class FleetLock:
    """`SET key token NX PX ttl`; released by compare-and-delete, so a holder whose lock expired never
    frees someone else's. A crashed holder's lock frees itself after `ttl_ms`."""

    def __init__(self, client: redis.Redis, ttl_ms: int, origin: str) -> None:
        self.client, self.ttl_ms, self.origin = client, ttl_ms, origin
        self._release = client.register_script(RELEASE)

    @staticmethod
    def key(item_key: str) -> str:
        """`{<item key>}:lock`: the hash tag puts the lock in its item's Redis Cluster slot, so one script
        can look at the item and take the lock (or fill the item and release it) in one step."""
        return f"{{{item_key}}}:lock"

    def new_token(self) -> str:
        return f"{self.origin}:{secrets.token_hex(8)}"

    def acquire(self, item_key: str) -> str | None:
        """A token when this caller now holds the lock, None when another does. If Redis fails, a token
        too: with no way to coordinate, loading is better than failing."""
        token = self.new_token()
        acquired = guard("lock", item_key, self.client.set, True, self.key(item_key), token, nx=True, px=self.ttl_ms)
        return token if acquired else None

    def release(self, item_key: str, token: str) -> None:
        guard("unlock", item_key, self._release, 0, keys=[self.key(item_key)], args=[token])


def backoff_delays(total: float, first: float = 0.002, cap: float = 0.05) -> list[float]:
    """Waits that double from `first` up to `cap` and add up to about `total` seconds."""
    delays, spent, delay = [], 0.0, first
    while spent < total:
        delays.append(min(delay, total - spent))
        spent += delays[-1]
        delay = min(delay * 2, cap)
    return delays


def jittered(ttl_seconds: float, jitter: float, rand: Callable[[], float] = random.random) -> int:
    """The TTL in ms, spread by +-`jitter` (0.1: +-10%) so keys written together expire apart."""
    return max(1, int(ttl_seconds * 1000 * (1 + jitter * (2 * rand() - 1))))


def should_refresh(load_ms: int, remaining_ms: int, beta: float, rand: Callable[[], float] = random.random) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh early when now - delta * beta * ln(rand()) >= expiry,
    i.e. when -delta * beta * ln(rand()) >= the TTL left. Hot keys, read often near expiry, get refreshed
    by one reader before they expire; cold ones rarely. No TTL (-1) or an unknown load time: never."""
    if beta <= 0 or load_ms <= 0 or remaining_ms < 0:
        return False
    return -load_ms * beta * math.log(max(rand(), 1e-300)) >= remaining_ms


def monotonic_ms() -> int:
    return int(time.monotonic() * 1000)
