"""PostgreSQL connections: an instance opens at most DATABASE_MAX_CONNECTIONS in all, and a server that
refuses more (too many connections) gets a clear 503 and one log line, not a pile of timeouts."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator

import psycopg

from app import create_app
from cache import service as cache_service
from tests.support import Gunicorn, RedisServer, postgres_schema_url, wait_until

JSON = {"Content-Type": "application/json"}


def connections(base_url: str, application_name: str) -> int:
    with psycopg.connect(base_url, autocommit=True) as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        return int(conn.execute(query, (application_name,)).fetchone()[0])  # type: ignore[index]


def test_an_instance_never_opens_more_than_database_max_connections(postgres_url):
    """Every write blocked on a table lock holds a connection: 16 of them (2 workers x 8 threads) ask for
    more than the bound allows. DATABASE_MAX_CONNECTIONS=6 over 2 workers: 3 each, a LISTEN and a pool of 2."""
    name = f"bound_{uuid.uuid4().hex[:8]}"
    with RedisServer() as redis_server, postgres_schema_url(postgres_url) as schema_url:
        env = {
            "DATABASE_URL": f"{schema_url}&application_name={name}",
            "REDIS_URL": redis_server.url,
            "GUNICORN_THREADS": "8",
            "DATABASE_MAX_CONNECTIONS": "6",
            "ACCESS_LOG": "false",
        }
        with Gunicorn(env, workers=2) as server, psycopg.connect(schema_url) as lock:
            assert server.request("PUT", "/items/first", b"{}", JSON)[0] == 201  # the schema is there
            lock.execute("LOCK TABLE items IN EXCLUSIVE MODE")  # writes wait, holding their connections
            answers: list[int] = []
            writers = [
                threading.Thread(
                    target=lambda n=n: answers.append(server.request("PUT", f"/items/w{n}", b"{}", JSON)[0])
                )
                for n in range(16)
            ]
            for writer in writers:
                writer.start()
            try:
                wait_until(lambda: connections(postgres_url, name) >= 4, timeout=10)
                seen = [connections(postgres_url, name) for _ in range(40)]  # ~40 round trips: the pools grow
            finally:
                lock.rollback()
                for writer in writers:
                    writer.join(30)
    print(f"connections seen while 16 writes waited: max {max(seen)}, bound 6")
    assert max(seen) <= 6
    assert len(answers) == 16 and set(answers) <= {201, 503}


@contextlib.contextmanager
def refusing_role(postgres_url: str) -> Iterator[str]:
    """A URL for a role PostgreSQL refuses every connection to, as it does past its max_connections."""
    role = f"refused_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        yield postgres_url.replace("postgres@", f"{role}@", 1)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(f"DROP ROLE {role}")


def test_too_many_connections_is_a_clear_503_and_one_log_line(postgres_url, caplog):
    with refusing_role(postgres_url) as url, caplog.at_level(logging.INFO):
        app = create_app({"DATABASE_URL": url, "REDIS_URL": "", "ACCESS_LOG": "false"})
        try:
            client = app.test_client()
            answers = [client.put(f"/items/r{n}", data=b"{}", headers=JSON) for n in range(3)]
        finally:
            app.extensions["item_store"].close()
            cache_service.reset()
    for answer in answers:
        body = json.loads(answer.data)
        assert answer.status_code == 503 and body["error"] == "database_connections_refused"
        assert "too many connections" in body["message"] and "DATABASE_MAX_CONNECTIONS" in body["message"]
    refusals = [r for r in caplog.records if r.name.startswith(("db.", "psycopg", "routes."))]
    assert len(refusals) == 1 and refusals[0].levelno == logging.ERROR, [r.getMessage() for r in refusals]
    assert 'too many connections for role "refused_' in refusals[0].getMessage()


def test_a_refusal_met_by_the_pools_workers_at_once_is_logged_once(caplog):
    """psycopg_pool connects from several worker threads at once: each meets the same refusal, and the first
    line must not be repeated by the others while it is being written (the flag is set before the line)."""
    from db.postgres import _Pool

    pool = _Pool.__new__(_Pool)  # only its refusal bookkeeping is exercised; nothing connects
    pool._max_size, pool.refused = 3, None
    refusal = psycopg.OperationalError('FATAL:  too many connections for role "x"')
    start = threading.Barrier(8)

    def meet_it() -> None:
        start.wait(5)
        pool._note_refusal(refusal)

    slow = logging.Handler()
    slow.emit = lambda record: time.sleep(0.05)  # a log line that takes a while to write, as on a busy host
    logging.getLogger("db.postgres").addHandler(slow)
    try:
        with caplog.at_level(logging.INFO):
            threads = [threading.Thread(target=meet_it) for _ in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(10)
    finally:
        logging.getLogger("db.postgres").removeHandler(slow)
    lines = [r for r in caplog.records if r.name == "db.postgres"]
    assert len(lines) == 1 and pool.refused == 'too many connections for role "x"'
