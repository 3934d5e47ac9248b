"""Coherence across real processes: 2 gunicorn instances x 2 workers on one database and one redis-server,
checked while it serves, healthy and under three faults. Each test prints its checker report."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import pytest
import redis

from bench.coherence import lag_buckets
from tests.integration.consistency import Checker, read_everywhere
from tests.integration.fleet import database_url, first_log_time, metric, recovered
from tests.support import Gunicorn, RedisServer, TcpProxy, wait_until

L1_TTL = 10.0  # seconds: the hard cap on staleness the faults must stay under
HEALTHY_SECONDS = float(os.environ.get("CHECKER_SECONDS", "30"))


def lag_bound(servers: list[Gunicorn], q: float = 1.0, since: list[tuple[float, float]] = ()) -> float:
    """The upper bound of the lag-histogram bucket holding quantile `q` (1.0: every invalidation) of the
    invalidations applied after the `since` snapshot of the buckets."""
    old = dict(since)
    buckets = [(le, n - old.get(le, 0.0)) for le, n in lag_buckets(servers)]
    total = buckets[-1][1]
    return next(le for le, n in buckets if n >= q * total)


def recovery_mark(servers: list[Gunicorn]) -> tuple[float, list[tuple[float, float]]]:
    """When recovery was seen, and the lag histogram then: what comes after is judged on its own lag."""
    return time.monotonic(), lag_buckets(servers)


@contextlib.contextmanager
def fleet(request, tmp_path, redis_url_of=lambda server: server.url) -> Iterator[tuple]:
    with RedisServer() as redis_server, database_url(request, tmp_path) as db_url:
        urls = redis_url_of(redis_server)
        envs = [{"REDIS_URL": url, "DATABASE_URL": db_url, "CACHE_L1_TTL": str(L1_TTL)} for url in urls]
        servers = [Gunicorn(env, workers=2) for env in envs]
        try:
            for server in servers:
                server.start()
            wait_until(lambda: recovered(servers), timeout=15)
            yield redis_server, servers
        finally:
            for server in servers:
                server.close()


def finish(checker: Checker, servers: list[Gunicorn], mark: tuple, capsys, title: str):
    """Stop the load and judge it. A read counts as stale when it started later after a newer write's
    acknowledgement than the slowest invalidation any worker applied in that period (at least 50 ms):
    staleness within the lag is the promise; beyond it, an invalidation was lost or a race let old data in."""
    checker.stop()
    wait_until(lambda: recovered(servers), timeout=15)
    allowance, allowance_after = max(0.05, lag_bound(servers)), max(0.05, lag_bound(servers, since=mark[1]))
    overall, after = checker.report(allowance), checker.report(allowance_after, since=mark[0])
    wrong = read_everywhere([s.base for s in servers], checker.newest_versions())
    with capsys.disabled():
        print(f"\n[{title}] whole run (lag allowance {allowance * 1000:g}ms): {overall.line()}")
        print(f"[{title}] after recovery (lag allowance {allowance_after * 1000:g}ms): {after.line()}")
    return overall, after, wrong


def test_healthy_fleet_serves_no_stale_read_after_the_lag(request, tmp_path, capsys):
    with fleet(request, tmp_path, lambda r: [r.url, r.url]) as (_, servers):
        checker = Checker([s.base for s in servers]).start()
        time.sleep(HEALTHY_SECONDS)
        overall, _, wrong = finish(checker, servers, (0.0, []), capsys, "healthy")
        p50, p99 = lag_bound(servers, 0.5), lag_bound(servers, 0.99)
        with capsys.disabled():
            print(f"[healthy] invalidation lag (bucket upper bounds): p50<={p50 * 1000:g}ms p99<={p99 * 1000:g}ms")
    assert overall.reads > 1000 and overall.writes > 100
    assert overall.stale_reads == 0 and overall.read_errors == 0 and overall.write_errors == 0
    assert wrong == []


def test_killed_pubsub_connections_resubscribe_and_flush(request, tmp_path, capsys):
    with fleet(request, tmp_path, lambda r: [r.url, r.url]) as (redis_server, servers):
        checker = Checker([s.base for s in servers]).start()
        time.sleep(3)
        flushes = sum(metric(s, 'cache_l1_flushes_total{reason="subscribe"}') for s in servers)
        killed = redis.Redis.from_url(redis_server.url).client_kill_filter(_type="pubsub")
        wait_until(
            lambda: sum(metric(s, 'cache_l1_flushes_total{reason="subscribe"}') for s in servers) >= flushes + 4,
            timeout=10,
        )
        mark = recovery_mark(servers)
        time.sleep(4)
        overall, after, wrong = finish(checker, servers, mark, capsys, "pubsub killed")
    assert killed == 4  # one subscriber per worker
    assert after.stale_reads == 0 and overall.max_staleness < L1_TTL
    assert overall.read_errors == 0 and overall.write_errors == 0 and wrong == []


def test_redis_killed_and_restarted_under_load(request, tmp_path, capsys):
    with fleet(request, tmp_path, lambda r: [r.url, r.url]) as (redis_server, servers):
        checker = Checker([s.base for s in servers]).start()
        time.sleep(3)
        redis_server.kill()  # SIGKILL: every connection drops, every cached value is gone
        writes_before = checker.report().writes
        time.sleep(3)
        writes_while_down = checker.report().writes - writes_before
        redis_server.start()  # same port
        wait_until(lambda: recovered(servers), timeout=15)
        mark = recovery_mark(servers)
        time.sleep(4)
        overall, after, wrong = finish(checker, servers, mark, capsys, "redis SIGKILL")
    assert writes_while_down > 0  # writes kept succeeding while Redis was down (DB first)
    assert overall.read_errors == 0 and overall.write_errors == 0
    assert after.stale_reads == 0 and overall.max_staleness < L1_TTL and wrong == []


def test_half_open_connection_is_detected_by_the_watchdog(request, tmp_path, capsys):
    proxies: list[TcpProxy] = []

    def through_proxy(redis_server: RedisServer) -> list[str]:
        proxies.append(TcpProxy(redis_server.port))
        return [proxies[0].url, redis_server.url]  # instance 1 reaches Redis through the proxy

    try:
        with fleet(request, tmp_path, through_proxy) as (_, servers):
            checker = Checker([s.base for s in servers]).start()
            time.sleep(3)
            watchdog = metric(servers[0], 'cache_l1_flushes_total{reason="watchdog"}')
            proxies[0].pause()  # silent: nothing forwarded, nothing closed
            paused = time.time()
            # Detection time from the worker's own log line (a /metrics poll would queue behind requests
            # that are each waiting out Redis timeouts on this instance).
            detected = wait_until(lambda: first_log_time(servers[0], "no pong within", paused), timeout=10) - paused
            time.sleep(2)
            proxies[0].resume()
            wait_until(lambda: recovered(servers), timeout=15)
            mark = recovery_mark(servers)
            time.sleep(4)
            overall, after, wrong = finish(checker, servers, mark, capsys, "half-open")
            watchdog_flushes = metric(servers[0], 'cache_l1_flushes_total{reason="watchdog"}') - watchdog
            with capsys.disabled():
                print(f"[half-open] detected by the watchdog after {detected:.2f}s")
    finally:
        for proxy in proxies:
            proxy.close()
    assert detected < 5.0, detected  # 1 s ping interval + 3 s pong timeout + one 0.5 s poll
    assert watchdog_flushes >= 1
    assert overall.read_errors == 0 and overall.write_errors == 0
    assert after.stale_reads == 0 and overall.max_staleness < L1_TTL and wrong == []


@pytest.fixture(autouse=True)
def _redis_server_required():
    from tests.support import redis_server_available

    if not redis_server_available():
        pytest.skip("needs redis-server on PATH")


def test_a_write_that_never_reached_redis_is_repaired_even_if_its_writer_dies(request, tmp_path, capsys):
    """The writer commits, cannot reach Redis, and is killed at once: the other instance finds the write in
    the database's change log and drops Redis' older copy."""
    import json
    import os
    import signal

    from bench.load import process_tree

    proxies: list[TcpProxy] = []

    def writer_through_proxy(redis_server: RedisServer) -> list[str]:
        proxies.append(TcpProxy(redis_server.port))
        return [proxies[0].url, redis_server.url]

    body = {"Content-Type": "application/json"}
    try:
        with fleet(request, tmp_path, writer_through_proxy) as (_, servers):
            writer, reader = servers
            assert reader.request("PUT", "/items/cut", b'{"n": 1}', body)[0] == 201
            assert json.loads(reader.get("/items/cut")[2])["version"] == 1
            proxies[0].pause()  # the writer can no longer reach Redis
            status, _, written = writer.request("PUT", "/items/cut", b'{"n": 2}', body)
            acked = time.monotonic()
            assert status == 200 and json.loads(written)["version"] == 2
            for pid in process_tree(writer.proc.pid):  # and it dies at once
                os.kill(pid, signal.SIGKILL)
            wait_until(lambda: json.loads(reader.get("/items/cut")[2])["version"] == 2, timeout=15)
            window = time.monotonic() - acked
            with capsys.disabled():
                print(f"\n[outbox] the dead writer's version served by the other instance {window:.2f}s after its ack")
    finally:
        for proxy in proxies:
            proxy.close()
    assert window < 4.0  # the outbox is read about once a second; without it: CACHE_TTL (300 s)
