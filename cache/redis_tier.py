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

from cache import breaker as breakers
from cache import codec
from cache.entry import MISS, CacheEntry, _Miss, make_etag
from cache.metrics import DECODE_ERRORS, REDIS_ERRORS

logger = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS[1]: the item's key, a hash: v version, b body ('' for an id known to be absent), d how long the
#          database load took (ms), t the TTL it was given (ms)
# KEYS[2]: (optional) the load lock to release, if ARGV[8] is still its token; hash-tagged to KEYS[1]'s slot
# ARGV[1]: version  ARGV[2]: body  ARGV[3]: TTL (ms)  ARGV[4]: load time (ms)
# ARGV[5]: channel to announce the write on ('' for none)  ARGV[6]: the announcement
# ARGV[7]: '1' to extend the TTL when this very version is already there (a refresh or a warm)
# returns: 1 written (and announced); 0 this version is already there; -1 a newer one is there
# One slot, so it runs unchanged on Redis Cluster; the publish is atomic with the write it announces.
SET_IF_NEWER = """
local function done(result)
  if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[8] then redis.call('DEL', KEYS[2]) end
  return result
end
local held = tonumber(redis.call('HGET', KEYS[1], 'v'))
local version = tonumber(ARGV[1])
if held then
  if held > version then return done(-1) end
  if held == version then
    if ARGV[7] == '1' then
      redis.call('HSET', KEYS[1], 'd', ARGV[4], 't', ARGV[3])
      redis.call('PEXPIRE', KEYS[1], ARGV[3])
    end
    return done(0)
  end
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'b', ARGV[2], 'd', ARGV[4], 't', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return done(1)
"""

_READ_FIELDS = """
local f = redis.call('HMGET', KEYS[1], 'v', 'b', 'd', 't')
if f[1] then return {f[1], f[2], f[3] or '0', f[4] or '0', redis.call('PTTL', KEYS[1])} end
"""

# KEYS[1]: the item's key
# returns: nil when absent, else {version, body, load ms, TTL ms, remaining TTL ms} in one round trip
READ = _READ_FIELDS + "return false"

# KEYS[1]: the item's key   KEYS[2]: its load lock (hash-tagged to the same slot)
# ARGV[1]: a token   ARGV[2]: the lock's TTL (ms)
# returns: the fields, as READ, when the item is cached; 1 when the lock is now ours; 0 when another holds it
# One round trip for "still missing? then I load it": no fill can land between the look and the lock.
READ_OR_LOCK = (
    _READ_FIELDS
    + """
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""
)

# KEYS[1]: the item's key   ARGV[1]: a version the database has committed
# ARGV[2]: channel   ARGV[3]: the announcement
# returns: 0 Redis already holds that version or newer; 1 any older copy is gone and every process told
DROP_IF_OLDER = """
local held = tonumber(redis.call('HGET', KEYS[1], 'v'))
if held and held >= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3])
return 1
"""

WRITTEN, SAME, NEWER = 1, 0, -1
REDIS_ERRORS_CAUGHT = (redis.RedisError, redis.exceptions.RedisClusterException, OSError)


def connect(url: str, socket_timeout: float, cluster: bool = False, tls_verify: bool = True) -> redis.Redis:
    """A client (of one server, or of a Redis Cluster through any seed node) with short timeouts and
    exactly one immediate retry on a broken connection.

    One retry replaces a pooled connection the server closed (restart, idle kill, a cluster failover)
    without failing the call; more, or any backoff, would only lengthen the time a request waits on a
    dead Redis. Timeouts are not retried: a server that does not answer in time is down for this call.
    `tls_verify=False` accepts a self-signed certificate on rediss:// (Heroku Redis).
    """
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "protocol": 2,
    }
    if url.startswith("rediss://") and not tls_verify:
        options["ssl_cert_reqs"] = "none"
    if cluster:
        return redis.RedisCluster.from_url(url, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(url, health_check_interval=0, **options)


class RedisTier:
    def __init__(self, client: redis.Redis, compress_min_bytes: int = 1024) -> None:
        self.client = client
        self.compress_min_bytes = compress_min_bytes
        self._set_if_newer = client.register_script(SET_IF_NEWER)
        self._read = client.register_script(READ)
        self._read_or_lock = client.register_script(READ_OR_LOCK)
        self._drop_if_older = client.register_script(DROP_IF_OLDER)

    def get(self, key: str, item_id: str) -> CacheEntry | _Miss:
        """The cached entry for `key`, or MISS (also on any Redis error)."""
        fields = guard("get", key, self._read, MISS, keys=[key])
        return self._entry(key, item_id, fields) if fields else MISS

    def read_or_lock(self, key: str, item_id: str, lock_key: str, token: str, ttl_ms: int) -> CacheEntry | bool | None:
        """The cached entry if there is one by now; True: load it yourself (the lock is now yours, or the
        copy did not decode); False: another process holds the lock; None: Redis failed."""
        found = guard("lock", key, self._read_or_lock, None, keys=[key, lock_key], args=[token, ttl_ms])
        if found is None or isinstance(found, int):
            return None if found is None else bool(found)
        entry = self._entry(key, item_id, found)
        return entry if isinstance(entry, CacheEntry) else True

    def _entry(self, key: str, item_id: str, fields: list[Any]) -> CacheEntry | _Miss:
        version, stored, load_ms, ttl_ms, remaining_ms = fields
        body = codec.decode(stored)
        if body is codec.CORRUPT:
            DECODE_ERRORS.inc()
            logger.warning("redis value for key %s does not decode: deleted, treated as a miss", key)
            guard("delete", key, self.client.delete, 0, key)
            return MISS
        assert body is None or isinstance(body, bytes)
        return CacheEntry(
            version=int(version),
            body=body,
            etag=make_etag(item_id, int(version)),
            load_ms=int(load_ms),
            ttl_ms=int(ttl_ms),
            remaining_ms=int(remaining_ms),
        )

    def set_if_newer(
        self,
        key: str,
        entry: CacheEntry,
        ttl_ms: int,
        channel: str = "",
        message: bytes = b"",
        extend: bool = False,
        client: Any = None,
        release: tuple[str, str] | None = None,
    ) -> int | None:
        """Write `entry` (and publish `message` on `channel`) unless Redis holds the same or a newer
        version: WRITTEN, SAME, NEWER, or None when Redis failed. `extend`: on SAME, take the new TTL.
        `client`: a pipeline (plain or cluster) to queue the call on instead; its execute() has the result."""
        stored = codec.encode(entry.body, self.compress_min_bytes)
        args: tuple[Any, ...] = (entry.version, stored, ttl_ms, entry.load_ms, channel, message, "1" if extend else "0")
        keys = [key]
        if release is not None:  # (lock key, token): release the load lock in the same step
            keys.append(release[0])
            args += (release[1],)
        if client is not None:
            # EVAL with the script's text, not EVALSHA: nothing to preload on every node, and cluster
            # pipelines allow it (Redis caches the compiled script by its hash all the same).
            return client.execute_command("EVAL", SET_IF_NEWER, 1, key, *args)  # type: ignore[no-any-return]
        result = guard("set", key, self._set_if_newer, None, keys=keys, args=args)
        return None if result is None else int(result)

    def drop_if_older(self, key: str, version: int, channel: str, message: bytes) -> int | None:
        """Drop a cached copy older than `version` and announce it: 1 dropped/announced, 0 Redis is
        already as new, None when Redis failed."""
        result = guard("outbox", key, self._drop_if_older, None, keys=[key], args=[version, channel, message])
        return None if result is None else int(result)

    def delete(self, key: str) -> bool:
        return bool(guard("delete", key, self.client.delete, 0, key))

    def ping(self) -> bool:
        return bool(guard("ping", "-", self.client.ping, False))


def guard(op: str, key: str, call: Callable[..., Any], default: T, *args: Any, **kwargs: Any) -> Any:
    """Run one Redis call; on failure log it (op and key, never values), count it, and return `default`.
    While the circuit breaker is open the call is skipped (`default` at once, no timeout waited out)."""
    breaker = breakers.breaker
    if not breaker.allow():
        return default
    try:
        result = call(*args, **kwargs)
    except REDIS_ERRORS_CAUGHT as exc:
        REDIS_ERRORS.labels(op).inc()
        logger.warning("redis %s failed for key %s: %s: %s", op, key, type(exc).__name__, exc)
        if not isinstance(exc, redis.ResponseError):  # Redis answered: it is up, the command was wrong
            breaker.failure()
        return default
    breaker.success()
    return result


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
    info = guard("info", "-", tier.client.info, None)
    if info is None:
        return {"embedded": False, "error": "redis unavailable"}
    summary = {"embedded": False} | {name: info.get(name) for name in INFO_FIELDS}
    if hasattr(tier.client, "get_nodes"):  # a cluster: INFO above is one node's
        summary["cluster_nodes"] = len(tier.client.get_nodes())
    return summary
