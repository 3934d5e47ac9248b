"""The scenes about operations: Redis killed and restarted under traffic, warming, a row written with SQL."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from functools import partial

from demo.scenes import get
from demo.show import Metrics, Outcome, cmd, got, say
from demo.stack import Stack, call, curl
from tests.integration.fleet import log_lines, recovered
from tests.support import Gunicorn, seed_items, sql_connection, wait_until

WARM_ITEMS = 10_000
OUTAGE_SECONDS = 2.0


class Traffic:
    """Reads and writes on both instances from one thread, each answer noted with the phase it fell in."""

    def __init__(self, servers: list[Gunicorn]) -> None:
        self.servers, self.phase, self.writes = servers, "before", 0
        self.answers: Counter[tuple[str, str, str]] = Counter()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stopped.is_set():
            server = self.servers[n % 2]
            if n % 4 == 0:
                self.writes += 1
                body = json.dumps({"write": self.writes}).encode()
                status = self._call(server, "PUT", "/items/outage-w", body)
                self.answers[(self.phase, "write", "ok" if status < 300 else str(status))] += 1
            else:
                response = self._call_read(server, f"/items/outage-{n % 20}")
                self.answers[(self.phase, "read", response)] += 1
            n += 1

    def _call(self, server: Gunicorn, method: str, path: str, body: bytes) -> int:
        try:
            return call(server, method, path, body, auth=True).status
        except OSError:
            return 0

    def _call_read(self, server: Gunicorn, path: str) -> str:
        try:
            response = call(server, "GET", path)
        except OSError:
            return "error"
        return response.x_cache if response.status == 200 else f"error {response.status}"

    def summary(self, phase: str) -> dict[str, int]:
        return {f"{kind} {what}": count for (p, kind, what), count in sorted(self.answers.items()) if p == phase}


def redis_down(stack: Stack, a: Gunicorn, b: Gunicorn) -> Outcome:
    if stack.redis_server is None:
        reason = "the embedded Redis (no redis-server on PATH) lives inside this machine's fakeredis process; "
        reason += "killing it would show nothing a real outage shows. Install redis-server to see this scene."
        say(reason)
        return Outcome(True, "skipped: needs a real redis-server", skipped=True)
    server = stack.redis_server
    for n in range(20):
        call(a, "PUT", f"/items/outage-{n}", json.dumps({"n": n}).encode(), auth=True)
    say("One thread reads 20 items and writes one, alternating A and B, the whole time.")
    traffic = Traffic([a, b])
    traffic.thread.start()
    try:
        time.sleep(1.0)
        assert server.proc is not None
        cmd(f"kill -9 {server.proc.pid}    # redis-server on port {server.port}")
        traffic.phase = "outage"
        server.kill()
        time.sleep(OUTAGE_SECONDS)
        cmd(f"redis-server --port {server.port} ...    # restarted, empty")
        traffic.phase = "recovery"
        server.start()
        restarted = time.monotonic()
        wait_until(lambda: recovered([a, b]), timeout=30)
        recovery = time.monotonic() - restarted
        traffic.phase = "after"
        time.sleep(0.5)
    finally:
        traffic.stopped.set()
        traffic.thread.join(10)
    for phase in ("before", "outage", "recovery", "after"):
        got(f"{phase:>8}: {traffic.summary(phase)}")
    last = {"write": traffic.writes}
    seen = [get(s, "outage-w")[2] for s in (a, b)]
    errors = sum(n for (_, _, what), n in traffic.answers.items() if what.startswith("error") or what.isdigit())
    ok = errors == 0 and all(body == {**body, **last} for body in seen)
    return Outcome(
        ok,
        f"{errors} failed requests while Redis was down {OUTAGE_SECONDS:g} s; listeners resubscribed "
        f"and Redis caught up with the change log {recovery:.1f} s after the restart; the last write is read on both",
    )


def warming(stack: Stack, a: Gunicorn, b: Gunicorn) -> Outcome:
    say(f"{WARM_ITEMS:,} items inserted straight into the database (none of them cached), then:")
    seed_items(stack.database_url, WARM_ITEMS, prefix="warm")
    cmd(curl(a, "POST", "/admin/cache/warm", auth=True))
    started = time.monotonic()
    response = call(a, "POST", "/admin/cache/warm", auth=True)
    got(f"{response.status} {response.body.decode().strip()}")
    if response.status == 409:
        say("(the Bloom filter rebuild every instance starts with holds the same lock: asking again until it is free)")
        while response.status == 409 and time.monotonic() - started < 60:
            time.sleep(0.2)
            response = call(a, "POST", "/admin/cache/warm", auth=True)
        got(f"{response.status} {response.body.decode().strip()}")
    say("progress, from the instance's log (a line at each tenth):")
    shown, done = set(), False
    while response.status == 202 and not done and time.monotonic() - started < 120:
        for line in log_lines(a):
            message = line["message"]
            if message.startswith("warming: ") and message not in shown:
                shown.add(message)
                got(f"{message}   ({time.monotonic() - started:.1f} s)")
                warmed, total = message.split()[1].split("/")
                done = done or warmed == total
        time.sleep(0.1)
    with Metrics([a, b]) as metrics:
        tiers = Counter(get((a, b)[n % 2], f"warm-{n * 97 % WARM_ITEMS}", quiet=True)[1] for n in range(200))
        say(f"200 reads of warmed items on A and B: {dict(tiers)}")
    ok = done and metrics["cache_db_loads_total"] == 0
    return Outcome(
        ok,
        f"{WARM_ITEMS:,} items warmed in {time.monotonic() - started:.1f} s; 200 reads after it cost "
        f"{metrics['cache_db_loads_total']:g} database loads",
    )


def sql(stack: Stack, a: Gunicorn, b: Gunicorn) -> Outcome:
    say("The service is not the database's only writer: triggers log every committed change, and the")
    say("change follower applies the log to Redis, the Bloom filter and every L1.")
    results = []
    for statement, expected in (
        ("""INSERT INTO items (id, fields) VALUES ('by-sql', '{"price": 1}')""", 1),
        ("""UPDATE items SET fields = '{"price": 2}' WHERE id = 'by-sql'""", 2),
    ):
        database = "sqlite3 " + stack.database_url.removeprefix("sqlite:///")
        if not stack.database_url.startswith("sqlite"):
            database = f"psql '{stack.database_url}'"
        cmd(f"{database} <<'SQL'")
        say(f"  {statement}")
        say("  SQL")
        with sql_connection(stack.database_url) as connection:
            connection.execute(statement)
        written = time.monotonic()
        with contextlib.suppress(AssertionError):
            wait_until(partial(prices_are, (a, b), expected), timeout=10, interval=0.01)
        lag_ms = (time.monotonic() - written) * 1000
        for server in (a, b):
            _, tier, body = get(server, "by-sql")
        results.append((all(price(s) == expected for s in (a, b)), lag_ms))
        got(f"price {expected} served by both instances {lag_ms:.0f} ms after the commit")
    ok = all(fine for fine, _ in results)
    lags = " and ".join(f"{lag:.0f} ms" for _, lag in results)
    return Outcome(ok, f"a row inserted, then updated, with plain SQL was served by A and B after {lags}")


def prices_are(servers: tuple[Gunicorn, ...], expected: int) -> bool:
    return all(price(server) == expected for server in servers)


def price(server: Gunicorn) -> object:
    response = call(server, "GET", "/items/by-sql")
    return json.loads(response.body).get("price") if response.status == 200 else None
