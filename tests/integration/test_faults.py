"""Issue 16's fault-injection run, kept short: 2 instances x 2 workers on PostgreSQL (the first through a
PgProxy) and a redis-server of the test's own, 3 writers and 4 readers, faults one after another in
windows; the checker (tests/integration/faults.py) judges every window. `python -m bench.faults` is the
long run."""

from __future__ import annotations

import json
import time

import pytest

from tests.integration.fault_plan import committed_versions, database_faults, redis_faults, run_faults
from tests.integration.faults import FaultRun
from tests.integration.fleet import TOKEN, fleet, log_lines, recovered
from tests.pg_proxy import PgProxy
from tests.support import wait_until

L1_TTL = 2.0  # CACHE_L1_TTL: short, so a Redis outage longer than it stays short
# What the faults make the service log; anything else at ERROR is printed.
EXPECTED = ("database unavailable", "write outcome unknown", "Worker (pid:")


def database_plan(redis_server, servers, proxy, run):
    return database_faults(proxy, servers, run.keys, cut=3.0)


def redis_plan(redis_server, servers, proxy, run):
    return redis_faults(redis_server, L1_TTL, down=3.0, frozen=L1_TTL + 1.5)


@pytest.mark.parametrize(
    "plan",
    [
        pytest.param(database_plan, id="database"),
        pytest.param(redis_plan, id="redis"),
    ],
)
def test_faults_lose_nothing_and_never_go_backwards(request, capsys, plan):
    postgres_url = request.getfixturevalue("postgres_url")
    env = {"CACHE_L1_TTL": str(L1_TTL)}
    with fleet(postgres_url, proxy_type=PgProxy, proxied=1, **env) as (redis_server, servers, proxy, db_url):
        wait_until(lambda: recovered(servers), timeout=15)
        run = FaultRun([s.base for s in servers], TOKEN).start()
        time.sleep(3)  # healthy time first
        run_faults(run, servers, plan(redis_server, servers, proxy, run), grace=2.0)
        run.stop()
        committed = committed_versions(db_url, run.keys)
        # After the run every worker of both instances serves what the database holds.
        wait_until(lambda: _everyone_serves(servers, committed), timeout=3)
        problems = [
            f"{n} {line['time']} {line['pid']} {line['message'][:300]}"
            for n, server in enumerate(servers)
            for line in log_lines(server)
            if line.get("level") in ("ERROR", "CRITICAL") and not line["message"].startswith(EXPECTED)
        ]
    verdicts = run.judge(committed)
    with capsys.disabled():
        print(f"\n[faults: {request.node.callspec.id}]")
        for window in run.windows:
            print(f"  {window.name}: {window.start - run.began:.1f}s to {window.end - run.began:.1f}s")
        for verdict in verdicts:
            print(f"  {verdict.line()}")
            for example in verdict.examples[:5]:
                print(f"    {example}")
        print("\n".join(problems[:30]))
    assert all(verdict.reads > 0 for verdict in verdicts)
    assert [v.name for v in verdicts if v.violations()] == []
    healthy = verdicts[-1]
    assert healthy.read_failures == 0 and healthy.write_failures == 0
    for verdict in verdicts:
        if verdict.name.startswith("redis"):  # the cache is never the reason a request fails
            assert verdict.read_failures == 0 and verdict.write_failures == 0, verdict.line()


def _everyone_serves(servers, committed: dict[str, int]) -> bool:
    for server in servers:
        for key, version in committed.items():
            for _ in range(4):
                if json.loads(server.get(f"/items/{key}")[2]).get("version") != version:
                    return False
    return True
