"""A listening process's chores, on a thread of their own: never a request's (a request must not pay for
another's catch-up), never the listener's (a database call can take DATABASE_TIMEOUT, far past its pong
deadline). While the listener is subscribed, each pass:
- after a doubt about Redis (cache/core/trust.py), reads the change log's head from the database once Redis
  answers, and trusts Redis again when the change follower announces the log applied up to it;
- disables a Bloom filter that missed an add;
and, while Redis is trusted too:
- has a Bloom filter built when it finds none (first start, flushed, disabled), every 30 s at most.

Writes Redis missed are not replayed from here: they are in the database's change log, which the follower
applies for every process's writes, its own included, and whoever made them (cache/changelog/follower.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cache.changelog import warm
from cache.changelog.follower import applied_key
from cache.core.background import Background
from cache.core.guard import RedisDown
from cache.core.item_cache import ItemCache
from cache.core.metrics import REDIS_CATCH_UPS, REDIS_CATCHING_UP
from db import DatabaseUnavailable

logger = logging.getLogger(__name__)

PASS_INTERVAL = 0.25  # seconds between passes when nothing wakes the thread
CATCH_UP_INTERVAL = 0.02  # seconds between looks at the follower's announcement while Redis is doubted
BLOOM_CHECK_INTERVAL = 30.0  # seconds between checks that the Bloom filter exists


class Maintenance(Background):
    thread_name = "cache-maintenance"

    def __init__(self, cache: ItemCache, timer: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.cache, self.timer = cache, timer
        self._wake = cache.trust.chores_due  # set by a doubt about Redis and by a subscribe (cache/core/trust.py)
        self._next_bloom_check = float("-inf")

    def stop(self, timeout: float = 5.0) -> None:
        self._wake.set()
        super().stop(timeout)

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self.stopped.is_set():
            self._wake.wait(PASS_INTERVAL if self.cache.trust.redis_current else CATCH_UP_INTERVAL)
            self._wake.clear()
            try:
                self.run_once()
            except Exception:  # a bug must not end the chores for the life of the worker
                logger.exception("cache maintenance failed")

    def run_once(self) -> None:
        if not self.cache.trust.subscribed or self.stopped.is_set():
            return
        self.catch_up()  # while the breaker is open this is usually its probe: the first call after the cooldown
        self._disable_bloom_if_missed()
        if not self.cache.trust.usable:
            return
        now = self.timer()
        if now >= self._next_bloom_check:
            self._next_bloom_check = now + BLOOM_CHECK_INTERVAL
            self._keep_bloom()

    def catch_up(self) -> None:
        """While Redis is doubted: once it answers, take the log's head from the database; trust Redis again
        when the follower announces the log applied up to it (or after CATCH_UP_LIMIT without)."""
        cache, trust = self.cache, self.cache.trust
        REDIS_CATCHING_UP.set(0 if trust.redis_current else 1)
        if trust.redis_current or cache.store is None:
            return
        epoch, key = trust.epoch, applied_key(cache.settings.key_prefix)
        position = cache.redis.applied_position(key)
        if isinstance(position, RedisDown):
            cache.topology.refresh_soon(self.timer())  # our catch-up waits on a client that may not know of a failover
            return
        if trust.head is None:  # Redis answers: the head is taken after that, so it covers the outage
            try:
                trust.set_head(epoch, cache.store.log_head())
            except DatabaseUnavailable:
                return  # reads go to the database, and fall back on Redis while it is down (cache/core/item_cache.py)
            position = cache.redis.applied_position(key)
            if isinstance(position, RedisDown):
                return
        if trust.head is not None and position >= trust.head:
            # L1 took nothing while Redis was doubted, but what it held before may be older than what the log
            # just brought to Redis (its floors' announcements may still be on their way to the listener).
            cache.flush_l1("catch_up")
        waited = self.timer() - trust.head_at
        if trust.applied(epoch, position):
            REDIS_CATCH_UPS.labels("applied").inc()
            logger.info("redis caught up with the change log %.3f s after it answered again: trusted again", waited)
        elif trust.give_up(epoch):
            cache.flush_l1("catch_up")
            REDIS_CATCH_UPS.labels("gave_up").inc()
            logger.warning("no change follower announced the log applied within the limit: trusting Redis anyway")
        REDIS_CATCHING_UP.set(0 if trust.redis_current else 1)

    def _disable_bloom_if_missed(self) -> None:
        """A Bloom filter add failed (Redis down, or refusing writes): the filter may lack an id, and would
        answer 404 for it until the follower adds it; stop trusting it until it is rebuilt. Said at WARNING
        when a built filter is dropped (a full Redis fails every add: the rest is DEBUG)."""
        cache = self.cache
        if not cache.bloom_missed or cache.bloom is None:
            return
        built = cache.bloom.is_built()
        if cache.bloom.disable():
            cache.bloom_missed = False
            self._next_bloom_check = float("-inf")
            level = logging.WARNING if built is True else logging.DEBUG
            logger.log(level, "a Bloom filter add failed (Redis down or refusing writes): disabled until rebuilt")

    def _keep_bloom(self) -> None:
        bloom, store = self.cache.bloom, self.cache.store
        if bloom is None or store is None:
            return
        if bloom.is_built() is False:
            warm.rebuild_bloom_in_background(self.cache, store)
