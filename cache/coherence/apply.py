"""What the invalidation listener hears, applied to this process's L1: the one place that happens.

A (re)subscribe flushes L1 (messages may have been lost while away) and trusts it again once Redis has
caught up with the change log (cache/core/trust.py); a lost connection stops trusting L1 and Redis; a message
drops the copy it makes stale (leaving a floor, so no slower reader puts the older version back) and wakes
any reader here waiting for that key's fill.
"""

from __future__ import annotations

import time

from cache.core.item_cache import ItemCache
from cache.core.metrics import INVALIDATION_LAG, INVALIDATIONS
from cache.core.redis_tier import FLUSH_ALL, UNVERSIONED, Invalidation


class Coherence:
    """The listener's events (cache/coherence/listener.py ListenerEvents) for one process's cache."""

    def __init__(self, cache: ItemCache) -> None:
        self.cache = cache
        self.lost = False  # the connection was lost since this process started: Redis may have missed writes

    def before_subscribe(self) -> None:
        self.cache.topology.refresh()  # a cluster client may still point at the node that just failed: ask anew

    def on_subscribed(self, reason: str) -> None:
        cache = self.cache
        if self.lost:  # first: writes made while we were away may not have reached Redis yet
            cache.trust.doubt_redis()
        cache.flush_l1(reason)
        cache.breaker.success()  # Redis just answered our SUBSCRIBE: no need to wait out the cooldown
        cache.trust.set_subscribed(True)  # also wakes the chores: the catch-up, or the Bloom filter's upkeep

    def on_lost(self) -> None:
        self.lost = True
        self.cache.trust.set_subscribed(False)
        self.cache.trust.doubt_redis()

    def on_own(self) -> None:
        INVALIDATIONS.labels("own").inc()

    def on_message(self, message: Invalidation) -> None:
        cache = self.cache
        if message.origin == cache.origin:
            self.on_own()
            return
        if message.key == FLUSH_ALL:
            cache.flush_l1(message.reason)
        else:
            cache.fills.notify(message.key)  # a reader here may be waiting for that very fill
            if message.version == UNVERSIONED:
                cache.lru.delete(message.key)
            elif not cache.lru.invalidate(message.key, message.version):
                INVALIDATIONS.labels("stale").inc()  # L1 already held that version or a newer one
                return
        INVALIDATIONS.labels("applied").inc()
        INVALIDATION_LAG.observe(max(0.0, time.time() - message.sent_at))
