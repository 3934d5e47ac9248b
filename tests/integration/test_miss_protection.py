"""Miss protection with real processes: 2 gunicorn instances x 2 workers, a real redis-server, PostgreSQL
behind a TCP proxy that can make it slow or stop it. Each test prints what it measured."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import redis

from tests.integration.fleet import (
    LOCK_TTL,
    TOKEN,
    diagnosis,
    fleet,
    get_all,
    total,
    wait_recovered,
    warm_peak_rss_kb,
)
from tests.support import RedisServer, postgres_schema_url, seed_items, wait_until


def tiers(servers) -> dict[str, float]:
    """Item reads answered so far, by the tier that answered (cache_requests_total), over every instance."""
    return {tier: total(servers, f'cache_requests_total{{tier="{tier}"}}') for tier in ("lru", "redis", "db")}


def test_200_concurrent_cold_reads_hit_the_database_once(request, capsys):
    # Seeded before the service starts: rows written behind its back are unknown to the Bloom filter.
    with fleet(request.getfixturevalue("postgres_url"), db_delay=0.05, seed=1) as (_, servers, _, _):
        loads_before, tiers_before = total(servers, "cache_db_loads_total"), tiers(servers)
        results = get_all(servers, ["/items/item-0"] * 200, threads=200)
        loads = total(servers, "cache_db_loads_total") - loads_before
        waits = total(servers, "cache_stampede_waits_total")
        answered = {tier: count - tiers_before[tier] for tier, count in tiers(servers).items()}
        why = "\n".join(map(diagnosis, servers))
        with capsys.disabled():
            print(
                f"\n[stampede] 200 concurrent cold GETs: database loads={loads:g}, stampede waits={waits:g}, "
                f"answered by {answered}, slowest={max(t for _, t in results):.2f}s"
            )
    assert [status for status, _ in results] == [200] * 200
    assert loads == 1, why


def test_lock_holder_killed_mid_load_the_others_still_answer(request, capsys):
    with fleet(request.getfixturevalue("postgres_url"), seed=1) as (redis_server, servers, proxy, _):
        client = redis.Redis.from_url(redis_server.url)
        # Every worker subscribed and trusting Redis first: one still in doubt (a Redis call that timed out
        # while it started) reads through to the database without the fleet lock until its catch-up, which
        # needs the database this test is about to stop.
        wait_recovered(servers, timeout=20)
        proxy.pause()  # the database stops answering: the first loader hangs holding the lock
        results: list[tuple[int, float]] = []
        load = threading.Thread(target=lambda: results.extend(get_all(servers, ["/items/item-0"] * 60, 60)))
        load.start()
        try:
            token = wait_until(lambda: client.get("{item:item-0}:lock"), timeout=10)
        except AssertionError:
            proxy.resume()
            load.join(30)
            why = "\n".join(map(diagnosis, servers))
            raise AssertionError(f"no load lock within 10s; answers {sorted(set(results))[:10]}\n{why}") from None
        holder_pid = int(token.decode().split(":")[1])
        os.kill(holder_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        proxy.resume()
        load.join(30)
        answered = [(status, t) for status, t in results if status != 0]
        with capsys.disabled():
            print(
                f"\n[holder killed] {len(answered)}/60 answered (the rest were queued on the killed worker), "
                f"all 200: {all(s == 200 for s, _ in answered)}, slowest {max(t for _, t in answered):.2f}s "
                f"(lock TTL {LOCK_TTL}s); {time.monotonic() - killed_at:.2f}s after the kill"
            )
    assert answered and all(status == 200 for status, _ in answered)
    assert len(answered) >= 30
    assert max(t for _, t in answered) < LOCK_TTL + 3.0  # the lock TTL, one load, and queueing


def test_ids_that_never_existed_rarely_reach_the_database(request, capsys):
    with fleet(request.getfixturevalue("postgres_url"), seed=10_000) as (redis_server, servers, _, db_url):
        client = redis.Redis.from_url(redis_server.url)

        def built() -> bool:
            return bool(client.exists("{bloom}:meta") and not client.exists("{bloom}:build-lock"))

        wait_until(built, timeout=60)  # the workers build the filter on their own at start
        auth = {"Authorization": f"Bearer {TOKEN}"}
        status, _, body = servers[0].request("POST", "/admin/cache/warm", headers=auth)
        assert status == 202 and json.loads(body)["items"] == 10_000
        wait_until(lambda: built() and client.exists("item:item-9999"), timeout=60)
        loads_before = total(servers, "cache_db_loads_total")
        results = get_all(servers, [f"/items/never-{n}" for n in range(5000)], threads=8)
        reached = total(servers, "cache_db_loads_total") - loads_before
        false_404 = 0
        for n in range(200):  # create through one instance, read at once through the other
            created = servers[0].request("PUT", f"/items/new-{n}", b"{}", {"Content-Type": "application/json", **auth})
            assert created[0] == 201
            false_404 += servers[1].get(f"/items/new-{n}")[0] != 200
        with capsys.disabled():
            print(
                f"\n[bloom] 5000 GETs of never-existing ids after warming 10000 items: {reached:g} reached "
                f"the database ({reached / 50:.2f}%); false 404s after create: {false_404}/200"
            )
    assert [status for status, _ in results] == [404] * 5000
    assert reached <= 100  # at most 2%
    assert false_404 == 0


def test_warming_100k_items_keeps_memory_flat(request, capsys):
    postgres_url = request.getfixturevalue("postgres_url")
    with RedisServer() as redis_server:
        peaks = {}
        for n in (10_000, 100_000):
            with postgres_schema_url(postgres_url) as db_url:
                seed_items(db_url, n)
                env = {"REDIS_URL": redis_server.url, "DATABASE_URL": db_url, "CACHE_KEY_PREFIX": f"w{n}:"}
                started = time.monotonic()
                peaks[n], output = warm_peak_rss_kb(env)
                seconds = time.monotonic() - started
                assert f"warmed {n} items" in output
                with capsys.disabled():
                    print(f"\n[warm] {n} items: {seconds:.1f}s, peak RSS {peaks[n] / 1024:.1f} MiB")
    assert peaks[100_000] - peaks[10_000] < 16 * 1024  # 10x the items, not 10x the memory
