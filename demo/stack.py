"""What the demo starts and stops: Redis (a real redis-server when one is on PATH, else the embedded one),
the database (SQLite in a temporary directory, or a new schema in DATABASE_URL's PostgreSQL database, dropped
at the end), and gunicorn instances sharing both.
Everything is started by us, on loopback, and stopped by pid; the temporary directory is removed."""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from cache.embedded.server import start_server
from cache.embedded.share import SharedServer, file_for, join_or_start, leave
from tests.support import Gunicorn, RedisServer, postgres_schema_url, wait_until

TOKEN = "demo-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"Content-Type": "application/json"}
# Counters worth showing after a scene (names ending _total, summed over the instances asked).
SAMPLE = re.compile(r"^(cache_[a-z_]+_total(?:\{[^}]*\})?) (\S+)$", re.M)


@dataclass
class Response:
    status: int
    x_cache: str
    body: bytes


class Stack:
    def __init__(self, database_url: str | None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="item-cache-demo-"))
        self.given_database = database_url
        self.database_url = f"sqlite:///{self.tmp / 'items.sqlite3'}"
        self.schema = contextlib.ExitStack()  # PostgreSQL: a schema of our own in the given database, dropped after
        self.redis_server: RedisServer | None = None
        self.shared: SharedServer | None = None
        self.instances: list[Gunicorn] = []
        self.redis_url = ""

    @property
    def real_redis(self) -> bool:
        return self.redis_server is not None

    def start(self) -> tuple[Gunicorn, Gunicorn]:
        if self.given_database:
            self.database_url = self.schema.enter_context(postgres_schema_url(self.given_database))
        if shutil.which("redis-server"):
            self.redis_server = RedisServer()
            self.redis_server.start()
            self.redis_url = self.redis_server.url
        else:  # the embedded server that default instances on this database would share (cache/embedded/share.py)
            self.shared = join_or_start(file_for(self.database_url, self.tmp), start_server)
            self.redis_url = self.shared.url
        first, second = self.launch({}, {}, names=["A", "B"])
        return first, second

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(self.redis_url, socket_timeout=2)

    def env(self, **extra: str) -> dict[str, str]:
        return {
            "REDIS_URL": self.redis_url,
            "REDIS_EMBEDDED": "" if self.real_redis else "1",
            "DATABASE_URL": self.database_url,
            "API_TOKEN": TOKEN,
            "LOG_FORMAT": "json",
            "ACCESS_LOG": "false",
            **extra,
        }

    def launch(self, *extras: dict[str, str], names: list[str] | None = None) -> list[Gunicorn]:
        """One instance (2 workers) per dict of `extras`: the stack's settings and those; started side by side.
        Raises InstanceDidNotStart for the first that exits or is not ready within READY_TIMEOUT."""
        group = [Gunicorn(self.env(**extra), workers=2) for extra in extras]
        for server, extra in zip(group, extras, strict=True):
            if "DEMO_DB_LOAD_DELAY" in extra:
                server.app = "demo.slow_app:app"  # the service over a slowed database (demo only)
        self.instances += group
        for server in group:
            server.launch()
        for name, server, extra in zip(names or [""] * len(group), group, extras, strict=True):
            wait_ready(server, name or " ".join(f"{k}={v}" for k, v in extra.items()))
        return group

    def stop(self, group: list[Gunicorn]) -> None:
        for server in group:
            server.close()
            self.instances.remove(server)

    def close(self) -> None:
        """Stop everything started, newest first; safe to call after a partial start or a Ctrl-C."""
        for server in reversed(self.instances):
            server.close()
        self.instances = []
        if self.redis_server is not None:
            self.redis_server.stop()
        if self.shared is not None:
            leave(self.shared)
        self.schema.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


READY_TIMEOUT = 60.0  # seconds for an instance to answer /health/ready
LOG_TAIL_LINES = 20


class InstanceDidNotStart(Exception):
    """An instance that exited or did not become ready: its name, port, and the end of its log."""


def is_ready(server: Gunicorn) -> bool:
    return server.get("/health/ready")[0] == 200


def wait_ready(server: Gunicorn, name: str, timeout: float = READY_TIMEOUT) -> None:
    """Wait until `server` is ready; raise InstanceDidNotStart naming it, with its log's last lines (read now:
    the log is deleted when the stack closes)."""
    proc = server.proc
    assert proc is not None
    try:
        wait_until(lambda: proc.poll() is not None or is_ready(server), timeout=timeout)
    except AssertionError:
        what = f"did not answer /health/ready within {timeout:g} s"
    else:
        status = proc.poll()
        if status is None:
            return
        what = f"exited with status {status}"
    tail = "\n".join(server.output().splitlines()[-LOG_TAIL_LINES:])
    raise InstanceDidNotStart(f"instance {name} (gunicorn app:app, port {server.port}) {what}; its log ends:\n{tail}")


def call(server: Gunicorn, method: str, path: str, body: bytes | None = None, auth: bool = False) -> Response:
    headers = {**(JSON if body is not None else {}), **(AUTH if auth else {})}
    status, response_headers, data = server.request(method, path, body, headers)
    return Response(status, response_headers.get("X-Cache", "-"), data)


def curl(server: Gunicorn, method: str, path: str, body: str | None = None, auth: bool = False) -> str:
    """The command a person could type for the same request."""
    parts = ["curl -si"]
    if method != "GET":
        parts.append(f"-X {method}")
    parts.append(f"localhost:{server.port}{path}")
    if auth:
        parts.append(f"-H 'Authorization: Bearer {TOKEN}'")
    if body is not None:
        parts.append(f"-H 'Content-Type: application/json' -d '{body}'")
    return " ".join(parts)


def counters(servers: list[Gunicorn]) -> dict[str, float]:
    """Every cache_*_total sample of /metrics, summed over `servers`."""
    totals: dict[str, float] = {}
    for server in servers:
        for name, value in SAMPLE.findall(server.get("/metrics")[2].decode()):
            totals[name] = totals.get(name, 0.0) + float(value)
    return totals


def lag_seconds(servers: list[Gunicorn]) -> tuple[float, float]:
    """cache_invalidation_lag_seconds (publish -> applied in another process): its sum and count, summed."""
    found = [0.0, 0.0]
    for server in servers:
        text = server.get("/metrics")[2].decode()
        for n, part in enumerate(("sum", "count")):
            match = re.search(rf"^cache_invalidation_lag_seconds_{part} (\S+)$", text, re.M)
            found[n] += float(match.group(1)) if match else 0.0
    return found[0], found[1]


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in sorted(after) if after[name] != before.get(name, 0.0)}


def elapsed_ms(since: float) -> float:
    return (time.monotonic() - since) * 1000
