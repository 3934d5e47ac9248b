"""A Redis at maxmemory under a fleet (issue 27), shared by tests/integration/test_maxmemory.py and
bench/maxmemory.py: a redis-server of its own with a small maxmemory and a given policy, one gunicorn
instance of 2 workers, items written in rounds and read after each; every read judged against the last
acknowledged round.

A read is *stale* when it answers a version older than the last acknowledged write of its item (every read
starts after every write of its round was acknowledged, and a moment later: the invalidation lag); a read
*resurrects* when it answers 200 for an item whose deletion was acknowledged.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from tests.integration.consistency import request
from tests.integration.fleet import log_lines, metric
from tests.support import Gunicorn, RedisServer, wait_until

TOKEN = "admin-token"
LAG = 0.2  # seconds between a round's last acknowledgement and its first read: the invalidation lag, generously
POLICIES = (
    "noeviction",
    "allkeys-lru",
    "allkeys-lfu",
    "volatile-lru",
    "volatile-lfu",
    "volatile-ttl",
    "allkeys-random",
    "volatile-random",
)


@dataclass
class Outcome:
    writes: int = 0
    write_failures: int = 0  # not 2xx
    reads: int = 0
    read_failures: int = 0  # neither 200 nor, for a deleted item, 404
    stale: int = 0
    resurrected: int = 0
    tiers: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def judge(self, item_id: str, status: int, headers: dict[str, str], body: bytes, expected: int | None) -> None:
        """`expected`: the version last acknowledged, None when the item was deleted."""
        self.reads += 1
        self.tiers[headers.get("X-Cache", "?")] += 1
        if expected is None:
            if status == 200:
                self.resurrected += 1
                self._example(f"{item_id} deleted, answered 200 via {headers.get('X-Cache')}")
            elif status != 404:
                self.read_failures += 1
            return
        if status != 200:
            self.read_failures += 1
            self._example(f"{item_id} answered {status}")
            return
        version = json.loads(body)["version"]
        if version < expected:
            self.stale += 1
            self._example(f"{item_id} v{version} < v{expected} via {headers.get('X-Cache')}")

    def _example(self, text: str) -> None:
        if len(self.examples) < 5:
            self.examples.append(text)

    def hit_ratio(self) -> float:
        """Reads answered without the database (L1, Redis, a cached or Bloom-filtered 404)."""
        return 1 - self.tiers["db"] / max(1, self.reads)


@contextlib.contextmanager
def service(
    policy: str, maxmemory: str, database_url: str, l1_ttl: float = 60.0, settings: dict[str, str] | None = None
) -> Iterator[tuple]:
    """A redis-server at `maxmemory` with `policy`, and one instance of 2 workers over it (with `settings`
    added to its environment); L1's TTL long, so that it cannot hide a stale copy."""
    redis_server = RedisServer()
    redis_server.extra_args = ["--maxmemory", maxmemory, "--maxmemory-policy", policy]
    with redis_server, redis.Redis.from_url(redis_server.url) as filler:
        fill(filler)
        env = {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": database_url,
            "API_TOKEN": TOKEN,
            "CACHE_L1_TTL": str(l1_ttl),
            **(settings or {}),
        }
        with Gunicorn(env, workers=2) as server:
            wait_until(lambda: metric(server, "cache_listener_subscribed") == 1, timeout=20)
            yield redis_server, server


PAST_MAXMEMORY = "redis.call('DEL', KEYS[1]) return redis.call('SET', KEYS[1], ARGV[1], 'EX', 3600)"


def fill(client: redis.Redis, keys: int = 200) -> None:
    """Fill Redis (a full Redis is an ordinary day) with keys of nobody's, evictable under volatile-* too: 10 KB
    ones until it refuses one (noeviction) or `keys` were written (the other policies evict); then 30 KB more
    past maxmemory (a script's DEL first lets it through), so that it stays full whatever buffers come and go."""
    for n in range(keys):
        try:
            client.set(f"filler:{n}", os.urandom(10_000), ex=3600)
        except redis.exceptions.OutOfMemoryError:
            break
    client.eval(PAST_MAXMEMORY, 1, "filler:over", os.urandom(30_000))


def body_of(round_no: int, size: int) -> bytes:
    """About `size` bytes that do not compress (the cache compresses large bodies)."""
    return json.dumps({"round": round_no, "data": os.urandom(size // 2).hex()}).encode()


def write_round(server: Gunicorn, ids: list[str], round_no: int, size: int, out: Outcome, threads: int = 4) -> dict:
    """PUT every id; the version each acknowledged."""

    def put(item_id: str) -> tuple[str, int | None]:
        status, _, body = request(server.base, "PUT", f"/items/{item_id}", body_of(round_no, size), token=TOKEN)
        return item_id, json.loads(body)["version"] if status in (200, 201) else None

    with ThreadPoolExecutor(threads) as pool:
        acked = dict(pool.map(put, ids))
    out.writes += len(ids)
    out.write_failures += sum(version is None for version in acked.values())
    return acked


def delete_all(server: Gunicorn, ids: list[str], out: Outcome) -> None:
    for item_id in ids:
        out.writes += 1
        if request(server.base, "DELETE", f"/items/{item_id}", token=TOKEN)[0] != 204:
            out.write_failures += 1


def read_round(server: Gunicorn, expected: dict[str, int | None], times: int, out: Outcome, threads: int = 4) -> None:
    """GET every id `times` over, each on a new connection (spread over both workers), judged."""
    time.sleep(LAG)
    paths = [item_id for _ in range(times) for item_id in expected]

    def get(item_id: str) -> tuple[str, int, dict[str, str], bytes]:
        return item_id, *request(server.base, "GET", f"/items/{item_id}")

    with ThreadPoolExecutor(threads) as pool:
        for item_id, status, headers, body in pool.map(get, paths):
            out.judge(item_id, status, headers, body, expected[item_id])


def warnings(server: Gunicorn) -> list[str]:
    return [line["message"] for line in log_lines(server) if line.get("level") in ("WARNING", "ERROR", "CRITICAL")]


def lease_changes(server: Gunicorn) -> int:
    return sum(1 for line in log_lines(server) if "follows the database's change log now" in line["message"])


def refusals(server: Gunicorn) -> float:
    text = server.get("/metrics")[2].decode()
    return sum(float(value) for value in re.findall(r"^cache_redis_refusals_total\{[^}]*\} (\S+)$", text, re.M))
