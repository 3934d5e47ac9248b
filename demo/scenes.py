"""The scenes about reads: tiers, coherence across instances, the stampede, ids that never existed."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from config import Config, load_config
from demo.show import Metrics, Outcome, cmd, got, say
from demo.stack import Stack, call, curl, lag_seconds
from tests.support import Gunicorn, wait_until

COLD_READS = 200
NEVER_EXISTED = 1000
SLOW_LOAD = 0.3  # seconds: DEMO_DB_LOAD_DELAY for the stampede scene


def put(server: Gunicorn, item_id: str, fields: dict[str, Any]) -> None:
    body = json.dumps(fields)
    cmd(curl(server, "PUT", f"/items/{item_id}", body, auth=True))
    response = call(server, "PUT", f"/items/{item_id}", body.encode(), auth=True)
    got(f"{response.status} {response.body.decode().strip()}")


def get(server: Gunicorn, item_id: str, quiet: bool = False) -> tuple[int, str, dict[str, Any]]:
    response = call(server, "GET", f"/items/{item_id}")
    if not quiet:
        cmd(curl(server, "GET", f"/items/{item_id}") + " | grep -E '^HTTP|X-Cache'")
        got(f"{response.status}  X-Cache: {response.x_cache}")
    return response.status, response.x_cache, json.loads(response.body) if response.status == 200 else {}


def flush(server: Gunicorn) -> None:
    cmd(curl(server, "DELETE", "/admin/cache", auth=True) + "    # empty Redis and every L1: a cold cache")
    got(f"{call(server, 'DELETE', '/admin/cache', auth=True).status}")


def tiers(stack: Stack, a: Gunicorn, b: Gunicorn) -> Outcome:
    say("A read tries the worker's own LRU (L1), then Redis (L2, shared), then the database, and fills")
    say("what it missed. Each gunicorn worker has its own L1: the other worker's first read says redis.")
    put(a, "tiers-1", {"name": "widget", "price": 9.5})
    flush(a)
    with Metrics([a, b]) as metrics:
        seen = [get(a, "tiers-1")[1]]
        while len(seen) < 12 and not {"redis", "lru"} <= set(seen):
            seen.append(get(a, "tiers-1")[1])
        if "redis" not in seen:  # the kernel gave every connection to one worker: the other instance has none
            say("(every read went to the same worker of A; B's workers have nothing in L1 either:)")
            seen.append(get(b, "tiers-1")[1])
    ok = seen[0] == "db" and "db" not in seen[1:] and {"redis", "lru"} <= set(seen) and metrics.tier("db") == 1
    return Outcome(
        ok, f"{' -> '.join(dict.fromkeys(seen))}; {metrics.tier('db'):g} database load for {len(seen)} reads"
    )


def coherence(stack: Stack, a: Gunicorn, b: Gunicorn) -> Outcome:
    say("Every worker of B holds the item in its L1. A writes a new version: the write publishes an")
    say("invalidation, and B's listener drops its copy; B's next read must show the new price.")
    put(a, "coherent-1", {"price": 1})
    for _ in range(6):
        get(b, "coherent-1", quiet=True)  # into both workers' L1s, most likely
    lag_before = lag_seconds([b])
    with Metrics([a, b]):
        put(a, "coherent-1", {"price": 2})
        written, reads = time.monotonic(), 0
        while True:
            reads += 1
            _, tier, body = get(b, "coherent-1", quiet=True)
            if body.get("price") == 2 or time.monotonic() - written > 5:
                break
        seen_ms = (time.monotonic() - written) * 1000
        cmd(curl(b, "GET", "/items/coherent-1") + "   # polled until the new price showed")
        got(f"price {body.get('price')} (X-Cache: {tier}) {seen_ms:.1f} ms after A answered the write ({reads} reads)")
    lag_sum, lag_count = (after - before for after, before in zip(lag_seconds([b]), lag_before, strict=True))
    lag = f"{lag_sum / lag_count * 1000:.1f} ms" if lag_count else "n/a"
    say(f"B's listeners: {lag_count:g} invalidations applied, {lag} after their publish on average")
    say("(cache_invalidation_lag_seconds; the rest of the time above is HTTP round trips on this machine)")
    ok = body.get("price") == 2
    return Outcome(
        ok,
        f"a write on A was served by B {seen_ms:.1f} ms later; invalidation lag {lag} (worst case: the L1 TTL, 30 s)",
    )


def stampede(stack: Stack, a: Gunicorn, b: Gunicorn) -> Outcome:
    say("The database is made slow ON PURPOSE for this scene: two more instances start with")
    say(f"DEMO_DB_LOAD_DELAY={SLOW_LOAD} (demo/slow_app.py, the demo's own: every item load from the database sleeps")
    say(f"{SLOW_LOAD} s first), so that the reads of one cold key that are in the service together really collide.")
    loads = {}
    say(f"$ CACHE_STAMPEDE_PROTECTION=true|false DEMO_DB_LOAD_DELAY={SLOW_LOAD} gunicorn demo.slow_app:app")
    say("  (two of each)")
    on, off = (
        {"DEMO_DB_LOAD_DELAY": str(SLOW_LOAD)},
        {"DEMO_DB_LOAD_DELAY": str(SLOW_LOAD), "CACHE_STAMPEDE_PROTECTION": "false"},
    )
    four = stack.launch(on, on, off, off)  # side by side: one wait for all four
    for protection, pair in (("on", four[:2]), ("off", four[2:])):
        say(f"-- stampede protection {protection}: instances on {pair[0].port} and {pair[1].port}")
        try:
            put(pair[0], "hot-1", {"name": "hot"})
            flush(pair[0])
            at_once = serving_threads(pair)
            say(f"{COLD_READS} reads sent together; the two instances serve at most {at_once} at a time")
            say(f"({describe_threads(pair)}): the first {at_once} collide on the cold key, the rest wait for a thread.")
            with Metrics(pair) as metrics:
                answers = concurrent_gets(pair, COLD_READS, COLD_READS, "/items/hot-1")
            loads[protection] = metrics["cache_db_loads_total"]
            say(f"{COLD_READS} reads: {dict(answers)}; database loads: {loads[protection]:g}")
            for line in explain_answers(answers, metrics):
                say(line)
        finally:
            stack.stop(pair)
    ok = loads["on"] == 1 and loads["off"] > 1
    return Outcome(
        ok, f"{COLD_READS} cold reads cost {loads['on']:g} database load protected, {loads['off']:g} without"
    )


def serving_threads(servers: list[Gunicorn]) -> int:
    """Requests `servers` can serve at the same moment: workers x threads, summed."""
    return sum(config.web_concurrency * config.gunicorn_threads for config in map(settings, servers))


def describe_threads(servers: list[Gunicorn]) -> str:
    configs = [settings(server) for server in servers]
    if len({(c.web_concurrency, c.gunicorn_threads) for c in configs}) == 1:
        return (
            f"{len(configs)} instances x {configs[0].web_concurrency} workers x {configs[0].gunicorn_threads} threads"
        )
    return " + ".join(f"{c.web_concurrency} workers x {c.gunicorn_threads} threads" for c in configs)


def settings(server: Gunicorn) -> Config:
    return load_config(server.env, default_port=8000)


def explain_answers(answers: Counter[str], metrics: Metrics) -> list[str]:
    """Why more answers say db than the database was read: X-Cache names the tier of the read that made the
    answer, and a reader that waited for another's load is handed that load's answer."""
    loads, waits = metrics["cache_db_loads_total"], metrics["cache_stampede_waits_total"]
    said_db, said_redis = answers["200 db"], answers["200 redis"]
    lines = []
    if said_db > loads:
        lines.append(
            f"{said_db} answers say db for {loads:g} database load(s): the other {said_db - loads:g} were readers "
            "in a loading worker that waited for its load (single-flight) and were handed its answer, X-Cache too."
        )
    if said_redis:
        lines.append(
            f"{said_redis} say redis: readers in the other workers that waited for the fleet-wide lock, then read "
            f"the fill from Redis (cache_stampede_waits_total {waits:+g} counts both kinds of wait)."
        )
    if answers["200 lru"]:
        lines.append(f"{answers['200 lru']} say lru: reads that reached a worker after its L1 had the item.")
    if not waits and loads > 1:
        lines.append(f"Without protection every read in the service before the first fill loaded: {loads:g}.")
    return lines


def shell_loop(servers: list[Gunicorn], count: int, parallel: int, path: str) -> str:
    """The shell loop for what concurrent_gets runs: `count` GETs, `parallel` at a time, the n-th to
    servers[n % len(servers)] at `path` with its "{}" replaced by n."""
    ports = str(servers[-1].port)
    for index in range(len(servers) - 2, -1, -1):
        ports = f"{{}} % {len(servers)} == {index} ? {servers[index].port} : {ports}"
    url = f"localhost:$(( {ports} )){path}"
    fmt = '"%{http_code} %header{x-cache}\\n"'
    return (
        f"seq 0 {count - 1} | xargs -P {parallel} -I{{}} sh -c 'curl -s -o /dev/null -w {fmt} {url}' | sort | uniq -c"
    )


def concurrent_gets(servers: list[Gunicorn], count: int, parallel: int, path: str) -> Counter[str]:
    """GET `path` ("{}": the request's number) `count` times from `parallel` threads, the first `parallel`
    released together, the n-th to servers[n % len(servers)]: Counter of answers. Prints the shell loop
    that does the same."""
    cmd(shell_loop(servers, count, parallel, path) + f"   # run here by {parallel} threads")
    start = threading.Barrier(min(parallel, count))

    def one(n: int) -> str:
        if n < parallel:
            start.wait(30)
        response = call(servers[n % len(servers)], "GET", path.replace("{}", str(n)))
        return f"{response.status} {response.x_cache}"

    with ThreadPoolExecutor(parallel) as pool:
        return Counter(pool.map(one, range(count)))


def penetration(stack: Stack, a: Gunicorn, b: Gunicorn) -> Outcome:
    say(f"{NEVER_EXISTED:,} lookups of ids that never existed: the Bloom filter of existing ids (in Redis,")
    say("built at start-up, updated by every write) says 'certainly not' without Redis' item keys or the database.")
    client = stack.redis()
    wait_until(lambda: client.exists("{bloom}:meta") and not client.exists("{bloom}:build-lock"), timeout=30)
    with Metrics([a, b]) as metrics:
        say(f"ids never-0 .. never-{NEVER_EXISTED - 1}, alternately on A and B, 16 at a time:")
        answers = concurrent_gets([a, b], NEVER_EXISTED, 16, "/items/never-{}")
        say(f"answers: {dict(answers)}")
    absent = metrics.tier("bloom") + metrics.tier("negative")
    ok = metrics["cache_db_loads_total"] == 0 and absent == NEVER_EXISTED
    loads, bloom = metrics["cache_db_loads_total"], metrics.tier("bloom")
    return Outcome(ok, f"{NEVER_EXISTED:,} lookups, {loads:g} database reads ({bloom:g} answered by the Bloom filter)")
