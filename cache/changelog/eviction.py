"""Which Redis maxmemory-policy the cache is safe under: said once, by the process that takes the change
follower's lease (one per fleet), when it first takes it.

Safe: `noeviction`. At maxmemory Redis refuses writes, and the cache handles a refused write: the older copy
becomes a floor and the write is announced (cache/core/redis_tier.py SET_IF_NEWER), leases and the follower's
position are still written (cache/core/lock.py TAKE_LEASE). Every other policy may evict a tombstone or a floor
while a reader that loaded the older row is still filling: the stale-set race is open again for that key.
"""

from __future__ import annotations

import logging
from typing import Any

from cache.core.guard import RedisDown
from cache.core.redis_tier import RedisTier

logger = logging.getLogger(__name__)

SUPPORTED = "noeviction"
_ANY = "it may evict any key"
_TTL = "it evicts keys with a TTL, and every item entry, tombstone, floor, lock and lease has one"
WHY = {
    "allkeys-lru": _ANY,
    "allkeys-lfu": _ANY + " (new keys first: a fresh tombstone or floor is among the least frequently used)",
    "allkeys-random": _ANY,
    "volatile-lru": _TTL,
    "volatile-lfu": _TTL + " (new keys first)",
    "volatile-random": _TTL,
    "volatile-ttl": _TTL + ", and the shortest first: locks, leases and tombstones before any item",
}

POLICIES_WARNED = tuple(WHY)


def policy_warning(policy: str) -> str | None:
    """The start-up warning for `policy`, or None when the cache is safe under it."""
    if policy == SUPPORTED:
        return None
    why = WHY.get(policy, "the cache does not know it")
    return (
        f"Redis maxmemory-policy is {policy}, which this cache does not support: {why}. An evicted tombstone or "
        "version floor lets a read that loaded the older row just before a write put it back in Redis, where "
        f"workers that did not hear of the write may serve it until CACHE_TTL. Set maxmemory-policy {SUPPORTED}: "
        "at maxmemory the cache announces every write Redis refuses, and reads go to the database"
    )


def warn_if_unsupported(tier: RedisTier) -> None:
    """Log policy_warning for the Redis behind `tier` (every node's policy, on a cluster); nothing if INFO fails."""
    info = tier.guard("info", "-", tier.client.info, "memory")
    if isinstance(info, RedisDown):
        return
    for policy in sorted(_policies(info)):
        warning = policy_warning(policy)
        if warning:
            logger.warning("%s", warning)


def _policies(info: dict[str, Any]) -> set[str]:
    if "maxmemory_policy" in info:
        return {str(info["maxmemory_policy"])}
    nodes = [node for node in info.values() if isinstance(node, dict)]  # a cluster: one INFO per node
    return {str(node["maxmemory_policy"]) for node in nodes if "maxmemory_policy" in node}
