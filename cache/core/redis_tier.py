"""The L2 tier: versioned entries in Redis hashes, written only forward in version by one Lua script that
also announces the write to every process (pub/sub). Every call goes through the guard (cache/core/guard.py).
"""

from __future__ import annotations

import enum
import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cache.core.entry import CORRUPT, MISS, CacheEntry, _Miss, decode_body, encode_body, make_etag
from cache.core.guard import REDIS_DOWN, Guard, RedisDown
from cache.core.lock import HELD_BY_OTHER, Acquired, FleetLock, HeldByOther, release_lua, take_lua
from cache.core.metrics import DECODE_ERRORS

logger = logging.getLogger(__name__)

# ---- announcements: what the write scripts publish on the invalidation channel, atomically with the
# write, and every process's listener hears, as JSON {"k": key, "v": version, "o": sender's origin,
# "t": sender's wall-clock time}; a whole-L1 flush has the key FLUSH_ALL and its reason in "r".

CHANNEL = "cache-invalidate"
FLUSH_ALL = "*"  # the key of a message that tells every process to flush its whole L1
UNVERSIONED = -1  # the version of a message that drops a key whatever version a process holds
FLUSH_REASONS = ("admin", "bulk_change")  # a flush message's reasons (metric labels: any other is "admin")


def new_origin() -> str:
    """An id for this process's messages, so it can recognise (and ignore) its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def encode_message(key: str, version: int, origin: str) -> bytes:
    """An announcement of `key` at `version`, the origin first: its sender skips it unparsed (`own_marker`)."""
    return json.dumps({"o": origin, "k": key, "v": version, "t": time.time()}, separators=(",", ":")).encode()


def encode_flush(origin: str, reason: str) -> bytes:
    """An announcement that every process flushes its whole L1, counted under `reason` (FLUSH_REASONS)."""
    return json.dumps(
        {"o": origin, "k": FLUSH_ALL, "v": 0, "t": time.time(), "r": reason}, separators=(",", ":")
    ).encode()


def own_marker(origin: str) -> bytes:
    """How every announcement encode_message makes for `origin` begins."""
    return b'{"o":' + json.dumps(origin).encode() + b","


@dataclass(frozen=True, slots=True)
class Invalidation:
    key: str
    version: int
    origin: str
    sent_at: float  # the sender's wall clock
    reason: str = "admin"  # a flush's (key FLUSH_ALL) reason, one of FLUSH_REASONS


def decode_message(data: bytes) -> Invalidation | None:
    """The message, or None (logged) when it is malformed."""
    try:
        payload = json.loads(data)
        reason = payload.get("r") if payload.get("r") in FLUSH_REASONS else "admin"
        return Invalidation(str(payload["k"]), int(payload["v"]), str(payload["o"]), float(payload["t"]), reason)
    except (ValueError, KeyError, TypeError, AttributeError):
        logger.warning("ignored a malformed invalidation message (%d bytes)", len(data))
        return None


# KEYS[1]: the item's key, a hash: v version, b body ('' for an id known to be absent), d how long the
#          database load took (ms), t the TTL it was given (ms); or a *floor* {v, f=1}: "version v was
#          committed, its body is not here": a miss for readers that refuses any older fill
# KEYS[2]: (optional) the load lock to release, if ARGV[8] is still its token; hash-tagged to KEYS[1]'s slot
# ARGV[1]: version  ARGV[2]: body  ARGV[3]: TTL (ms)  ARGV[4]: load time (ms)
# ARGV[5]: channel to announce the write on ('' for none)  ARGV[6]: the announcement
# ARGV[7]: 'extend' gives the TTL to this very version if it is already there (a refresh or a warm)
# returns: 1 written (and announced); 0 this version is already there; -1 a newer one is there;
#          {-2, error}: Redis refused the write (OOM at maxmemory): an older copy there became a floor at this
#          version, and the write is announced all the same, so no process keeps serving the older copy. The
#          DEL frees more than the floor takes, and Redis refuses for memory only a script's first write (never
#          a DEL, nor a PUBLISH): the floor lands on a full Redis. Refused the DEL too (READONLY): announced,
#          and the refusal is the script's error (the older copy is still there).
# One slot, so it runs unchanged on Redis Cluster; the publish is atomic with the write it announces.
SET_IF_NEWER = f"""
local function done(result)
  if KEYS[2] then local _ = {release_lua("KEYS[2]", "ARGV[8]")} end
  return result
end
local held = tonumber(redis.call('HGET', KEYS[1], 'v'))
local version = tonumber(ARGV[1])
if held then
  if held > version then return done(-1) end
  if held == version and redis.call('HEXISTS', KEYS[1], 'f') == 0 then
    if ARGV[7] == 'extend' then
      redis.call('HSET', KEYS[1], 'd', ARGV[4], 't', ARGV[3])
      redis.call('PEXPIRE', KEYS[1], ARGV[3])
    end
    return done(0)
  end
end
local written = redis.pcall('HSET', KEYS[1], 'v', ARGV[1], 'b', ARGV[2], 'd', ARGV[4], 't', ARGV[3])
if type(written) == 'table' and written.err then
  local floored = not held or redis.pcall('DEL', KEYS[1]) == 1
  if held and floored then
    redis.call('HSET', KEYS[1], 'v', ARGV[1], 'f', '1')
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
  end
  if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
  if not floored then return done(redis.error_reply(written.err)) end
  return done({{-2, written.err}})
end
redis.call('HDEL', KEYS[1], 'f')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if ARGV[5] ~= '' then redis.call('PUBLISH', ARGV[5], ARGV[6]) end
return done(1)
"""

_READ_FIELDS = """
local f = redis.call('HMGET', KEYS[1], 'v', 'b', 'd', 't', 'f')
if f[1] and not f[5] then return {f[1], f[2], f[3] or '0', f[4] or '0', redis.call('PTTL', KEYS[1])} end
"""

# KEYS[1]: the item's key
# returns: nil when absent (or a floor), else {version, body, load ms, TTL ms, remaining TTL ms} in one round trip
READ = _READ_FIELDS + "return false"

# KEYS[1]: the item's key   KEYS[2]: its load lock (hash-tagged to the same slot)
# ARGV[1]: a token   ARGV[2]: the lock's TTL (ms)
# returns: the fields, as READ, when the item is cached; 1 when the lock is now ours; 0 when another holds it
# One round trip for "still missing? then I load it": no fill can land between the look and the lock.
READ_OR_LOCK = _READ_FIELDS + f"if {take_lua('KEYS[2]', 'ARGV[1]', 'ARGV[2]')} then return 1 end return 0"

# KEYS[1..n]: item keys (one slot: on a Redis Cluster, one key a call)   ARGV[1]: the floors' TTL (ms)
# ARGV[2]: channel   ARGV[3], ARGV[4]: the announcements' origin and time   ARGV[6 + i]: KEYS[i]'s version
# ARGV[5]: the most new floors announced key by key; above it ARGV[6] (an L1 flush; '' none) is published once
# returns: {r1..rn, error}: ri 1 an older copy (or none) is now a floor at that version; 0 that version or
#          newer was there (the service's own write: one HGET, no announcement); -1 refused (READONLY, the
#          DEL failed), announced all the same; error: the first refusal's message ('' for none)
# A floor, not a DEL: a reader that loaded the older row before the commit puts it back in neither Redis nor L1
# (each announcement follows its floor). DEL first: at maxmemory it lets the floors through (SET_IF_NEWER).
FLOOR = """
local announce, results, err = {}, {}, ''
for i, key in ipairs(KEYS) do
  local held = tonumber(redis.call('HGET', key, 'v'))
  if held and held >= tonumber(ARGV[6 + i]) then
    results[i] = 0
  else
    local deleted = redis.pcall('DEL', key)
    if type(deleted) == 'table' and deleted.err then
      results[i], err = -1, (err ~= '' and err or deleted.err)
    else
      redis.call('HSET', key, 'v', ARGV[6 + i], 'f', '1')
      redis.call('PEXPIRE', key, ARGV[1])
      results[i] = 1
    end
    announce[#announce + 1] = i
  end
end
if #announce > tonumber(ARGV[5]) then
  if ARGV[6] ~= '' then redis.call('PUBLISH', ARGV[2], ARGV[6]) end
else
  for _, i in ipairs(announce) do
    local message = {o = ARGV[3], k = KEYS[i], v = tonumber(ARGV[6 + i]), t = tonumber(ARGV[4])}
    redis.call('PUBLISH', ARGV[2], cjson.encode(message))
  end
end
results[#results + 1] = err
return results
"""

# KEYS[1]: the item's key   ARGV[1]: channel   ARGV[2]: the announcement
# returns: how many keys were deleted (0 or 1); every process is told either way
DELETE = "local n = redis.call('DEL', KEYS[1]) redis.call('PUBLISH', ARGV[1], ARGV[2]) return n"


# KEYS[1]: where the change follower announces how far the log is applied
# ARGV[1]: the follower's position now   ARGV[2]: the least the follower expects there (-1: anything)
# returns what was there (-1: nothing); if that is below ARGV[2], Redis lost writes: nothing is set.
# Only ever raised: a lagging follower (another holder's, not yet told) cannot lower it. DEL, then SET: a few
# bytes replaced, and Redis at maxmemory refuses a script's first write unless it is a DEL (SET_IF_NEWER).
ANNOUNCE_APPLIED = """
local held = tonumber(redis.call('GET', KEYS[1]) or '-1')
if held < tonumber(ARGV[2]) then return held end
if tonumber(ARGV[1]) > held then
  redis.call('DEL', KEYS[1])
  redis.call('SET', KEYS[1], ARGV[1])
end
return held
"""


class SetOutcome(enum.Enum):
    WRITTEN = "written"  # stored and announced
    SAME = "same"  # this version was already there
    NEWER = "newer"  # a newer version is there: refused (the stale-set race, closed)
    REFUSED = "refused"  # Redis refused the write (OOM, READONLY): an older copy became a floor; announced
    FAILED = "failed"  # Redis failed: nothing stored


NO_ANNOUNCEMENT = ("", b"")  # an empty channel: SET_IF_NEWER publishes nothing
_OUTCOMES = {1: SetOutcome.WRITTEN, 0: SetOutcome.SAME, -1: SetOutcome.NEWER}


@dataclass(frozen=True, slots=True)
class Found:
    """The item is cached (by now): no load needed."""

    entry: CacheEntry


ReadOrLock = Found | Acquired | HeldByOther | RedisDown


def connect(url: str, socket_timeout: float, tls_verify: bool = True) -> redis.Redis:
    """A client of one server with short timeouts and exactly one immediate retry on a broken connection.

    One retry replaces a pooled connection the server closed (restart, idle kill, failover); more, or any
    backoff, would only lengthen the time a request waits on a dead Redis. Timeouts are not retried.
    `tls_verify=False` accepts a self-signed certificate on rediss:// (Heroku Redis)."""
    return redis.Redis.from_url(url, health_check_interval=0, **_options(url, socket_timeout, tls_verify))


def connect_cluster(url: str, socket_timeout: float, tls_verify: bool = True) -> redis.Redis:
    """A Redis Cluster client through any seed node, with the same timeouts and retry as `connect`."""
    return redis.RedisCluster.from_url(url, **_options(url, socket_timeout, tls_verify))  # type: ignore[return-value]


def _options(url: str, socket_timeout: float, tls_verify: bool) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        "protocol": 2,
    }
    if url.startswith("rediss://") and not tls_verify:
        options["ssl_cert_reqs"] = "none"
    return options


class RedisTier:
    """Reads and version-guarded writes of item entries; writes are announced on `channel` as `origin`."""

    def __init__(self, client: redis.Redis, guard: Guard, channel: str, origin: str, compress_min_bytes: int) -> None:
        self.client, self.guard, self.channel, self.origin = client, guard, channel, origin
        self.compress_min_bytes = compress_min_bytes
        self._set_if_newer = client.register_script(SET_IF_NEWER)
        self._read = client.register_script(READ)
        self._read_or_lock = client.register_script(READ_OR_LOCK)
        self._delete = client.register_script(DELETE)
        self._announce_applied = client.register_script(ANNOUNCE_APPLIED)

    def get(self, key: str, item_id: str) -> CacheEntry | _Miss:
        """The cached entry for `key`, or MISS (also when Redis failed)."""
        fields = self.guard("get", key, self._read, keys=[key])
        if isinstance(fields, RedisDown) or not fields:
            return MISS
        return self._entry(key, item_id, fields)

    def read_or_lock(self, key: str, item_id: str, lock_key: str, token: str, ttl_ms: int) -> ReadOrLock:
        """In one step: the entry if cached by now, else the load lock for `token` (or who holds it)."""
        for _ in range(2):  # an undecodable copy is deleted by _entry; look once more
            found = self.guard("lock", key, self._read_or_lock, keys=[key, lock_key], args=[token, ttl_ms])
            if isinstance(found, RedisDown):
                return REDIS_DOWN
            if isinstance(found, int):
                return Acquired(token) if found else HELD_BY_OTHER
            entry = self._entry(key, item_id, found)
            if isinstance(entry, CacheEntry):
                return Found(entry)
        return REDIS_DOWN  # it kept coming back undecodable: load without the lock's help

    def set_if_newer(self, key: str, entry: CacheEntry, ttl_ms: int, release: Acquired | None = None) -> SetOutcome:
        """Store and announce `entry` unless Redis holds this version or a newer one; `release` frees the
        load lock (`{key}:lock`) in the same step."""
        keys, args = [key], self._own_args(key, entry, ttl_ms, "")
        if release is not None:
            keys.append(FleetLock.for_item(key))
            args.append(release.token)
        return self._outcome(key, self.guard("set", key, self._set_if_newer, keys=keys, args=args))

    def set_committed(self, key: str, entry: CacheEntry, ttl_ms: int) -> SetOutcome:
        """As `set_if_newer`, for a change the database committed: tried even while this process's breaker is
        open (cache_set says why)."""
        args = self._own_args(key, entry, ttl_ms, "")
        return self._outcome(key, self.guard.even_if_open("set", key, self._set_if_newer, keys=[key], args=args))

    def refresh(self, key: str, entry: CacheEntry, ttl_ms: int) -> SetOutcome:
        """As `set_if_newer`, and the same version already there takes the new TTL (an early refresh)."""
        args = self._own_args(key, entry, ttl_ms, "extend")
        return self._outcome(key, self.guard("set", key, self._set_if_newer, keys=[key], args=args))

    def queue_warm(self, pipe: Any, key: str, entry: CacheEntry, ttl_ms: int) -> None:
        """Queue a refresh without announcement on `pipe` (a warm writes what the database says: no L1 is
        older). EVAL, not EVALSHA: nothing to preload on every node, and cluster pipelines allow it."""
        args = self._args(entry, ttl_ms, "extend", NO_ANNOUNCEMENT)
        pipe.execute_command("EVAL", SET_IF_NEWER, 1, key, *args)

    def queue_floors(
        self, pipe: Any, keys: list[str], versions: list[int], ttl_ms: int, origin: str, most: int
    ) -> None:
        """Queue FLOOR on `pipe` for `keys` at `versions`, announced as `origin`: up to `most` new floors key
        by key, more by one flush of every L1 ("bulk_change"); none if `most` < 0 (the caller announces)."""
        flush = encode_flush(origin, "bulk_change") if most >= 0 else b""
        args = [ttl_ms, self.channel, origin, repr(time.time()), max(most, 0), flush, *versions]
        pipe.execute_command("EVAL", FLOOR, len(keys), *keys, *args)

    def queue_set(self, pipe: Any, key: str, entry: CacheEntry, ttl_ms: int, origin: str) -> None:
        """Queue SET_IF_NEWER on `pipe`, announced as `origin`."""
        args = self._args(entry, ttl_ms, "", (self.channel, encode_message(key, entry.version, origin)))
        pipe.execute_command("EVAL", SET_IF_NEWER, 1, key, *args)

    def delete(self, key: str) -> bool | RedisDown:
        """Delete `key` whatever its version and tell every process to drop its copy; True if it was cached."""
        message = encode_message(key, UNVERSIONED, self.origin)
        result = self.guard("delete", key, self._delete, keys=[key], args=[self.channel, message])
        return result if isinstance(result, RedisDown) else result == 1

    def announce_applied(self, key: str, position: int, expected: int) -> int | RedisDown:
        """Raise the announced position at `key` to `position`, unless it is below `expected`; what was there.
        Tried while the breaker is open too, as the change follower's other calls are."""
        held = self.guard.even_if_open("announce", key, self._announce_applied, keys=[key], args=[position, expected])
        return held if isinstance(held, RedisDown) else int(held)

    def applied_position(self, key: str) -> int | RedisDown:
        """The position the change follower announced at `key` (-1: none)."""
        held = self.guard("applied", key, self.client.get, key)
        return held if isinstance(held, RedisDown) else int(held or -1)

    def ping(self) -> bool:
        return self.guard("ping", "-", self.client.ping) is True

    def _own_args(self, key: str, entry: CacheEntry, ttl_ms: int, mode: str) -> list[Any]:
        """SET_IF_NEWER's ARGV for this process's own write of `entry`, announced under its origin."""
        return self._args(entry, ttl_ms, mode, (self.channel, encode_message(key, entry.version, self.origin)))

    def _args(self, entry: CacheEntry, ttl_ms: int, mode: str, announce: tuple[str, bytes]) -> list[Any]:
        """SET_IF_NEWER's ARGV[1..7]."""
        stored = encode_body(entry.body, self.compress_min_bytes)
        return [entry.version, stored, ttl_ms, entry.load_ms, *announce, mode]

    def _outcome(self, key: str, result: object) -> SetOutcome:
        """SET_IF_NEWER's answer (from a call or a pipeline), a refusal counted and logged by the guard."""
        if isinstance(result, RedisDown):
            return SetOutcome.FAILED
        if isinstance(result, list):
            self.guard.refusals.refused("set", key, result[1].decode(errors="replace"))
            return SetOutcome.REFUSED
        return _OUTCOMES[int(result)]  # type: ignore[call-overload]

    def _entry(self, key: str, item_id: str, fields: list[Any]) -> CacheEntry | _Miss:
        version, stored, load_ms, ttl_ms, remaining_ms = fields
        body = decode_body(stored)
        if body is CORRUPT:
            DECODE_ERRORS.inc()
            logger.warning("redis value for key %s does not decode: deleted, treated as a miss", key)
            self.guard("delete", key, self.client.delete, key)
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


INFO_FIELDS = tuple(
    "redis_version used_memory used_memory_human maxmemory maxmemory_policy keyspace_hits keyspace_misses "
    "evicted_keys connected_clients".split()
)


def info_summary(tier: RedisTier, embedded: bool) -> dict[str, Any]:
    """The INFO fields an operator looks at first, or {"error": ...} when Redis does not answer."""
    if embedded:  # fakeredis has no INFO
        return {"embedded": True, "server": "fakeredis (in-memory, this machine only)"}
    info = tier.guard("info", "-", tier.client.info)
    if isinstance(info, RedisDown):
        return {"embedded": False, "error": "redis unavailable"}
    summary = {"embedded": False} | {name: info.get(name) for name in INFO_FIELDS}
    if hasattr(tier.client, "get_nodes"):  # a cluster: INFO above is one node's
        summary["cluster_nodes"] = len(tier.client.get_nodes())
    return summary
