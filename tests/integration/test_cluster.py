"""The service on a real Redis Cluster (3 primaries, 3 replicas): the consistency checker, and a primary
killed under load. 2 gunicorn instances x 2 workers. Each test prints what it measured."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator

from tests.integration.consistency import Checker, StaleRead, read_everywhere
from tests.integration.fleet import database_url, wait_recovered, worker_of
from tests.support import Gunicorn, RedisClusterServers, wait_until


@contextlib.contextmanager
def cluster_fleet(request, tmp_path) -> Iterator[tuple[RedisClusterServers, list[Gunicorn]]]:
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(RedisClusterServers())
        db_url = stack.enter_context(database_url(request, tmp_path))
        env = {"REDIS_URL": cluster.url, "REDIS_CLUSTER": "true", "DATABASE_URL": db_url, "CACHE_L1_TTL": "10"}
        servers = [stack.enter_context(Gunicorn(env, workers=2)) for _ in range(2)]
        wait_recovered(servers, timeout=20)
        yield cluster, servers


def describe(stale: StaleRead, servers: list[Gunicorn], marks: dict[str, float]) -> str:
    """One stale read: what it returned and from where, what had been acknowledged, and when, relative to `marks`."""
    read = stale.read
    server = next(s for s in servers if s.base == read.base)
    when = ", ".join(f"{name}{read.started - at:+.3f}s" for name, at in marks.items())
    worker = worker_of(server, read.request_id)
    return (
        f"{read.key}: v{read.version} from {read.tier} (instance {read.base}, worker {worker})"
        f" though v{stale.newest} was acknowledged (via {stale.newest_via}; the first newer version"
        f" {stale.staleness:.3f}s before); read at {when}"
    )


def late_invalidations(servers: list[Gunicorn], after: float = 0.1) -> dict[str, int]:
    """Per instance, how many invalidations its workers applied more than `after` s after they were published
    (from cache_invalidation_lag_seconds): a stale read at such a time may be this lag, not a lost message."""
    late = {}
    for server in servers:
        text = server.get("/metrics")[2].decode()  # one scrape: both samples from the same moment
        count = re.search(r"^cache_invalidation_lag_seconds_count (\S+)$", text, re.M)
        within = re.search(rf'^cache_invalidation_lag_seconds_bucket{{le="{after}"}} (\S+)$', text, re.M)
        late[server.base] = int(float(count.group(1)) - float(within.group(1))) if count and within else -1
    return late


def test_checker_on_a_cluster_serves_no_stale_read_after_the_lag(request, tmp_path, capsys):
    with cluster_fleet(request, tmp_path) as (_, servers):
        checker = Checker([s.base for s in servers]).start()
        started = time.monotonic()
        time.sleep(10)
        checker.stop()
        report = checker.report(allowance=0.1)
        stale = [describe(s, servers, {"start": started}) for s in checker.stale(allowance=0.1)]
        if stale:
            stale.append(f"invalidations applied more than 0.1 s late, per instance: {late_invalidations(servers)}")
        wrong = read_everywhere([s.base for s in servers], checker.newest_versions())
        with capsys.disabled():
            print(f"\n[cluster] {report.line()}")
            for line in stale:
                print(f"[cluster] stale: {line}")
    assert report.reads > 500 and report.writes > 50
    assert report.read_errors == 0 and report.write_errors == 0
    assert report.stale_reads == 0 and wrong == [], "\n".join(stale)


def test_primary_killed_under_load_fails_over_and_nothing_stale_remains(request, tmp_path, capsys):
    with cluster_fleet(request, tmp_path) as (cluster, servers):
        checker = Checker([s.base for s in servers]).start()
        time.sleep(3)
        victim = cluster.node(cluster.primary_ports()[0])
        os.kill(victim.proc.pid, signal.SIGKILL)
        killed = time.monotonic()

        # A replica has taken over the dead primary's slots once no live node lists it as a primary.
        def promoted() -> bool:
            primaries = cluster.primary_ports()
            return len(primaries) == cluster.primaries and victim.port not in primaries and cluster.healthy()

        wait_until(promoted, timeout=30)
        promoted_at = time.monotonic()
        # Recovered: every listener subscribed, and Redis caught up with the change log in every worker.
        wait_recovered(servers, timeout=30)
        recovered_at = time.monotonic()
        time.sleep(4)
        checker.stop()
        overall, after = checker.report(allowance=0.1), checker.report(allowance=0.1, since=recovered_at)
        marks = {"kill": killed, "promotion": promoted_at, "recovery": recovered_at}
        stale = [describe(s, servers, marks) for s in checker.stale(allowance=0.1, since=recovered_at)]
        if stale:
            stale.append(f"invalidations applied more than 0.1 s late, per instance: {late_invalidations(servers)}")
        wrong = read_everywhere([s.base for s in servers], checker.newest_versions())
        with capsys.disabled():
            print(
                f"\n[cluster failover] replica promoted after {promoted_at - killed:.2f}s; recovered (every listener "
                f"subscribed, Redis caught up with the change log) after {recovered_at - killed:.2f}s"
                f"\n[cluster failover] whole run: {overall.line()}"
                f"\n[cluster failover] after recovery: {after.line()}"
            )
            for line in stale:
                print(f"[cluster failover] stale after recovery: {line}")
    assert overall.read_errors == 0 and overall.write_errors == 0
    assert after.stale_reads == 0 and wrong == [], "\n".join(stale)
