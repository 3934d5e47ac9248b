"""The failure policy with real processes: Redis killed, Redis frozen, the database unreachable, all while
2 instances x 2 workers serve a steady read/write load. Each test prints what it measured."""

from __future__ import annotations

import json
import time

from tests.integration.consistency import Checker, read_everywhere
from tests.integration.fleet import TOKEN, first_log_time, fleet, wait_recovered
from tests.support import wait_until

AUTH_JSON = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}


def outage(request, capsys, title: str, stop, start, seconds: float = 10.0) -> tuple:
    """Run the checker, take Redis away with `stop` for `seconds`, bring it back with `start`; judge. Returns
    the report, the reads' and the writes' p99 while Redis was away, the wrong reads after, and when the
    breaker was open on every instance."""
    with fleet(request.getfixturevalue("postgres_url")) as (redis_server, servers, _, _):
        wait_recovered(servers, timeout=15)
        checker = Checker([s.base for s in servers], token=TOKEN).start()
        time.sleep(3)
        down_wall, down = time.time(), time.monotonic()
        stop(redis_server)
        time.sleep(seconds)
        up = time.monotonic()
        start(redis_server)
        wait_recovered(servers, timeout=20)
        time.sleep(3)
        checker.stop()
        report = checker.report()
        p99, write_p50, write_p99 = (
            checker.read_latency(down, up, 0.99),
            checker.write_latency(down, up, 0.5),
            checker.write_latency(down, up, 0.99),
        )
        wrong = read_everywhere([s.base for s in servers], checker.newest_versions())
        opened = [first_log_time(s, "redis circuit open", down_wall) for s in servers]
        breaker_after = max(t - down_wall for t in opened) if all(opened) else None
        breaker_text = f"{breaker_after:.2f}s" if breaker_after is not None else "not opened"
        with capsys.disabled():
            print(
                f"\n[{title}] {report.line()}\n[{title}] read p99 while Redis was down: {p99 * 1000:.0f}ms; "
                f"write p50 {write_p50 * 1000:.0f}ms, p99 {write_p99 * 1000:.0f}ms; "
                f"breaker open on every instance after: {breaker_text}"
            )
    return report, p99, write_p99, wrong, breaker_after


def test_redis_killed_for_10s_under_load_loses_nothing(request, capsys):
    report, p99, write_p99, wrong, _ = outage(
        request, capsys, "redis SIGKILL 10s", lambda r: r.kill(), lambda r: r.start()
    )
    assert report.read_errors == 0 and report.write_errors == 0
    assert wrong == []  # every acknowledged write, at its version, from every worker
    assert p99 < 1.0  # bounded by the socket timeout and the breaker, not by Redis
    assert write_p99 < 1.0  # a refused connection: no timeout to wait out


def test_redis_frozen_opens_the_breaker_and_loses_nothing(request, capsys):
    report, p99, write_p99, wrong, breaker_after = outage(
        request, capsys, "redis SIGSTOP 8s", lambda r: r.pause(), lambda r: r.resume(), seconds=8.0
    )
    assert report.read_errors == 0 and report.write_errors == 0
    assert wrong == []
    assert breaker_after is not None and breaker_after < 3.0
    assert p99 < 1.0
    assert write_p99 < 1.0  # two socket timeouts at most (the breaker's probe, then the cache update) and the database


def test_database_unreachable_cached_reads_answer_writes_503_nothing_half_written(request, capsys):
    # item-0..2 exist in the database and were never read: uncached. (An id that never existed may be
    # answered 404 by the Bloom filter without the database, which is right, so it proves nothing here.)
    with fleet(request.getfixturevalue("postgres_url"), seed=3) as (redis_server, servers, proxy, db_url):
        base = servers[0]
        for n in range(5):
            assert base.request("PUT", f"/items/db-{n}", json.dumps({"n": n}).encode(), AUTH_JSON)[0] == 201
        proxy.cut()
        try:
            reads = [servers[n % 2].get(f"/items/db-{n % 5}")[0] for n in range(40)]
            started = time.monotonic()
            status, headers, body = base.request("PUT", "/items/db-0", b'{"n": "lost"}', AUTH_JSON)
            write_seconds = time.monotonic() - started
            create = base.request("PUT", "/items/db-new", b"{}", AUTH_JSON)
            uncached = base.get("/items/item-1")
            ready = base.get("/health/ready")
        finally:
            proxy.restore()
        with capsys.disabled():
            print(
                f"\n[database cut] cached reads: {reads.count(200)}/40 answered 200; write: {status} "
                f"in {write_seconds:.2f}s; uncached read: {uncached[0]}; readiness: {ready[0]}"
            )
        assert reads == [200] * 40
        # database_unavailable when the pool found its connection closed before the write; outcome_unknown
        # when the write found it (its COMMIT travels with it: the proxy's close may reach us only after the
        # write was sent). Either way nothing was written: checked below, in every tier.
        error = json.loads(body)["error"]
        assert status == 503 and headers["Retry-After"] and error in ("database_unavailable", "outcome_unknown")
        assert create[0] == 503 and uncached[0] == 503
        assert ready[0] == 503 and json.loads(ready[2])["checks"]["database"].startswith("unavailable")
        wait_until(lambda: base.get("/health/ready")[0] == 200, timeout=20)
        # Nothing half-written: the database and every cache tier still hold version 1.
        after = [json.loads(servers[n % 2].get("/items/db-0")[2]) for n in range(8)]
        assert all(item["version"] == 1 and item["n"] == 0 for item in after)
        # Every worker's pool is back within about a second of the database (db/postgres.py QuickReconnect),
        # not only the one the readiness probe reached: psycopg_pool's own backoff (1, 2, 4 s) failed here.
        wait_until(lambda: base.get("/items/db-new")[0] == 404, timeout=2)
