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
