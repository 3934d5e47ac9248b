"""A Bloom filter of the ids that exist, in Redis (one bitmap, shared by every process), so lookups of
ids that never existed are answered without the database.

It may say "maybe" for an id that does not exist (about 1% of them at its sized capacity) but must never
say "absent" for one that does. Hence: a write that may create its id adds it *before* the database
commits it (an update of a live row adds nothing: the filter holds every live id); a filter
is ignored until it has been built; a rebuild marks itself first so that writes during the build are
added to the new filter too, and swaps in atomically; and a process whose add failed (Redis down)
disables the filter when Redis returns, until it is rebuilt.

Positions (double hashing, Kirsch-Mitzenmacher): two polynomial hashes of the id's bytes modulo two
primes below 2^31, h1 = P1 mod m and h2 = 1 + P2 mod (m - 1); bit i of k is (h1 + i * h2) mod m. Only
integer arithmetic below 2^53, so Redis' Lua (doubles), fakeredis' Lua (integers) and Python agree bit
for bit; no sha1, which fakeredis' Lua lacks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import redis

from cache.core.guard import Guard, RedisDown

logger = logging.getLogger(__name__)

FALSE_POSITIVE_RATE = 0.01
MIN_CAPACITY = 10_000
HEADROOM = 1.5  # size for 1.5x today's items, so growth does not degrade it before the next rebuild

PRIME1, BASE1, PRIME2, BASE2 = 2147483647, 257, 2147483629, 263

# Lua's % on doubles is exact here (every operand below 2^53); one pass over the bytes for both hashes.
_POSITIONS_LUA = f"""
local function positions(id, m, k)
  local h1, h2 = 0, 0
  for i = 1, #id do
    local byte = string.byte(id, i)
    h1 = (h1 * {BASE1} + byte) % {PRIME1}
    h2 = (h2 * {BASE2} + byte) % {PRIME2}
  end
  h1, h2 = h1 % m, 1 + h2 % (m - 1)
  local out = {{}}
  for i = 0, k - 1 do out[i + 1] = string.format('%d', (h1 + i * h2) % m) end
  return out
end
"""

# KEYS[1]: meta (hash m, k)  KEYS[2]: bits   ARGV[1]: the id
# returns: -1 no filter built yet (ignore it); 0 the id was never added; 1 it may have been
# Bits gone but meta left (evicted under an allkeys-* maxmemory-policy): the filter is dropped, so that it
# is rebuilt instead of answering "absent" for every item.
CHECK = (
    _POSITIONS_LUA
    + """
local m = tonumber(redis.call('HGET', KEYS[1], 'm'))
if not m then return -1 end
if redis.call('EXISTS', KEYS[2]) == 0 then redis.call('DEL', KEYS[1]) return -1 end
for _, p in ipairs(positions(ARGV[1], m, tonumber(redis.call('HGET', KEYS[1], 'k')))) do
  if redis.call('GETBIT', KEYS[2], p) == 0 then return 0 end
end
return 1
"""
)

# KEYS[1], KEYS[2]: the live filter's meta and bits; KEYS[3], KEYS[4]: those of a filter being built
# ARGV: the ids.  Adds them to each filter that exists; returns how many filters that was. A live filter
# whose bits were evicted is dropped, not refilled with these ids (which would make every other id "absent").
# Every key under one hash tag: many ids in one call is legal on a Redis Cluster too.
ADD = (
    _POSITIONS_LUA
    + """
local added = 0
for f = 1, 3, 2 do
  local m = tonumber(redis.call('HGET', KEYS[f], 'm'))
  if m and f == 1 and redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[1])
    m = nil
  end
  if m then
    local k = tonumber(redis.call('HGET', KEYS[f], 'k'))
    for _, id in ipairs(ARGV) do
      for _, p in ipairs(positions(id, m, k)) do
        redis.call('SETBIT', KEYS[f + 1], p, 1)
      end
    end
    added = added + 1
  end
end
return added
"""
)

# KEYS: live meta, live bits, next meta, next bits, the bits the builder wrote
# Atomically: merge what writers added during the build into the built bits, make them live.
SWAP = """
redis.call('BITOP', 'OR', KEYS[5], KEYS[5], KEYS[4])
redis.call('RENAME', KEYS[5], KEYS[2])
local meta = redis.call('HGETALL', KEYS[3])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], (table.unpack or unpack)(meta))
redis.call('DEL', KEYS[3], KEYS[4])
return 1
"""


def size_for(capacity: int) -> tuple[int, int]:
    """Bits and hash count for `capacity` ids at FALSE_POSITIVE_RATE."""
    m = math.ceil(-capacity * math.log(FALSE_POSITIVE_RATE) / math.log(2) ** 2)
    return m, max(1, round(m / capacity * math.log(2)))


def _poly(data: bytes, prime: int, base: int) -> int:
    h = 0
    for byte in data:
        h = (h * base + byte) % prime
    return h


def positions(item_id: str, m: int, k: int) -> list[int]:
    """The k bits of `item_id` in a filter of m bits: the same as the Lua `positions`."""
    data = item_id.encode()
    h1, h2 = _poly(data, PRIME1, BASE1) % m, 1 + _poly(data, PRIME2, BASE2) % (m - 1)
    return [(h1 + i * h2) % m for i in range(k)]


class BloomFilter:
    def __init__(self, client: redis.Redis, guard: Guard, prefix: str) -> None:
        self.client, self.guard = client, guard
        tag = f"{prefix}{{bloom}}"  # one hash tag: every key below lives in one Redis Cluster slot
        self.meta, self.bits = f"{tag}:meta", f"{tag}:bits"
        self.next_meta, self.next_bits, self.built_bits = f"{tag}:next-meta", f"{tag}:next-bits", f"{tag}:built"
        self.build_lock = f"{tag}:build-lock"
        self._check = client.register_script(CHECK)
        self._add = client.register_script(ADD)
        self._swap = client.register_script(SWAP)

    def might_contain(self, item_id: str) -> bool:
        """False only when the filter is built and says the id was never added; True on any doubt."""
        return self.guard("bloom", item_id, self._check, keys=[self.meta, self.bits], args=[item_id]) != 0

    def add(self, item_id: str) -> bool:
        """Add before the database commits. False when Redis failed (the caller must disable the filter)."""
        keys = [self.meta, self.bits, self.next_meta, self.next_bits]
        return not isinstance(self.guard("bloom", item_id, self._add, keys=keys, args=[item_id]), RedisDown)

    def queue_add(self, pipe: redis.client.Pipeline, item_ids: list[str]) -> None:
        """Queue one add of `item_ids` on the caller's pipeline (EVAL: nothing to preload on every cluster
        node)."""
        pipe.execute_command("EVAL", ADD, 4, self.meta, self.bits, self.next_meta, self.next_bits, *item_ids)

    def disable(self) -> bool:
        """Stop answering "absent" until rebuilt (the filter may lack an id). False when Redis failed."""
        return not isinstance(self.guard("bloom", "-", self.client.delete, self.meta), RedisDown)

    def is_built(self) -> bool | RedisDown:
        built = self.guard("bloom", "-", self.client.exists, self.meta)
        return built if isinstance(built, RedisDown) else bool(built)

    def begin_build(self, expected_items: int) -> tuple[int, int]:
        """Announce a build sized for `expected_items`: from now on, writes add to it too."""
        capacity = max(MIN_CAPACITY, int(expected_items * HEADROOM))
        m, k = size_for(capacity)
        pipe = self.client.pipeline(transaction=False)
        pipe.delete(self.next_bits)  # one key per command: cluster pipelines refuse multi-key DEL
        pipe.delete(self.built_bits)
        pipe.hset(self.next_meta, mapping={"m": m, "k": k, "capacity": capacity})
        pipe.execute()
        return m, k

    def add_batch(self, pipe: redis.client.Pipeline, item_ids: Iterable[str], m: int, k: int) -> None:
        """Queue the bits of `item_ids` for the filter being built (on the caller's pipeline)."""
        for item_id in item_ids:
            args: list[str | int] = []
            for p in positions(item_id, m, k):
                args += ["SET", "u1", p, 1]
            pipe.execute_command("BITFIELD", self.built_bits, *args)

    def finish_build(self) -> None:
        keys = [self.meta, self.bits, self.next_meta, self.next_bits, self.built_bits]
        self.client.setbit(self.built_bits, 0, 0)  # the builder may have added nothing: make it exist
        self._swap(keys=keys)
