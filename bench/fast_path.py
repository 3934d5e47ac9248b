"""What the fast path (routes/fast_path.py) buys, and that it costs every other route nothing.

    python -m bench.fast_path [--seconds 5] [--rounds 4] [--connections 64] [--threads 2] [--shared-cpus]
                              [--declined] [--no-write]

Each service is the production start (`gunicorn app:app`: the project's gunicorn.conf.py, 2 workers
of BufferingWorker, 4 threads, the default LOG_LEVEL, so that every request writes its access line), with
FAST_PATH on or off. The baselines are bare WSGI callables (bench/bare_app.py) on the same gunicorn
settings: one answers 2 bytes (issue 17's baseline), one an L1 hit's exact headers and body doing nothing
else (what gunicorn alone spends on that answer), one that plus the hit's observability (its metrics,
request id and access line: what the issue requires of every hit besides finding it). wrk drives each
scenario with 2 threads and 64 keep-alive connections. The servers get CPU 0 and wrk the others
(bench/load.py split_cpus; --shared-cpus: not): on shared CPUs, wrk's own CPU and the worker its
connections happened to favour moved a round's rate by up to 3x. Before each measurement the servers are
let go quiet (a write round leaves its change followers work). Scenarios alternate round by round, the
baseline first and the others forwards, then backwards; every figure is the median over rounds, the ratio
to the bare app the median of per-round ratios, and on/off the median ratio of each route with the fast
path on to the same route with it off, measured in the same round.
Writes the "fast_path" section of BENCHMARKS.md. --declined: only the routes the fast path declines (L2 hit,
database read, /health/live, write), on and off, and only their services, for the many rounds that resolving
a few percent on routes that slow takes (the medians of 8 rounds spread 0.85-1.17 on/off over four runs);
writes "fast_path_declined".
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from dataclasses import dataclass, field

from bench.load import Result, Write, idle_rate, measure, median_cells, process_tree, run_round, settle, split_cpus
from bench.report import machine, publish
from tests.support import Gunicorn, RedisServer, seed_items

WRITE = Write("PUT", b'{"name":"bench write","price":9.5}')


@dataclass
class Scenario:
    name: str
    service: str
    path: str = "/items/item-0"
    script: str | None = None
    pair: str | None = None  # the same route on the service with the fast path off: its on/off ratio
    results: list[Result] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)
    pair_ratios: list[float] = field(default_factory=list)


SERVICES: dict[str, dict[str, str]] = {
    "app": {},
    "l1-off": {"CACHE_L1_MAX_ITEMS": "0"},
    "cache-off": {"CACHE_ENABLED": "false"},
}
ONLY_ON = {"no-access-log": {"ACCESS_LOG": "false"}}  # services needed with the fast path on only


BARE_ITEM = "bare WSGI callable answering an L1 hit's headers and body"
OBSERVED = "bare WSGI callable answering them and doing the hit's observability (metrics, request id, access line)"
OBSERVED_NO_LOG = "the same, ACCESS_LOG=false"
L1_ROUTE = "L1 hit: GET /items/<id>"
L1_HIT = f"{L1_ROUTE}, fast path on"
L1_HIT_NO_LOG = "L1 hit, fast path on, ACCESS_LOG=false"
# Bare callables: (service, gunicorn app, settings).
BARE: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("bare", "bench.bare_app:app", {}),
    ("bare-item", "bench.bare_app:item_app", {}),
    ("observed", "bench.bare_app:observed_app", {}),
    ("observed-no-log", "bench.bare_app:observed_app", {"ACCESS_LOG": "false"}),
)


def scenarios(declined_only: bool = False) -> list[Scenario]:
    """Every scenario, the 2-byte baseline first; `declined_only`: just the on/off pairs of the routes the
    fast path declines (every one but the L1 hit)."""
    found = (
        []
        if declined_only
        else [
            Scenario("bare WSGI callable (baseline)", "bare", "/"),
            Scenario(BARE_ITEM, "bare-item", "/"),
            Scenario(OBSERVED, "observed", "/items/item-0"),
            Scenario(OBSERVED_NO_LOG, "observed-no-log", "/items/item-0"),
        ]
    )
    for route, service, path, script in (
        (L1_ROUTE, "app", "/items/item-0", None),
        ("L2 hit (CACHE_L1_MAX_ITEMS=0)", "l1-off", "/items/item-0", None),
        ("database read, SQLite (CACHE_ENABLED=false)", "cache-off", "/items/item-0", None),
        ("GET /health/live", "app", "/health/live", None),
        # A write round leaves work behind (the change followers'), which settle() waits out.
        ("write: PUT /items/<id>", "app", "/items/bench-write", "put.lua"),
    ):
        if declined_only and route == L1_ROUTE:
            continue
        on, off = f"{route}, fast path on", f"{route}, fast path off"
        found.append(Scenario(on, f"{service}+on", path, script, pair=off))
        found.append(Scenario(off, f"{service}+off", path, script))
        if route == L1_ROUTE:
            # What the access line (JSON, one write to stderr per request) costs the hit: both paths write it.
            found.append(Scenario(L1_HIT_NO_LOG, "no-access-log+on"))
    return found


def start_services(redis_url: str, tmp: str, stack: contextlib.ExitStack, needed: set[str]) -> dict[str, Gunicorn]:
    """The `needed` services, each app service on a database of its own: on a shared one, each instance's
    change follower would apply the other's writes, and a route measured after the other service's write
    round would pay for it."""
    base = {"REDIS_URL": redis_url, "CACHE_BLOOM": "false", "DATABASE_URL": f"sqlite:///{tmp}/unused.sqlite3"}
    services = {}
    for name, wsgi, env in BARE:
        if name not in needed:
            continue
        bare = Gunicorn({**base, **env}, workers=2)
        bare.app = wsgi
        services[name] = stack.enter_context(bare)  # closed even if a later one fails to start
    for name, env in {**SERVICES, **ONLY_ON}.items():
        for setting in ("on",) if name in ONLY_ON else ("on", "off"):
            if f"{name}+{setting}" not in needed:
                continue
            prefix = f"{name}-{setting}:"
            sqlite_url = f"sqlite:///{tmp}/{name}-{setting}.sqlite3"
            seed_items(sqlite_url, 1)
            server = Gunicorn(
                {**base, **env, "DATABASE_URL": sqlite_url, "FAST_PATH": setting, "CACHE_KEY_PREFIX": prefix},
                workers=2,
            )
            services[f"{name}+{setting}"] = stack.enter_context(server)
    return services


def run(seconds: float, rounds: int, connections: int, threads: int, declined_only: bool = False) -> list[Scenario]:
    with contextlib.ExitStack() as stack:
        redis_server = stack.enter_context(RedisServer())
        tmp = stack.enter_context(tempfile.TemporaryDirectory())
        plan = scenarios(declined_only)
        services = start_services(redis_server.url, tmp, stack, {s.service for s in plan})
        by_name = {s.name: s for s in plan}

        every_pid = [pid for service in services.values() if service.proc for pid in process_tree(service.proc.pid)]
        time.sleep(3)  # start-up work (warming, the change follower's first pass) done
        idle = idle_rate(every_pid, 2.0)

        def load(scenario: Scenario, seconds: float) -> Result:
            server = services[scenario.service]
            write = WRITE if scenario.script else None
            pids = process_tree(server.proc.pid) if server.proc else []
            settle(every_pid, idle)  # what the last scenario left behind is not this one's
            return measure(server.base + scenario.path, seconds, connections, scenario.script, pids, threads, write)

        for scenario in plan:  # every worker's L1 and every tier warmed, unmeasured
            load(scenario, 1.0)
        for round_number in range(rounds):
            # The baseline first (with no baseline, none), the rest forwards in even rounds and backwards in
            # odd ones: a scenario's place in the round (what ran before it, which half of a pair it is)
            # evens out over rounds, and the two halves of a pair always run one after the other.
            fixed = 0 if declined_only else 1
            order = plan[:fixed] + (plan[fixed:] if round_number % 2 == 0 else plan[fixed:][::-1])
            run_round(round_number + 1, order, lambda scenario: load(scenario, seconds))
            for scenario in plan:
                if scenario.pair:
                    scenario.pair_ratios.append(scenario.results[-1].rps / by_name[scenario.pair].results[-1].rps)
        return plan


def table(plan: list[Scenario]) -> list[str]:
    rows = [
        "| scenario | req/s | vs bare WSGI | p50 ms | p99 ms | server CPU us/req | fast path on / off | errors |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in plan:
        pair = f"{statistics.median(s.pair_ratios):.2f}" if s.pair_ratios else ""
        errors = sum(r.errors for r in s.results)
        rows.append(f"| {s.name} | {median_cells(s.results, s.ratios)} | {pair} | {errors} |")
    return rows


def declined_table(plan: list[Scenario]) -> list[str]:
    """Each declined route's on/off ratios over the rounds: their median, middle half and extremes."""
    by_name = {s.name: s for s in plan}
    rows = [
        "| route | on / off, median | middle half of the rounds | lowest, highest | req/s on, off | "
        "server CPU us/req on, off |",
        "|---|---|---|---|---|---|",
    ]
    for on, off in ((s, by_name[s.pair]) for s in plan if s.pair):
        ratios = on.pair_ratios
        quartiles = statistics.quantiles(ratios, n=4)
        rps = [statistics.median(r.rps for r in s.results) for s in (on, off)]
        cpu = [statistics.median(r.cpu_us_per_request for r in s.results) for s in (on, off)]
        rows.append(
            f"| {on.name.removesuffix(', fast path on')} | {statistics.median(ratios):.3f} | "
            f"{quartiles[0]:.3f}-{quartiles[2]:.3f} | {min(ratios):.2f}, {max(ratios):.2f} | "
            f"{rps[0]:,.0f}, {rps[1]:,.0f} | {cpu[0]:.0f}, {cpu[1]:.0f} |"
        )
    return rows


def against(plan: list[Scenario], name: str, baseline: str) -> str:
    """The median of per-round ratios of scenario `name` to scenario `baseline`."""
    by_name = {s.name: s for s in plan}
    pairs = zip(by_name[name].results, by_name[baseline].results, strict=True)
    return f"{statistics.median(h.rps / b.rps for h, b in pairs):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rounds", type=int, default=4)  # even: as many rounds forwards as backwards
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    parser.add_argument("--shared-cpus", action="store_true", help="let wrk and the servers share every CPU")
    parser.add_argument(
        "--declined", action="store_true", help="only the routes the fast path declines, on and off (many rounds)"
    )
    args = parser.parse_args()
    if args.declined and args.rounds < 2:
        parser.error("--declined needs --rounds of 2 or more: it reports the middle half of the rounds")
    started = time.monotonic()
    cpus = None if args.shared_cpus else split_cpus()
    plan = run(args.seconds, args.rounds, args.connections, args.threads, args.declined)
    command = (
        f"python -m bench.fast_path --seconds {args.seconds:g} --rounds {args.rounds} "
        f"--connections {args.connections} --threads {args.threads}{' --shared-cpus' if args.shared_cpus else ''}"
        f"{' --declined' if args.declined else ''}"
    )
    services = (
        "Every service is `gunicorn app:app` with the production gunicorn.conf.py (2 workers of BufferingWorker, "
        "4 threads; the default LOG_LEVEL, so every request writes its access line), FAST_PATH on or off"
    )
    load = (
        f"wrk -t{args.threads} -c{args.connections}; one redis-server, a SQLite file per service, all on "
        f"loopback; {cpus or 'servers and wrk sharing every CPU'}. Medians over {args.rounds} alternating rounds"
    )
    heading = f"`{command}` ({machine()}; {time.monotonic() - started:.0f} s)."
    if args.declined:
        lines = [
            "## Fast path: the routes it declines, on and off",
            "",
            heading,
            f"{services}. {load}, each route's two halves one after the other, in turn first; a ratio is the "
            "route's rate with the fast path on over its rate with it off in the same round.",
            "Target (issue 17): every route but the L1 hit within 5% with the fast path on (on / off >= 0.95).",
            "",
            *declined_table(plan),
        ]
        publish("fast_path_declined", "\n".join(lines), write=not args.no_write)
        return
    lines = [
        "## Fast path: L1 hits answered before Flask's routing",
        "",
        heading,
        f"{services}; the baselines are bare WSGI callables (bench/bare_app.py) on the same settings: "
        "one answers 2 bytes, one an L1 hit's status, headers and body doing nothing else, one that and the "
        "hit's observability (its metrics, request id and access line, through the functions the hit calls). "
        f"{load}; ratios are per-round ratios measured in the same round.",
        "Targets (issue 17 as written): the L1 hit with the fast path on at >= 0.90 of the 2-byte app; every "
        "other route with the fast path on within 5% of it off (on / off >= 0.95). The 0.90 is measured "
        "against the callable doing the hit's observability (the text below says why).",
        "",
        *table(plan),
        "",
        "Medians of per-round ratios: the L1 hit with the fast path on against the bare callable answering its "
        f"headers and body {against(plan, L1_HIT, BARE_ITEM)}; against the one also doing its observability "
        f"{against(plan, L1_HIT, OBSERVED)}, and with ACCESS_LOG=false on both "
        f"{against(plan, L1_HIT_NO_LOG, OBSERVED_NO_LOG)}.",
    ]
    publish("fast_path", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
