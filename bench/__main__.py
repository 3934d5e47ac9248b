"""Throughput and latency of every tier, side by side in one run, as ratios to a baseline route.

    python -m bench [--seconds 5] [--rounds 3] [--database-url postgresql://...]

Starts its own redis-server and gunicorn services (the production gunicorn.conf.py, one setting changed
per service), seeds the items, and drives each scenario with wrk in alternating rounds (A B C ... A B
C ...); every figure is the median over rounds, every ratio the median of per-round ratios to the
baseline measured in that same round. Writes the "throughput" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from bench.load import Result, measure, median_cells, process_tree, run_round
from bench.report import machine, publish
from tests.support import ROOT, Gunicorn, RedisServer, postgres_schema_url, seed_items

# Why one worker (the production worker class, BufferingWorker, 4 threads): with two, wrk's keep-alive connections stay
# with the worker that accepted them, and in about one run in three here all of them landed on one worker
# (4,900 req/s became 1,470 on /health/live). sync workers and keep-alive 0 close every connection: wrk
# then spends its ephemeral ports (sync swung 4,600 -> 1,400) or every figure pays a TCP connect. One
# worker cannot be pinned unevenly; it leaves wrk a core of its own, and it measures what a worker costs.
WORKER_ARGS = "--worker-class buffering_worker.BufferingWorker --workers 1 --threads 4"
ITEMS = 100_000  # seeded in each PostgreSQL service's schema; zipf.lua draws ids from them


@dataclass
class Scenario:
    name: str
    service: str
    path: str = "/items/item-0"
    script: str | None = None
    results: list[Result] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    tiers: dict[str, float] = field(default_factory=dict)


def tier_counts(server: Gunicorn) -> dict[str, float]:
    text = server.get("/metrics")[2].decode()
    return {tier: float(n) for tier, n in re.findall(r'^cache_requests_total\{tier="(\w+)"\} (\S+)$', text, re.M)}


def start_services(redis_url: str, tmp: str, pg_base: str | None, stack: contextlib.ExitStack) -> dict[str, Gunicorn]:
    """Every service on a database of its own (a SQLite file, a PostgreSQL schema): on a shared one each
    instance's change follower would apply the others' writes while they are measured. The default
    LOG_LEVEL: every request writes its access line, as in production."""
    base = {"REDIS_URL": redis_url, "GUNICORN_CMD_ARGS": WORKER_ARGS, "CACHE_BLOOM": "false"}
    specs: dict[str, dict[str, str]] = {
        "app": {"CACHE_KEY_PREFIX": "app:"},
        "no-metrics": {"CACHE_KEY_PREFIX": "nm:", "REQUEST_METRICS": "false"},
        "l1-off": {"CACHE_KEY_PREFIX": "l1off:", "CACHE_L1_MAX_ITEMS": "0"},
        "no-cache": {"CACHE_KEY_PREFIX": "nc:", "CACHE_ENABLED": "false"},
        "peer": {},
    }
    for name, env in specs.items():
        env["DATABASE_URL"] = f"sqlite:///{tmp}/{name}.sqlite3"
        seed_items(env["DATABASE_URL"], 1)
    if pg_base:
        specs |= {
            "no-cache-pg": {"CACHE_KEY_PREFIX": "ncpg:", "CACHE_ENABLED": "false"},
            "app-pg": {"CACHE_KEY_PREFIX": "apg:"},
            "l1-off-pg": {"CACHE_KEY_PREFIX": "l1pg:", "CACHE_L1_MAX_ITEMS": "0"},
        }
        for name in ("no-cache-pg", "app-pg", "l1-off-pg"):
            specs[name]["DATABASE_URL"] = stack.enter_context(postgres_schema_url(pg_base))
            seed_items(specs[name]["DATABASE_URL"], ITEMS)
    services = {}
    for name, env in specs.items():
        server = Gunicorn({**base, **env})
        if name == "peer":
            server.app = "bench.peer_app:app"
        services[name] = stack.enter_context(server)  # closed even if a later one fails to start
    return services


def scenarios(pg: bool) -> list[Scenario]:
    found = [
        Scenario("baseline: GET /health/live", "app", "/health/live"),
        Scenario("baseline, request metrics off", "no-metrics", "/health/live"),
        Scenario("L1 hit: GET one hot item", "app"),
        Scenario("L2 hit: L1 off (CACHE_L1_MAX_ITEMS=0)", "l1-off"),
        Scenario("DB: cache off, SQLite", "no-cache"),
        Scenario("peer: Flask-Caching @cache.cached, Redis", "peer"),
    ]
    if pg:
        found += [
            Scenario("DB: cache off, PostgreSQL", "no-cache-pg"),
            Scenario("mixed Zipf, 5% writes, PostgreSQL, warmed: both tiers", "app-pg", "/", "zipf.lua"),
            Scenario("mixed Zipf, 5% writes, PostgreSQL, warmed: L1 off", "l1-off-pg", "/", "zipf.lua"),
            Scenario("mixed Zipf, 5% writes, PostgreSQL: no cache", "no-cache-pg", "/", "zipf.lua"),
        ]
    return found


def run(seconds: float, rounds: int, pg_base: str | None, connections: int) -> list[Scenario]:
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        os.environ["ITEMS"], os.environ["WRITE_PCT"] = str(ITEMS), "5"  # for zipf.lua
        services = start_services(redis_server.url, tmp, pg_base, stack)
        for name in ("app-pg", "l1-off-pg"):  # a production cache is warm: fill Redis as a deploy would
            if name in services:
                env = {**services[name].env, "LOG_LEVEL": "WARNING"}
                subprocess.run(
                    [sys.executable, "-m", "flask", "--app", "app", "warm-cache"],
                    cwd=ROOT,
                    env=env,
                    check=True,
                    capture_output=True,
                    timeout=300,
                )
        plan = scenarios(bool(pg_base))
        for scenario in plan:  # warm every tier, unmeasured
            measure(services[scenario.service].base + scenario.path, 1.0, connections, scenario.script)

        def load(scenario: Scenario) -> Result:
            server = services[scenario.service]
            before = tier_counts(server) if scenario.script else {}
            pids = process_tree(server.proc.pid)
            result = measure(server.base + scenario.path, seconds, connections, scenario.script, pids)
            if scenario.script:
                after = tier_counts(server)
                for tier, n in after.items():
                    scenario.tiers[tier] = scenario.tiers.get(tier, 0) + n - before.get(tier, 0)
            return result

        for round_number in range(rounds):
            run_round(round_number + 1, plan, load)
        return plan


def table(plan: list[Scenario]) -> list[str]:
    rows = [
        "| scenario | req/s | ratio to baseline | p50 ms | p99 ms | server CPU us/req | tier mix |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in plan:
        total = sum(s.tiers.values())
        mix = (
            ", ".join(f"{t} {n / total:.0%}" for t, n in sorted(s.tiers.items(), key=lambda kv: -kv[1]) if n)
            if total
            else ""
        )
        rows.append(f"| {s.name} | {median_cells(s.results, s.ratios)} | {mix} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL"))
    args = parser.parse_args()
    started = time.monotonic()
    plan = run(args.seconds, args.rounds, args.database_url, args.connections)
    command = f"python -m bench --seconds {args.seconds:g} --rounds {args.rounds} --connections {args.connections}"
    section = "\n".join(
        [
            "## Throughput: each tier against the baseline route",
            "",
            f"`{command}` with `--database-url` for PostgreSQL ({machine()}; {time.monotonic() - started:.0f} s).",
            f"gunicorn with the production gunicorn.conf.py and `{WORKER_ARGS}` (see bench/__main__.py for why),",
            f"one redis-server, wrk -t1 -c{args.connections}, all on loopback; medians over {args.rounds} alternating "
            "rounds; ratios are per-round ratios to the baseline of that round.",
            "",
            *table(plan),
        ]
    )
    publish("throughput", section)
    print(json.dumps({s.name: statistics.median(s.ratios) for s in plan}))


if __name__ == "__main__":
    main()
