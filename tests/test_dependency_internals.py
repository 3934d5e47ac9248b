"""The private or undocumented parts of dependencies the product builds on, where no public way exists: each
test fails naming the dependency and the part when a release changes it. (fakeredis' Lua runtime name is
held in tests/test_lua_sandbox.py; flask-cors' `flask_cors.core` functions fail at import.)"""

from __future__ import annotations

import inspect
import socket
from typing import Any

import psycopg_pool
import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import TConn, ThreadWorker
from psycopg_pool.base import AttemptWithBackoff

from db.postgres import QuickReconnect, _Pool
from tests.support import free_port, wait_until


def parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_psycopg_pool_still_has_the_methods_and_backoff_the_pool_overrides():
    """db/postgres.py `_Pool` overrides ConnectionPool._connect and _add_connection; QuickReconnect subclasses
    psycopg_pool.base.AttemptWithBackoff. None of it is psycopg_pool's public API."""
    pool = psycopg_pool.ConnectionPool
    assert parameters(pool._connect) == ["self", "timeout"], "psycopg_pool changed ConnectionPool._connect"
    assert parameters(pool._add_connection) == ["self", "attempt", "growing"], (
        "psycopg_pool changed ConnectionPool._add_connection"
    )
    assert parameters(AttemptWithBackoff.update_delay) == ["self", "now"], (
        "psycopg_pool changed AttemptWithBackoff.update_delay"
    )
    assert hasattr(AttemptWithBackoff, "INITIAL_DELAY"), "psycopg_pool's AttemptWithBackoff lost INITIAL_DELAY"
    attempt = QuickReconnect(timeout=10)
    attempt.update_delay(0.0)
    assert 0 < attempt.delay <= 0.5, "psycopg_pool's AttemptWithBackoff no longer keeps its wait in `delay`"


def test_psycopg_pool_connects_through_the_overrides(monkeypatch):
    """A pool whose server refuses: psycopg_pool calls the overridden _connect (the pool says `down`) and
    schedules its next attempt with QuickReconnect (the overridden _add_connection's)."""
    delays: list[float] = []
    update_delay = QuickReconnect.update_delay

    def noted(self: QuickReconnect, now: float) -> None:
        update_delay(self, now)
        delays.append(self.delay)

    monkeypatch.setattr(QuickReconnect, "update_delay", noted)
    pool = _Pool(f"postgresql://postgres@127.0.0.1:{free_port()}/none", min_size=1, open=False, reconnect_timeout=30)
    pool.open(wait=False)
    try:
        wait_until(lambda: pool.down, timeout=10)
    except AssertionError:
        pytest.fail("psycopg_pool no longer connects through ConnectionPool._connect: db/postgres.py must follow")
    try:
        wait_until(lambda: delays, timeout=10)
    except AssertionError:
        pytest.fail("psycopg_pool no longer retries with the attempt given to _add_connection (QuickReconnect)")
    finally:
        pool.close(timeout=1)
    assert delays[0] <= 0.5


class Sent:
    def __init__(self) -> None:
        self.sent = b""

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)


def test_gunicorn_still_sends_100_continue_by_the_flag_the_worker_clears():
    """buffering_worker.py answers `Expect: 100-continue` in its poller and clears gunicorn's private
    Request._expected_100_continue so that wsgi.create does not send a second one."""
    cfg = Config()
    head = b"PUT /items/a HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}"
    req = next(iter(RequestParser(cfg, iter([head]), ("127.0.0.1", 1))))
    assert getattr(req, "_expected_100_continue", None) is True, (
        "gunicorn's parser no longer notes Expect: 100-continue in Request._expected_100_continue"
    )
    for expected, sent in ((True, b"HTTP/1.1 100 Continue\r\n\r\n"), (False, b"")):
        req._expected_100_continue = expected
        sock = Sent()
        wsgi.create(req, sock, ("127.0.0.1", 1), ("127.0.0.1", 8000), cfg)
        assert sock.sent == sent, "gunicorn's wsgi.create no longer decides by Request._expected_100_continue"


@pytest.mark.parametrize(
    "owner, names",
    [
        (
            ThreadWorker,
            ["accept", "on_client_socket_readable", "enqueue_req", "handle_request", "finish_request"]
            + ["murder_pending", "check_config"],
        ),
        (TConn, ["init", "close"]),
        (Unreader, ["unread", "take_buffered"]),
    ],
)
def test_gunicorn_gthread_still_has_what_buffering_worker_overrides_and_calls(owner, names):
    """buffering_worker.py builds on gthread's undocumented worker: a renamed method would be skipped."""
    missing = [name for name in names if not callable(getattr(owner, name, None))]
    assert not missing, f"gunicorn's {owner.__module__}.{owner.__name__} lost {missing}: buffering_worker.py"


def test_gunicorn_gthread_connection_and_worker_still_have_the_state_buffering_worker_uses():
    """BufferedConn points its parser's unreader at a buffer (`parser.unreader.sock`) and reads what the
    parser read ahead (`unreader.buf`); BufferingWorker counts in gthread's `nr_conns`, uses its `poller`."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        conn = TConn(Config(), ours, ("127.0.0.1", 1), ("127.0.0.1", 8000))
        missing = [name for name in ("data_ready", "initialized") if not hasattr(conn, name)]
        assert not missing, f"gunicorn's gthread.TConn lost {missing}: buffering_worker.py"
        conn.init()
        unreader = getattr(conn.parser, "unreader", None)
        assert getattr(unreader, "sock", None) is ours and hasattr(unreader, "buf"), (
            "gunicorn's gthread.TConn parser no longer reads through parser.unreader.sock / .buf"
        )
    worker_init = inspect.getsource(ThreadWorker.__init__)
    missing = [name for name in ("nr_conns", "poller", "keepalived_conns") if f"self.{name} =" not in worker_init]
    assert not missing, f"gunicorn's gthread.ThreadWorker no longer sets {missing}: buffering_worker.py"
