"""The faults of issue 16's run, each as inject / wait / restore, and the loop that runs them in windows."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from cache.coherence.listener import Watchdog
from tests.integration.faults import FaultRun
from tests.integration.fleet import recovered
from tests.pg_proxy import PgProxy
from tests.support import Gunicorn, RedisServer, sql_connection, wait_until


@dataclass(frozen=True)
class Fault:
    name: str
    inject: Callable[[], object]
    restore: Callable[[], object]
    seconds: float  # between inject and restore
    bound: float  # the staleness behind an acknowledged write the service promises until recovered
    lag: float = 0.1  # how long a version older than one already served may still be served
    early: float = 0.0  # ... except in the fault's first `early` seconds, when it is `early_lag`
    early_lag: float = 0.1


def database_cut(proxy: PgProxy, seconds: float) -> Fault:
    """One instance's database connections closed and new ones refused."""
    return Fault(f"postgres cut {seconds:g}s", proxy.cut, proxy.restore, seconds, 0.1)


def lost_commit_answers(proxy: PgProxy, keys: list[str], seconds: float) -> Fault:
    """The next COMMIT of a write of each of `keys` through the proxy commits, and its answer is lost."""

    def arm() -> None:
        for key in keys:
            proxy.drop_commit_reply(key.encode())

    # A write the writer's cache step did not apply reaches the cache through the change log: about 1 s.
    return Fault(f"COMMIT answer lost x{len(keys)}", arm, proxy.keep_commit_replies, seconds, 1.0, 1.0)


def worker_killed(server: Gunicorn) -> Fault:
    """SIGKILL one worker of `server` (gunicorn starts another)."""

    def kill() -> None:
        os.kill(worker_pids(server)[0], signal.SIGKILL)

    # A write in flight may commit without its cache step: the change log repairs that, within about 1 s.
    return Fault("worker SIGKILL", kill, lambda: None, 1.0, 1.0, 1.0)


def redis_killed(redis_server: RedisServer, seconds: float, l1_ttl: float) -> Fault:
    """SIGKILL, then a new empty redis-server on the same port. Stale reads are promised to end within
    CACHE_L1_TTL (+1 s); reads going backwards, not at all (issue 16)."""
    return Fault(f"redis SIGKILL {seconds:g}s", redis_server.kill, redis_server.start, seconds, l1_ttl + 1.0)


def redis_frozen(redis_server: RedisServer, seconds: float, l1_ttl: float) -> Fault:
    """SIGSTOP (connections stay open, nothing answers), then SIGCONT. Until a worker's watchdog notices
    the silence (a PING every 0.5 s, its pong overdue after 2 s: cache/coherence/listener.py), no invalidation
    reaches it and its L1 may keep serving a version older than one just written: the one exception to
    monotonic reads (docs/DESIGN.md), so in those first seconds a read may be that much behind."""
    listener = Watchdog()  # the production listener's (cache/service.py)
    watchdog = min(listener.ping_interval + listener.pong_timeout, l1_ttl)
    return Fault(
        f"redis SIGSTOP {seconds:g}s",
        redis_server.pause,
        redis_server.resume,
        seconds,
        l1_ttl + 1.0,
        early=watchdog,
        early_lag=watchdog,
    )


def database_faults(
    proxy: PgProxy, servers: list[Gunicorn], keys: list[str], cut: float, round_: int = 0
) -> list[Fault]:
    """The database's faults, one after another: the first instance's connections cut for `cut` s, the
    answers to COMMITs of a quarter of `keys` lost, a worker SIGKILLed (of each instance in turn)."""
    return [
        database_cut(proxy, cut),
        lost_commit_answers(proxy, keys[round_ % 4 :: 4], 4.0),
        worker_killed(servers[1 - round_ % 2]),
    ]


def redis_faults(redis_server: RedisServer, l1_ttl: float, down: float, frozen: float) -> list[Fault]:
    """Redis SIGKILLed and restarted empty after `down` s, then frozen for `frozen` s (past CACHE_L1_TTL)."""
    return [redis_killed(redis_server, down, l1_ttl), redis_frozen(redis_server, frozen, l1_ttl)]


def worker_pids(server: Gunicorn) -> list[int]:
    assert server.proc is not None
    children = f"/proc/{server.proc.pid}/task/{server.proc.pid}/children"
    with open(children) as listing:
        return [int(pid) for pid in listing.read().split()]


def run_faults(run: FaultRun, servers: list[Gunicorn], faults: list[Fault], grace: float = 2.0) -> None:
    """Each fault in a window of its own: inject, wait, restore, wait for every worker to have recovered
    (listeners subscribed, Redis caught up with the change log), then `grace` seconds more."""
    for fault in faults:
        window = run.window(fault.name, fault.bound, fault.lag, fault.early, fault.early_lag)
        fault.inject()
        time.sleep(fault.seconds)
        fault.restore()
        wait_until(lambda: recovered(servers), timeout=30)
        time.sleep(grace)
        window.end = time.monotonic()


def committed_versions(db_url: str, keys: list[str]) -> dict[str, int]:
    """Each item's version in the database now."""
    with sql_connection(db_url) as conn:
        rows = conn.execute("SELECT id, version FROM items").fetchall()
    return {key: version for key, version in rows if key in keys}
