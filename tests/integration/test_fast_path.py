"""Through real gunicorn and a real Redis: an instance with the fast path answers as one without it does
(headers, body, the metrics it exports and the access line it writes). tests/test_fast_path.py holds the
whole matrix; this checks that nothing below the app (gunicorn's worker, its WSGI environ) changes that."""

from __future__ import annotations

import json
import re

from tests.integration.fleet import database_url, log_lines
from tests.support import Gunicorn, RedisServer, wait_until

ORIGIN = "https://app.example.com"
COUNTED = re.compile(
    r"^((?:cache_requests_total|flask_http_request_total|flask_http_request_duration_seconds_count)\{.*\}) (\S+)$",
    re.M,
)


def counters(server: Gunicorn) -> dict[str, float]:
    return {name: float(value) for name, value in COUNTED.findall(server.get("/metrics")[2].decode())}


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0) for name in after if after[name] != before.get(name, 0)}


def answer(server: Gunicorn, headers: dict[str, str]) -> tuple[int, list[tuple[str, str]], bytes, dict[str, float]]:
    before = counters(server)
    status, got, body = server.get("/items/hot", headers)
    made_up = got.get("X-Request-ID") != headers.get("X-Request-ID")
    shown = sorted((k, "<made up>" if k == "X-Request-ID" and made_up else v) for k, v in got.items() if k != "Date")
    return status, shown, body, moved(before, counters(server))


def item_lines(server: Gunicorn) -> list[dict]:
    lines = [line for line in log_lines(server) if line.get("logger") == "access" and line["path"] == "/items/hot"]
    return [{k: v for k, v in line.items() if k not in ("time", "pid", "duration_ms", "message")} for line in lines]


def test_through_gunicorn_the_fast_path_answers_as_the_view_does(request, tmp_path):
    with RedisServer() as redis_server, database_url(request, tmp_path) as db_url:
        env = {
            "REDIS_URL": redis_server.url,
            "DATABASE_URL": db_url,
            "LOG_FORMAT": "json",
            "CORS_ORIGINS": ORIGIN,
            "CACHE_XFETCH_BETA": "0",
        }
        # One worker each: its L1 is the one every request meets.
        with (
            Gunicorn({**env, "FAST_PATH": "on"}, workers=1) as on,
            Gunicorn({**env, "FAST_PATH": "off"}, workers=1) as off,
        ):
            status, headers, _ = on.request(
                "PUT", "/items/hot", json.dumps({"name": "hot"}).encode(), {"Content-Type": "application/json"}
            )
            assert status == 201
            for server in (on, off):  # both read the same row; each holds it in its L1
                wait_until(lambda s=server: s.get("/items/hot")[1]["X-Cache"] == "lru", timeout=10)
            requests = [{}, {"X-Request-ID": "trace-1"}, {"Origin": ORIGIN}, {"If-None-Match": headers["ETag"]}]
            for sent in requests:
                fast, routed = answer(on, sent), answer(off, sent)
                assert fast == routed, sent
                assert fast[0] in (200, 304) and fast[3], sent  # it was counted
            on_lines, off_lines = item_lines(on), item_lines(off)
            assert len(on_lines) >= len(requests)
            for line in (*on_lines[-len(requests) :], *off_lines[-len(requests) :]):
                if line["request_id"] != "trace-1":
                    line["request_id"] = "<made up>"
            assert on_lines[-len(requests) :] == off_lines[-len(requests) :]


COUNTED_WRITES = re.compile(
    r"^((?:flask_http_request_total|flask_http_request_duration_seconds_count|cache_write_outcomes_total)"
    r"\{.*\}) (\S+)$",
    re.M,
)
UPDATED_AT = re.compile(rb'"updated_at": ?"[^"]*"')


def test_through_gunicorn_a_plain_put_is_answered_as_the_view_does(request, tmp_path):
    """Twin ids of one length, one on each instance: the same answers once the id and time are masked, the
    same counters moved, the same access lines; a declined body (not JSON) is read again by Flask."""
    with RedisServer() as redis_server, database_url(request, tmp_path) as db_url:
        env = {"REDIS_URL": redis_server.url, "DATABASE_URL": db_url, "LOG_FORMAT": "json"}
        with (
            Gunicorn({**env, "FAST_PATH": "on"}, workers=1) as on,
            Gunicorn({**env, "FAST_PATH": "off"}, workers=1) as off,
        ):
            json_type = {"Content-Type": "application/json"}
            writes = [(b'{"name": "a"}', json_type), (b'{"name": "b"}', json_type), (b"{nope", json_type)]
            writes.append((b'{"name": "c"}', {**json_type, "X-Request-ID": "trace-2"}))
            answers: dict[str, list[tuple]] = {"put-on": [], "put-of": []}
            for server, item_id in ((on, "put-on"), (off, "put-of")):
                for body, headers in writes:
                    before = {n: float(v) for n, v in COUNTED_WRITES.findall(server.get("/metrics")[2].decode())}
                    status, got, answered = server.request("PUT", f"/items/{item_id}", body, headers)
                    after = {n: float(v) for n, v in COUNTED_WRITES.findall(server.get("/metrics")[2].decode())}
                    shown = sorted(
                        (k, "<made up>" if k == "X-Request-ID" and v != "trace-2" else v.replace(item_id, "<id>"))
                        for k, v in got.items()
                        if k != "Date"
                    )
                    masked = UPDATED_AT.sub(b"", answered).replace(item_id.encode(), b"<id>")
                    answers[item_id].append((status, shown, masked, moved(before, after)))
            assert [a[0] for a in answers["put-on"]] == [201, 200, 400, 200]
            assert answers["put-on"] == answers["put-of"]
            assert all(a[3] for a in answers["put-on"])  # each was counted

            def put_lines(server: Gunicorn, item_id: str) -> list[dict]:
                lines = [
                    line for line in log_lines(server) if line.get("logger") == "access" and line["method"] == "PUT"
                ]
                return [
                    {
                        **{k: v for k, v in line.items() if k not in ("time", "pid", "duration_ms", "message")},
                        "path": line["path"].replace(item_id, "<id>"),
                        "request_id": line["request_id"] if line["request_id"] == "trace-2" else "<made up>",
                    }
                    for line in lines
                ]

            assert put_lines(on, "put-on") == put_lines(off, "put-of") and len(put_lines(on, "put-on")) == 4
