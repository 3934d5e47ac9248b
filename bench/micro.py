"""The L1-hit path in isolation: `cache_get` against a bare OrderedDict lookup and cachetools.TTLCache,
in ns per operation, in one process.

    python -m bench.micro
"""

from __future__ import annotations

import statistics
import time
import timeit
from collections import OrderedDict

import cachetools
import fakeredis

from bench.report import machine, publish
from cache import CacheEntry, cache_get, cache_key, cache_set
from cache import service as cache_service
from config import load_config

N = 200_000


def per_op_ns(statement, repeat: int = 7) -> float:
    return statistics.median(t / N * 1e9 for t in timeit.repeat(statement, number=N, repeat=repeat))


def main() -> None:
    cache_service.init_cache(load_config({"CACHE_BLOOM": "false"}), client=fakeredis.FakeRedis(protocol=2))
    key = cache_key("hot")
    cache_set(key, CacheEntry.build("hot", 1, b'{"id":"hot"}'))
    assert cache_get(key)[1] == "lru"

    bare: OrderedDict[str, object] = OrderedDict({key: object()})

    def bare_lookup() -> object:
        value = bare.get(key)
        bare.move_to_end(key)
        return value

    ttl_cache: cachetools.TTLCache[str, object] = cachetools.TTLCache(maxsize=10_000, ttl=30, timer=time.monotonic)
    ttl_cache[key] = object()
    rows = [
        ("bare OrderedDict get + move_to_end (no lock, no TTL)", per_op_ns(bare_lookup)),
        ("cachetools.TTLCache hit (no lock)", per_op_ns(lambda: ttl_cache[key])),
        ("cache_get L1 hit (lock, TTL check, trust check)", per_op_ns(lambda: cache_get(key))),
    ]
    cache_service.reset()
    reference = rows[1][1]
    lines = [
        "## Micro: an L1 hit in one process",
        "",
        f"`python -m bench.micro` ({machine()}); median of 7 x {N:,} calls.",
        "",
        "| operation | ns per op | vs cachetools.TTLCache |",
        "|---|---|---|",
        *[f"| {name} | {ns:.0f} | {ns / reference:.2f} |" for name, ns in rows],
    ]
    publish("micro", "\n".join(lines))


if __name__ == "__main__":
    main()
