"""The L2 tier: versioned entries in Redis hashes, written only forward in version by a Lua script.

Every call is wrapped: a Redis failure is logged with the op and key, counted in
cache_redis_errors_total{op}, and absorbed, so the cache never takes a request down.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cache.entry import MISS, CacheEntry, _Miss
from cache.metrics import REDIS_ERRORS

logger = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS[1]: the item's key (a hash: v = version, b = body, '' for an id known to be absent)
# ARGV[1]: version   ARGV[2]: body   ARGV[3]: TTL in milliseconds
# ARGV[4]: channel to announce the write on ('' for none)   ARGV[5]: the announcement
# returns: 1 written (and announced); 0 this version is already there (left alone); -1 a newer one is there
# One key, so it runs unchanged on Redis Cluster; the publish is atomic with the write it announces.
SET_IF_NEWER = """
local held = tonumber(redis.call('HGET', KEYS[1], 'v'))
local version = tonumber(ARGV[1])
if held then
  if held > version then return -1 end
  if held == version then return 0 end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'b', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[4] ~= '' then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
return 1
"""

WRITTEN, SAME, NEWER = 1, 0, -1
REDIS_ERRORS_CAUGHT = (redis.RedisError, OSError)


def connect(url: str, socket_timeout: float) -> redis.Redis:
    """A client with short timeouts and exactly one immediate retry on a broken connection.

    One retry replaces a pooled connection the server closed (restart, idle kill) without failing the
    call; more, or any backoff, would only lengthen the time a request waits on a dead Redis. Timeouts
    are not retried: a server that does not answer in time is treated as down for this call.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        protocol=2,
        health_check_interval=0,
    )


class RedisTier:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._set_if_newer = client.register_script(SET_IF_NEWER)

    def get(self, key: str, item_id: str) -> CacheEntry | _Miss:
        """The cached entry for `key`, or MISS (also on any Redis error)."""
        fields = self._guard("get", key, self.client.hmget, MISS, key, "v", "b")
        if fields is MISS or fields[0] is None:
            return MISS
        version, body = fields
        return CacheEntry.build(item_id, int(version), body or None)

    def set_if_newer(
        self, key: str, entry: CacheEntry, ttl_ms: int, channel: str = "", message: bytes = b""
    ) -> int | None:
        """Write `entry` (and publish `message` on `channel`) unless Redis holds the same or a newer
        version: WRITTEN, SAME, NEWER, or None when Redis failed."""
        args = (entry.version, entry.body or b"", ttl_ms, channel, message)
        result = self._guard("set", key, self._set_if_newer, None, keys=[key], args=args)
        return None if result is None else int(result)

    def delete(self, key: str) -> bool:
        return bool(self._guard("delete", key, self.client.delete, 0, key))

    def ping(self) -> bool:
        return bool(self._guard("ping", "-", self.client.ping, False))

    def _guard(self, op: str, key: str, call: Callable[..., Any], default: T, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except REDIS_ERRORS_CAUGHT as exc:
            REDIS_ERRORS.labels(op).inc()
            logger.warning("redis %s failed for key %s: %s: %s", op, key, type(exc).__name__, exc)
            return default


INFO_FIELDS = (
    "redis_version",
    "used_memory_human",
    "keyspace_hits",
    "keyspace_misses",
    "evicted_keys",
    "connected_clients",
)


def info_summary(tier: RedisTier, embedded: bool) -> dict[str, Any]:
    """The INFO fields an operator looks at first, or {"error": ...} when Redis does not answer."""
    if embedded:  # fakeredis has no INFO
        return {"embedded": True, "server": "fakeredis (in-memory, this machine only)"}
    info = tier._guard("info", "-", tier.client.info, None)
    if info is None:
        return {"embedded": False, "error": "redis unavailable"}
    return {"embedded": False} | {name: info.get(name) for name in INFO_FIELDS}
