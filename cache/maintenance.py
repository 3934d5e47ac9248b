"""A listening process's chores, on a thread of their own: never a request's (a request must not pay for
another's replay), never the listener's (a database call can take DATABASE_TIMEOUT, far past its pong
deadline). While the listener is subscribed, each pass:
- replays the writes Redis missed (cache/replay.py), at once when woken (Redis answers again);
and, while Redis answers too:
- has a Bloom filter built when it finds none (first start, flushed, disabled), every 30 s at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cache import warm
from cache.background import Background
from cache.entry import CacheEntry
from cache.redis_tier import SetOutcome

if TYPE_CHECKING:
    from cache.process import CacheProcess

logger = logging.getLogger(__name__)

PASS_INTERVAL = 0.25  # seconds between passes when nothing wakes the thread
BLOOM_CHECK_INTERVAL = 30.0  # seconds between checks that the Bloom filter exists
TOPOLOGY_INTERVAL = 1.0  # seconds between cluster topology refreshes while writes wait for a failover


class Maintenance(Background):
    thread_name = "cache-maintenance"

    def __init__(self, cache: CacheProcess, timer: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.cache, self.timer = cache, timer
        self._wake = threading.Event()
        self._next_bloom_check = self._next_topology = float("-inf")

    def stop(self, timeout: float = 5.0) -> None:
        self._wake.set()
        super().stop(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self.stopped.is_set():
            self._wake.wait(PASS_INTERVAL)
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # a bug must not end the chores for the life of the worker
                logger.exception("cache maintenance failed")

    def run_once(self) -> None:
        if not self.cache.trust.subscribed or self.stopped.is_set():
            return
        self.replay()  # while the breaker is open this is also its probe: the first call after the cooldown
        if not self.cache.trust.usable:
            return
        now = self.timer()
        if now >= self._next_bloom_check:
            self._next_bloom_check = now + BLOOM_CHECK_INTERVAL
            self._keep_bloom()

    def replay(self) -> None:
        """Write to Redis what it missed (oldest first, stopping at a failure); disable a Bloom filter that
        missed an id."""
        cache = self.cache
        if cache.pending.bloom_missed and cache.bloom is not None and cache.bloom.disable():
            cache.pending.bloom_missed = False  # it may lack an id now: stop trusting it until it is rebuilt
            self._next_bloom_check = float("-inf")
            logger.warning("a Bloom filter add failed while Redis was down: filter disabled until rebuilt")
        if not len(cache.pending):
            return
        written = cache.pending.replay(self._replay_one)
        if written:
            logger.info("replayed %d cache write(s) Redis had missed; %d still pending", written, len(cache.pending))
        nodes = getattr(cache.redis.client, "nodes_manager", None)
        if len(cache.pending) and nodes is not None and self.timer() >= self._next_topology:
            # A cluster client learns of a failover slowly; our writes wait on it: ask the cluster now.
            self._next_topology = self.timer() + TOPOLOGY_INTERVAL
            cache.redis.guard("topology", "-", nodes.initialize)

    def _replay_one(self, key: str, entry: CacheEntry, ttl_ms: int) -> SetOutcome:
        """Write one missed entry. Its announcement is this process's own, which its listener ignores, so
        this L1 is floored here: it may have taken an older copy from Redis meanwhile (another process's
        replay into an emptied Redis), and nothing else would tell it."""
        outcome = self.cache.redis.set_if_newer(key, entry, ttl_ms)
        if outcome is not SetOutcome.FAILED:
            self.cache.lru.invalidate(key, entry.version)
        return outcome

    def _keep_bloom(self) -> None:
        bloom, store = self.cache.bloom, self.cache.store
        if bloom is None or store is None:
            return
        if bloom.is_built() is False:
            warm.rebuild_bloom_in_background(self.cache, store)
