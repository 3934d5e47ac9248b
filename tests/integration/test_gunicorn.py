"""The service as deployed: `gunicorn app:app` with several workers, embedded or real servers."""

from __future__ import annotations

import http.client
import json
import os
import random
import string

import pytest

from tests.integration.fleet import log_lines, metric
from tests.support import Gunicorn, RedisServer, postgres_schema_url, wait_until

JSON_HEADERS = {"Content-Type": "application/json"}


def put(server: Gunicorn, item_id: str, body: dict) -> tuple[int, dict, bytes]:
    return server.request("PUT", f"/items/{item_id}", json.dumps(body).encode(), JSON_HEADERS)


def read_many(server: Gunicorn, ids: list[str], rounds: int) -> list[str]:
    tiers = []
    for _ in range(rounds):
        for item_id in ids:
            status, headers, _ = server.get(f"/items/{item_id}")
            assert status == 200
            tiers.append(headers["X-Cache"])
    return tiers


def exercise(server: Gunicorn) -> None:
    """What issue 2 promises a user: writes then reads never reach the DB, 404s are JSON."""
    ids = [f"item-{n}" for n in range(10)]
    for item_id in ids:
        assert put(server, item_id, {"name": item_id})[0] == 201
    tiers = read_many(server, ids, rounds=4)
    assert "db" not in tiers, tiers  # every worker sees the write, whichever worker made it
    status, headers, body = server.get("/items/never-was")
    assert status == 404 and json.loads(body)["error"] == "not_found"


def test_embedded_redis_is_shared_by_all_workers_and_sqlite_survives_restart(tmp_path):
    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}"}
    with Gunicorn(env, workers=2) as server:
        exercise(server)
        assert "embedded in-memory Redis" in server.output()
        # Only workers count: neither the master nor the embedded server may hold the gauge at 0.
        wait_until(lambda: b"\ncache_listener_subscribed 1.0\n" in server.get("/metrics")[2], timeout=10)
    with Gunicorn(env, workers=2) as restarted:  # a new embedded Redis: empty; the SQLite file is not
        status, headers, body = restarted.get("/items/item-3")
        assert status == 200 and headers["X-Cache"] == "db" and json.loads(body)["name"] == "item-3"


def test_real_redis_and_postgres_with_metrics_aggregated_over_workers(request):
    postgres_url = request.getfixturevalue("postgres_url")
    with RedisServer() as redis_server, postgres_schema_url(postgres_url) as db_url:
        env = {"REDIS_URL": redis_server.url, "DATABASE_URL": db_url}
        with Gunicorn(env, workers=2) as server:
            exercise(server)
            reads = sum(metric(server, f'cache_requests_total{{tier="{t}"}}') for t in ("lru", "redis", "db"))
            assert reads == 41  # 40 reads of existing items + 1 miss, summed over both workers
            assert metric(server, 'flask_http_request_total{method="PUT",status="201"}') == 10
            summary = json.loads(server.get("/metrics/cache")[2])
            assert summary["redis"]["redis_version"] and summary["db_loads"] == 1
            ready = json.loads(server.get("/health/ready")[2])
            assert ready == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


@pytest.mark.parametrize("name, value", [("CACHE_TTL", "soon"), ("DATABASE_URL", "mysql://x")])
def test_bad_configuration_stops_start_up_naming_the_variable(tmp_path, name, value):
    server = Gunicorn({"REDIS_URL": "", name: value})
    assert server.launch().wait(timeout=20) != 0
    assert f"configuration error: {name}" in server.output()
    server.close()


def test_metrics_dir_given_by_the_user_loses_only_the_service_files(tmp_path):
    """PROMETHEUS_MULTIPROC_DIR named by the user: a stale metric file of an earlier run is removed at start
    (it would be summed in), the workers' files are removed at exit, and the directory itself stays."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_999999.db").write_bytes(b"not a metric file any more")
    server = Gunicorn({"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}"}, workers=2)
    server.env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    with server:
        assert put(server, "m1", {"n": 1})[0] == 201
        assert metric(server, 'flask_http_request_total{method="PUT",status="201"}') == 1
        running = sorted(os.listdir(metrics_dir))
        assert running and "counter_999999.db" not in running
    assert metrics_dir.is_dir() and os.listdir(metrics_dir) == []


def test_oversized_bodies_are_refused_before_they_are_stored(tmp_path):
    """413 for a declared Content-Length over the cap (refused before reading) and for a chunked body
    that grows past it; the worker keeps serving and nothing is stored."""
    import http.client

    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}", "MAX_ITEM_BYTES": "1024"}
    with Gunicorn(env, workers=1) as server:
        big = b'{"x": "' + b"a" * 5000 + b'"}'
        assert server.request("PUT", "/items/big", big, JSON_HEADERS)[0] == 413
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.putrequest("PUT", "/items/chunked")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        for start in range(0, len(big), 1000):
            chunk = big[start : start + 1000]
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        conn.send(b"0\r\n\r\n")
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read())["error"] == "request_entity_too_large"
        conn.close()
        assert server.get("/items/big")[0] == 404 and server.get("/items/chunked")[0] == 404
        assert server.get("/health/live")[0] == 200


def test_requests_with_made_up_methods_and_paths_leave_the_metrics_the_same_size(tmp_path):
    """Every label of the request metrics has a bounded set of values whatever clients send: gunicorn takes
    any 3-20 letter token as a method, and paths are the client's to choose. After each (method, route)
    has been seen, 2,000 requests with random methods and paths leave /metrics within 3% of its size."""
    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}", "ACCESS_LOG": "false"}
    served, prefixes, rng = (
        ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"],
        ["/", "/items/", "/x/"],
        random.Random(24),
    )
    with Gunicorn(env, workers=1) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)

        def send(method: str, path: str) -> None:
            conn.request(method, path)
            response = conn.getresponse()
            response.read()
            assert response.status < 500, (method, path, response.status)

        def metrics_size() -> int:
            send("GET", "/metrics")  # its own series too
            return len(server.get("/metrics")[2])

        def made_up_requests(count: int) -> None:
            for _ in range(count):
                made_up = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 20)))
                path = rng.choice(prefixes) + "".join(rng.choices(string.ascii_lowercase, k=12))
                send(rng.choice([*served, made_up, made_up]), path)

        for method in served:  # each bounded series once, and counts of a few digits
            for prefix in prefixes:
                send(method, prefix + "seen")
        made_up_requests(200)
        before = metrics_size()
        made_up_requests(2000)
        after = metrics_size()
        conn.close()
    print(f"/metrics: {before} bytes before 2,000 made-up requests, {after} after")
    assert after <= before * 1.03, (before, after)


def test_every_log_line_is_json_and_a_request_id_reaches_the_access_line(tmp_path):
    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}"}
    with Gunicorn(env, workers=2) as server:
        status, headers, _ = server.get("/items/nope", headers={"X-Request-ID": "trace-abc-123"})
        assert status == 404 and headers["X-Request-ID"] == "trace-abc-123"

        def access_line() -> dict | None:
            return next((x for x in log_lines(server) if x.get("request_id") == "trace-abc-123"), None)

        line = wait_until(access_line, timeout=10)
        assert line["logger"] == "access" and line["status"] == 404 and line["path"] == "/items/nope"
        assert line["tier"] == "db" and line["duration_ms"] >= 0 and isinstance(line["pid"], int)
        text = [row for row in server.output().splitlines() if row.strip()]
        assert len(log_lines(server)) == len(text)  # gunicorn's own lines are JSON too: one format


def test_two_default_instances_on_one_database_share_one_embedded_redis_and_leave_nothing_behind(tmp_path):
    """`PORT=8001 gunicorn app:app` and `PORT=8002 gunicorn app:app` (no REDIS_URL, one SQLite file): a
    write on either is read on the other, the starter may go first, and the last one out stops the server."""
    from cache.embedded.share import _running

    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}"}
    shared = tmp_path / "items.sqlite3.redis"
    first, second = Gunicorn(env, workers=2).start(), Gunicorn(env, workers=2)
    try:
        second.start()
        server_pid = json.loads(shared.read_text())["pid"]
        assert "started by this instance" in first.output() and "shared with another instance" in second.output()
        assert put(first, "w1", {"price": 1})[0] == 201
        status, headers, body = second.get("/items/w1")
        assert status == 200 and json.loads(body)["price"] == 1 and headers["X-Cache"] in ("redis", "lru")
        assert put(first, "w1", {"price": 2})[0] == 200  # seen within the invalidation lag (L1 TTL at worst)
        wait_until(lambda: all(json.loads(second.get("/items/w1")[2])["price"] == 2 for _ in range(4)), timeout=5)
        first.close()  # the instance that started the server goes first: the other keeps it
        assert put(second, "w2", {"price": 3})[0] == 201 and second.get("/items/w2")[1]["X-Cache"] in ("redis", "lru")
        assert _running(server_pid) and shared.exists()
    finally:
        first.close()
        second.close()
    assert not _running(server_pid)
    assert [name for name in os.listdir(tmp_path) if ".redis" in name] == []  # nor a temporary one


def test_requests_gunicorns_parser_refuses_get_a_json_answer(tmp_path):
    """A request line too long, a header too large, a bad method, version or header: gunicorn's parser
    refuses them (status and log its own), answered in JSON like every other bad request, not an HTML page."""
    import socket

    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}", "ACCESS_LOG": "false"}
    refused = {
        b"GET /items/" + b"a" * 5000 + b" HTTP/1.1\r\nHost: t\r\n\r\n": 414,
        b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 9000 + b"\r\n\r\n": 431,
        b"GE<T> / HTTP/1.1\r\nHost: t\r\n\r\n": 400,
        b"GET / HTTP/2.0\r\nHost: t\r\n\r\n": 400,
        b"GET / HTTP/1.1\r\nHost: t\r\nX: a\x00b\r\n\r\n": 400,
    }
    with Gunicorn(env, workers=1) as server:
        for request, status in refused.items():
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(request)
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 %d " % status), (request[:40], head)
            assert b"Content-Type: application/json" in head, (request[:40], head)
            assert set(json.loads(body)) == {"error", "message"}, body
        assert server.get("/health/live")[0] == 200
