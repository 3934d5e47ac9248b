"""A fleet for integration tests and bench/: redis-server, PostgreSQL behind a TCP proxy (to slow it or
stop it), 2 gunicorn instances x 2 workers; and the helpers that drive and measure it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from tests.integration.consistency import request
from tests.support import ROOT, Gunicorn, RedisServer, TcpProxy, postgres_schema_url, seed_items, wait_until, with_port

TOKEN = "admin-token"
LOCK_TTL = 2.0


def metric(server: Gunicorn, sample: str) -> float:
    """One sample of the instance's /metrics (summed over its workers by the multiprocess collector); 0.0
    when the sample is not there yet. A /metrics that did not answer 200 fails, saying what it answered."""
    status, _, body = server.get("/metrics")
    if status != 200:
        raise AssertionError(f"/metrics answered {status}: {body[:500]!r}")
    match = re.search(rf"^{re.escape(sample)} (\S+)$", body.decode(), re.M)
    return float(match.group(1)) if match else 0.0


def total(servers: list[Gunicorn], sample: str) -> float:
    return sum(metric(server, sample) for server in servers)


def recovered(servers: list[Gunicorn]) -> bool:
    """Every worker's listener subscribed and Redis caught up with the change log (trusted again)."""
    return all(
        metric(s, "cache_listener_subscribed") == 1.0 and metric(s, "cache_redis_catching_up") == 0 for s in servers
    )


RECOVERY_SAMPLES = re.compile(
    r"^(cache_listener_subscribed|cache_redis_catching_up|cache_circuit_open|cache_redis_catch_ups_total"
    r"|cache_changelog_lag_seconds)\b.*$",
    re.M,
)


def wait_recovered(servers: list[Gunicorn], timeout: float) -> None:
    """Wait until `recovered(servers)`; if it does not come, fail saying, per instance, its recovery gauges and
    the last warnings of its log: the logs are deleted with the instances, so this is all a failed run keeps."""
    try:
        wait_until(lambda: recovered(servers), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"not recovered within {timeout}s\n" + "\n".join(map(diagnosis, servers))) from None


def diagnosis(server: Gunicorn) -> str:
    try:
        text = server.get("/metrics")[2].decode()
        gauges = "; ".join(match.group(0) for match in RECOVERY_SAMPLES.finditer(text))
    except OSError as exc:
        gauges = f"/metrics unanswered: {exc}"
    warnings = [
        f"  {line['time']} [{line.get('pid')}] {line.get('logger')}: {line['message']}"
        for line in log_lines(server)
        if line.get("level") in ("WARNING", "ERROR", "CRITICAL")
    ]
    return "\n".join([f"{server.base}: {gauges}", *warnings[-15:]])


def worker_of(server: Gunicorn, request_id: str) -> str:
    """The pid of the worker that served the request sent with X-Request-ID `request_id` (from the access
    log's JSON lines), or "?"."""
    return next((str(line["pid"]) for line in log_lines(server) if line.get("request_id") == request_id), "?")


def first_log_time(server: Gunicorn, text: str, since: float) -> float | None:
    """The wall-clock time of the first log line of the instance whose message contains `text`, at or
    after `since` (its log is JSON lines: LOG_FORMAT=auto, and its stderr is no terminal)."""
    for line in log_lines(server):
        if text in line["message"]:
            stamp = datetime.fromisoformat(line["time"]).timestamp()
            if stamp >= since:
                return stamp
    return None


def log_lines(server: Gunicorn) -> list[dict]:
    """The instance's log, one object per JSON line (anything else, e.g. a traceback's text, is skipped)."""
    lines = []
    for text in server.output().splitlines():
        with contextlib.suppress(ValueError):
            lines.append(json.loads(text))
    return [line for line in lines if isinstance(line, dict) and "message" in line]


@contextlib.contextmanager
def database_url(request, tmp_path) -> Iterator[str]:
    """PostgreSQL when the suite has one (always in CI), else a SQLite file both instances share."""
    if os.environ.get("TEST_DATABASE_URL"):
        with postgres_schema_url(request.getfixturevalue("postgres_url")) as url:
            yield url
    else:
        yield f"sqlite:///{tmp_path / 'items.sqlite3'}"


@contextlib.contextmanager
def fleet(
    postgres_url: str,
    db_delay: float = 0.0,
    seed: int = 0,
    proxy_type: type[TcpProxy] = TcpProxy,
    proxied: int = 2,
    **env: str,
) -> Iterator[tuple]:
    """redis-server + PostgreSQL + 2 instances x 2 workers, the first `proxied` instances reaching the
    database through a proxy (a `proxy_type`, e.g. tests.pg_proxy.PgProxy), the others directly; yields
    what tests poke. `seed` items are inserted before the service starts (rows written behind its back
    would be unknown to the Bloom filter until the next warm)."""
    with RedisServer() as redis_server, postgres_schema_url(postgres_url) as db_url:
        seed_items(db_url, seed)
        proxy = proxy_type(int(db_url.split("@127.0.0.1:")[1].split("/")[0]), delay=db_delay)
        env = {
            "REDIS_URL": redis_server.url,
            # No TLS on loopback, so a PgProxy can read the messages it relays.
            "DATABASE_URL": with_port(db_url, proxy.port) + "&sslmode=disable",
            "CACHE_LOCK_TTL": str(LOCK_TTL),
            "API_TOKEN": TOKEN,
            **env,
        }
        direct = {**env, "DATABASE_URL": db_url}
        servers = [Gunicorn(env if n < proxied else direct, workers=2) for n in range(2)]
        try:
            for server in servers:
                server.start()
            yield redis_server, servers, proxy, db_url
        finally:
            for server in servers:
                server.close()
            proxy.close()


def get_all(servers: list[Gunicorn], paths: list[str], threads: int) -> list[tuple[int, float]]:
    """GET every path (spread over the instances) from `threads` threads at once: (status, seconds)."""
    start = threading.Barrier(min(threads, len(paths)))

    def one(n: int) -> tuple[int, float]:
        if n < threads:
            start.wait(10)
        began = time.monotonic()
        try:
            status = request(servers[n % len(servers)].base, "GET", paths[n])[0]
        except OSError:
            status = 0  # the worker that served it was killed
        return status, time.monotonic() - began

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, range(len(paths))))


def warm_peak_rss_kb(env: dict[str, str]) -> tuple[int, str]:
    """Run `flask --app app warm-cache` in a child process; its peak RSS and what it printed.

    The peak is VmHWM, the child's own address space's high-water mark. Not getrusage's ru_maxrss: Linux
    carries that across exec from the process that forked, so a child of a pytest process grown to 280 MiB
    reported 280 MiB whatever it used itself."""
    code = (
        "import re, sys\n"
        "from flask.cli import main\n"
        "sys.argv = ['flask', '--app', 'app', 'warm-cache']\n"
        "try:\n    main()\n"
        "finally:\n"
        "    status = open('/proc/self/status').read()\n"
        "    print('maxrss', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), flush=True)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return int(re.search(r"maxrss (\d+)", out.stdout).group(1)), out.stdout
