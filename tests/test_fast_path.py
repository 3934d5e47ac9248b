"""The fast path (routes/items.py) answers exactly as the routed view would, or not at all.

Every request of the matrix is sent twice from the same cache state: once to the app (the fast path in
front of Flask) and once to Flask's own wsgi_app behind it (the fast path off). Both answers must have the
same status, body and headers (a made-up X-Request-ID's value aside), move the same metrics by the same
amounts (latencies: the same count under the same labels) and log the same access line. Each case also
says whether the fast path is to answer it itself (Flask's dispatch not called), so parity cannot hold
just because the fast path never answered.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from flask import Flask
from prometheus_client import REGISTRY
from werkzeug.test import Client, TestResponse

from cache.core.metrics import L1_ENTRIES
from config import Config
from db import CommitOutcomeUnknown, DatabaseUnavailable, DeadlineExceeded
from logs import REQUEST_FIELDS
from routes.fast_path import FastPath
from tests.support import FakeClock, free_port, running_cache

JSON_HEADERS = {"Content-Type": "application/json"}
ORIGIN = "https://app.example.com"
LONGEST_ID = "L" * 64
PARITY = {"CACHE_XFETCH_BETA": "0"}  # no random early refresh: the same state must give the same answer
MADE_UP_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Case:
    name: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    method: str = "GET"
    prepare: Callable[[], None] = lambda: None  # puts the cache in this case's state, before each of the two
    fast: bool = False  # the fast path answers it itself (in the default settings)
    body: bytes | None = None


@dataclass
class Answer:
    response: TestResponse
    dispatched: bool  # Flask's dispatch (its hooks, routing and a view) ran
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    log: list[dict[str, Any]]


class AccessLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        line = {name: getattr(record, name, None) for name in REQUEST_FIELDS}
        self.lines.append({**line, "logger": record.name, "level": record.levelname})


@pytest.fixture
def access_lines():
    handler, logger = AccessLines(), logging.getLogger("access")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def samples(app: Flask) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The cache's and the request metrics' samples; of a latency, only its count (the time differs)."""
    found = {}
    for registry in (REGISTRY, app.extensions["request_metrics_registry"]):
        for metric in registry.collect():
            if not metric.name.startswith(("cache_", "flask_")):
                continue
            for sample in metric.samples:
                if sample.name.endswith("_created"):
                    continue
                if metric.name == "flask_http_request_duration_seconds" and not sample.name.endswith("_count"):
                    continue
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def delta(before: dict, after: dict) -> dict:
    keys = before.keys() | after.keys()
    return {key: after.get(key, 0) - before.get(key, 0) for key in keys if after.get(key, 0) != before.get(key, 0)}


def send(app: Flask, wsgi: Any, case: Case, lines: AccessLines) -> Answer:
    case.prepare()
    dispatched = []
    flask_dispatch = app.full_dispatch_request  # its before_request hooks (a 401) included
    app.full_dispatch_request = lambda: (dispatched.append(True), flask_dispatch())[1]  # type: ignore[method-assign]
    before, logged = samples(app), len(lines.lines)
    try:
        response = Client(wsgi).open(case.path, method=case.method, headers=case.headers, data=case.body)
        response.get_data()
    finally:
        del app.full_dispatch_request  # the class's method again
    return Answer(response, bool(dispatched), delta(before, samples(app)), lines.lines[logged:])


def comparable_headers(answer: Answer, case: Case) -> list[tuple[str, str]]:
    headers = sorted((name.lower(), value) for name, value in answer.response.headers.items() if name != "Date")
    sent = case.headers.get("X-Request-ID")
    if sent is None or dict(headers)["x-request-id"] != sent:  # made up: its value differs, its form must not
        assert MADE_UP_ID.fullmatch(dict(headers)["x-request-id"])
        headers = [(n, "<made up>" if n == "x-request-id" else v) for n, v in headers]
    return headers


def comparable_log(answer: Answer, case: Case) -> list[dict[str, Any]]:
    made_up = (
        "X-Request-ID" not in case.headers or answer.response.headers["X-Request-ID"] != case.headers["X-Request-ID"]
    )
    return [{**line, "duration_ms": None, "request_id": None if made_up else line["request_id"]} for line in answer.log]


def assert_parity(app: Flask, cases: list[Case], lines: AccessLines, fast: Callable[[Case], bool]) -> None:
    """Each case sent with the fast path on and off: the same answer, metrics and log; answered by the fast
    path exactly when `fast(case)` says."""
    assert isinstance(app.wsgi_app, FastPath)
    for case in cases:
        on = send(app, app.wsgi_app, case, lines)
        off = send(app, app.wsgi_app.app, case, lines)
        where = f"{case.name}: {case.method} {case.path} {case.headers}"
        assert off.dispatched, where
        assert on.dispatched is not fast(case), f"{where}: answered by {'Flask' if on.dispatched else 'the fast path'}"
        assert on.response.status == off.response.status, where
        assert on.response.get_data() == off.response.get_data(), where
        assert comparable_headers(on, case) == comparable_headers(off, case), where
        assert on.metrics == off.metrics, where
        assert comparable_log(on, case) == comparable_log(off, case), where


def put(app: Flask, item_id: str, body: dict, headers: dict[str, str] | None = None) -> TestResponse:
    headers = {**JSON_HEADERS, **(headers or {})}
    response = Client(app.wsgi_app).put(f"/items/{item_id}", data=json.dumps(body), headers=headers)
    assert response.status_code in (200, 201), response.get_data()
    return response


def matrix(app: Flask, write_headers: dict[str, str] | None = None) -> list[Case]:
    """Items in every state the read path knows, and the requests to ask about them."""
    s, clock = running_cache(), FakeClock()
    s.lru.timer = clock
    for item_id in ("hot", "in-redis", "in-db", "stale-l1", "untrusted", "gone", LONGEST_ID):
        put(app, item_id, {"name": item_id, "tags": ["a", "b"]}, write_headers)
    etag = put(app, "hot", {"name": "hot", "n": 2}, write_headers).headers["ETag"]
    gone = Client(app.wsgi_app).delete("/items/gone", headers=write_headers)
    assert gone.status_code == 204
    key = s.key
    stale_entry = s.lru.get(key("stale-l1"))  # None where the write filled no L1 (L1 or the cache off)

    def in_l1(item_id: str) -> Callable[[], None]:
        def prepare() -> None:
            s.trust.set_subscribed(True)
            Client(app.wsgi_app.app).get(f"/items/{item_id}")  # fills L1 from Redis where it can
            Client(app.wsgi_app.app).get(f"/items/{item_id}")

        return prepare

    def only_in_redis() -> None:
        drop_from_l1("in-redis")

    def drop_from_l1(item_id: str) -> None:
        s.lru.delete(key(item_id))
        L1_ENTRIES.set(len(s.lru))  # as the service keeps it: a gauge is compared by its change

    def not_cached(item_id: str) -> Callable[[], None]:
        def prepare() -> None:
            drop_from_l1(item_id)
            s.redis.client.delete(key(item_id))

        return prepare

    def expired_in_l1() -> None:
        drop_from_l1("stale-l1")
        if stale_entry is not None:
            s.lru.set(key("stale-l1"), stale_entry)
        L1_ENTRIES.set(len(s.lru))
        clock.tick(s.lru.ttl + 1)

    def untrusted() -> None:
        in_l1("untrusted")()
        s.trust.set_subscribed(False)

    hot = in_l1("hot")
    return [
        Case("L1 hit", "/items/hot", prepare=hot, fast=True),
        Case("L1 hit, id at the length limit", f"/items/{LONGEST_ID}", prepare=in_l1(LONGEST_ID), fast=True),
        Case("L1 hit, caller's request id", "/items/hot", {"X-Request-ID": "req-7.a:b"}, prepare=hot, fast=True),
        Case("L1 hit, request id too long", "/items/hot", {"X-Request-ID": "x" * 129}, prepare=hot, fast=True),
        Case("L1 hit, request id with a space", "/items/hot", {"X-Request-ID": "a b"}, prepare=hot, fast=True),
        Case("L1 hit, a token sent", "/items/hot", {"Authorization": "Bearer wrong"}, prepare=hot, fast=True),
        Case("L1 hit, an Origin", "/items/hot", {"Origin": ORIGIN}, prepare=hot, fast=True),
        Case("L1 hit, another Origin", "/items/hot", {"Origin": "https://evil.example"}, prepare=hot, fast=True),
        Case("L1 hit, percent-encoded", "/items/%68ot", prepare=hot, fast=True),
        Case("Redis hit", "/items/in-redis", prepare=only_in_redis),
        Case("database read", "/items/in-db", prepare=not_cached("in-db")),
        Case("L1 entry expired", "/items/stale-l1", prepare=expired_in_l1),
        Case("L1 not trusted", "/items/untrusted", prepare=untrusted),
        Case("L1 trusted again", "/items/hot", prepare=hot, fast=True),
        Case("deleted: tombstone", "/items/gone"),
        Case("never existed", "/items/nobody", prepare=not_cached("nobody")),
        Case("id past the length limit", "/items/" + "L" * 65),
        Case("id with a bad character", "/items/h.t"),
        Case("encoded slash", "/items/a%2Fb"),
        Case("trailing slash", "/items/hot/", prepare=hot),
        Case("double slash", "//items/hot", prepare=hot),
        Case("If-None-Match, matching: 304", "/items/hot", {"If-None-Match": etag}, prepare=hot),
        Case("If-None-Match, weak match: 304", "/items/hot", {"If-None-Match": f"W/{etag}"}, prepare=hot),
        Case("If-None-Match, another tag", "/items/hot", {"If-None-Match": '"hot.1"'}, prepare=hot),
        Case("HEAD", "/items/hot", method="HEAD", prepare=hot),
        Case("query string", "/items/hot?x=1", prepare=hot),
        Case("empty query string", "/items/hot?", prepare=hot, fast=True),
        Case("a body on a GET", "/items/hot", headers=JSON_HEADERS, body=b"{}", prepare=hot),
        Case("OPTIONS", "/items/hot", {"Origin": ORIGIN}, method="OPTIONS"),
        Case(
            "CORS preflight", "/items/hot", {"Origin": ORIGIN, "Access-Control-Request-Method": "PUT"}, method="OPTIONS"
        ),
        Case("list", "/items"),
        Case("liveness", "/health/live"),
        Case("openapi", "/openapi.json"),
    ]


def default_fast(case: Case) -> bool:
    return case.fast


@pytest.mark.parametrize(
    ("settings", "answers"),
    [
        ({}, "L1 hits"),
        ({"CORS_ORIGINS": ORIGIN}, "L1 hits"),
        ({"CORS_ORIGINS": f"{ORIGIN}, https://other.example.com:8443"}, "L1 hits"),
        ({"CORS_ORIGINS": "*"}, "L1 hits"),
        ({"API_TOKEN": "s3cret"}, "L1 hits"),
        ({"HTTP_MAX_AGE": "60", "HTTP_STALE_WHILE_REVALIDATE": "30"}, "L1 hits"),
        ({"REQUEST_METRICS": "false", "ACCESS_LOG": "false"}, "L1 hits"),
        ({"CACHE_L1_MAX_ITEMS": "0"}, "nothing"),
        ({"CACHE_ENABLED": "false"}, "nothing"),
    ],
    ids=[
        "defaults",
        "cors",
        "cors-two-origins",
        "cors-any",
        "auth",
        "max-age",
        "no-metrics-no-log",
        "l1-off",
        "cache-off",
    ],
)
def test_the_fast_path_answers_as_the_view_does(make_app, access_lines, settings, answers):
    app = make_app(**PARITY, **settings)
    write_headers = {"Authorization": f"Bearer {settings['API_TOKEN']}"} if "API_TOKEN" in settings else None

    def fast(case: Case) -> bool:
        return case.fast and answers == "L1 hits"

    assert_parity(app, matrix(app, write_headers), access_lines, fast)


def test_with_redis_down_nothing_is_answered_before_routing(make_app, access_lines):
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = make_app(**PARITY, REDIS_URL=dead, REDIS_CLUSTER="false", REDIS_BREAKER_FAILURES="1")
    s = running_cache()
    for item_id in ("a", "b"):
        put(app, item_id, {"name": item_id})
    assert not s.trust.usable  # the breaker opened: L1 is bypassed until Redis answers again
    cases = [
        Case("read while Redis is down", "/items/a"),
        Case("again", "/items/b"),
        Case("never existed", "/items/nobody"),
        Case("304", "/items/a", headers={"If-None-Match": '"a.1"'}),
    ]
    assert_parity(app, cases, access_lines, default_fast)


def test_a_hit_is_answered_before_routing_and_counted_like_the_view(make_app, access_lines):
    app = make_app(**PARITY)
    put(app, "p1", {"name": "p1"})
    answer = send(app, app.wsgi_app, Case("hit", "/items/p1"), access_lines)
    assert not answer.dispatched and answer.response.status_code == 200
    assert answer.response.headers["X-Cache"] == "lru"
    assert answer.metrics == {
        ("cache_requests_total", (("tier", "lru"),)): 1,
        ("flask_http_request_total", (("method", "GET"), ("status", "200"))): 1,
        (
            "flask_http_request_duration_seconds_count",
            (("endpoint", "items.get_item"), ("method", "GET"), ("status", "200")),
        ): 1,
    }
    assert [(line["path"], line["status"], line["tier"], line["bytes"]) for line in answer.log] == [
        ("/items/p1", 200, "lru", len(answer.response.get_data()))
    ]


def test_a_declined_request_reaches_flask_untouched(make_app):
    app = make_app(**PARITY)
    fast_path, flask_app = app.wsgi_app, app.wsgi_app.app
    sent, received = [], []

    def flask_side(environ, start_response):
        received.append((environ, dict(environ)))
        return flask_app(environ, start_response)

    def client_side(environ, start_response):
        sent.append((environ, dict(environ)))
        return fast_path(environ, start_response)

    fast_path.app = flask_side
    for path in ("/items/missing?x=1", "/items/missing", "/health/live"):
        response = Client(client_side).get(path, headers={"X-Request-ID": "r1"})
        assert response.status_code in (200, 404)
    assert len(sent) == len(received) == 3
    for (environ_sent, copy_sent), (environ_received, copy_received) in zip(sent, received, strict=True):
        assert environ_received is environ_sent and copy_received == copy_sent


def test_fast_path_off_leaves_flask_alone(make_app):
    app = make_app(FAST_PATH="off")
    assert not isinstance(app.wsgi_app, FastPath)
    assert app.config["SERVICE_CONFIG"].fast_path is False


def test_fast_path_setting_is_validated():
    from config import ConfigError, load_config

    assert load_config({}).fast_path is True
    assert load_config({"FAST_PATH": "on"}).fast_path is True
    with pytest.raises(ConfigError, match="FAST_PATH"):
        load_config({"FAST_PATH": "sometimes"})
    assert isinstance(load_config({"FAST_PATH": "0"}), Config)


def test_the_exporters_metrics_are_found_without_prometheus_clients_private_names():
    """The fast path records into the exporter's own metric objects, found through the registry's public
    register(), not prometheus_client's private name map (here renamed away, as a release might)."""
    from config import load_config
    from routes.fast_path import request_metrics
    from routes.http import init_request_metrics

    app = Flask(__name__)
    app.config["SERVICE_CONFIG"] = load_config({})
    init_request_metrics(app)
    registry = app.extensions["request_metrics_registry"]
    vars(registry)["renamed"] = vars(registry).pop("_names_to_collectors")
    metrics = request_metrics(registry)
    assert metrics is not None
    metrics.record("GET", "items.get_item", 200, 0.001)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples}
    assert samples[("flask_http_request_total", (("method", "GET"), ("status", "200")))] == 1
    labels = (("endpoint", "items.get_item"), ("method", "GET"), ("status", "200"))
    assert samples[("flask_http_request_duration_seconds_count", labels)] == 1


# PUT: a write cannot be sent twice from one state (versions never repeat), so each case writes a twin
# id with and without the fast path, from the same history, and the answers are compared with the id
# (and the body's updated_at) masked.
WRITE_BODY = b'{"name": "w", "tags": ["a", "b"]}'
UPDATED_AT = re.compile(rb'"updated_at": ?"[^"]*"')


@dataclass
class PutCase:
    name: str
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    body: bytes | None = WRITE_BODY  # "{id}" in it is the case's id
    path: str = "/items/{id}"
    exists: bool = False  # written once (through Flask) before this PUT, so the PUT updates it
    fails: Exception | None = None  # what the database write raises
    fast: bool = False  # the fast path answers it itself (in the default settings)


def send_put(app: Flask, wsgi: Any, case: PutCase, item_id: str, lines: AccessLines, writes: list[str]) -> Answer:
    """`case` as a PUT of `item_id`, each database write recorded in `writes` (or failing as the case says)."""
    if case.exists:
        put(app, item_id, {"name": "before"}, {k: v for k, v in case.headers.items() if k == "Authorization"})
    body = case.body.replace(b"{id}", item_id.encode()) if case.body is not None else None
    store = app.extensions["item_store"]
    store.upsert_if = counting_writes(store.upsert_if, writes, case.fails)
    try:
        return send(app, wsgi, Case(case.name, case.path.format(id=item_id), case.headers, "PUT", body=body), lines)
    finally:
        del store.upsert_if


def masked(answer: Answer, item_id: str, sent: dict[str, str]) -> tuple[Any, ...]:
    body = UPDATED_AT.sub(b'"updated_at": "<time>"', answer.response.get_data()).replace(item_id.encode(), b"<id>")
    case = Case("", "", sent)
    headers = [(n, v.replace(item_id, "<id>")) for n, v in comparable_headers(answer, case)]
    log = [{**line, "path": line["path"].replace(item_id, "<id>")} for line in comparable_log(answer, case)]
    return answer.response.status, body, headers, log


def counting_writes(real: Callable[..., Any], writes: list[str], fails: Exception | None) -> Callable[..., Any]:
    """The store's upsert_if, recording each id written, raising `fails` instead of writing if given."""

    def upsert_if(item_id: str, *args: Any) -> Any:
        writes.append(item_id)
        if fails is not None:
            raise fails
        return real(item_id, *args)

    return upsert_if


def assert_put_parity(app: Flask, cases: list[PutCase], lines: AccessLines, fast: Callable[[PutCase], bool]) -> None:
    assert isinstance(app.wsgi_app, FastPath)
    L1_ENTRIES.set(len(running_cache().lru))  # the gauge a test before left: compared by its change
    for number, case in enumerate(cases):
        answers: list[tuple[Answer, str]] = []
        writes: list[str] = []
        for wsgi, item_id in ((app.wsgi_app, f"w{number}-a"), (app.wsgi_app.app, f"w{number}-b")):
            answers.append((send_put(app, wsgi, case, item_id, lines, writes), item_id))
        (on, on_id), (off, off_id) = answers
        where = f"{case.name}: PUT {case.path} {case.headers}"
        assert off.dispatched, where
        assert on.dispatched is not fast(case), f"{where}: answered by {'Flask' if on.dispatched else 'the fast path'}"
        assert masked(on, on_id, case.headers) == masked(off, off_id, case.headers), where
        assert on.metrics == off.metrics, where
        assert writes.count(on_id) == writes.count(off_id) <= 2, f"{where}: {writes}"  # never written again


def put_cases(token: str | None) -> list[PutCase]:
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    with_auth = {**JSON_HEADERS, **auth}
    return [
        PutCase("new item: 201", with_auth, fast=True),
        PutCase("update: 200", with_auth, exists=True, fast=True),
        PutCase("caller's request id", {**with_auth, "X-Request-ID": "req-9"}, fast=True),
        PutCase("an Origin", {**with_auth, "Origin": ORIGIN}, fast=True),
        PutCase("another Origin", {**with_auth, "Origin": "https://evil.example"}, fast=True),
        PutCase("the URL's id in the body", with_auth, body=b'{"id": "{id}", "n": 1}', fast=True),
        PutCase("id at the length limit", with_auth, path="/items/{id}" + "L" * 58, fast=True),
        PutCase("another id in the body", with_auth, body=b'{"id": "other", "n": 1}'),
        PutCase("a number as the id in the body", with_auth, body=b'{"id": 7}'),
        PutCase("not JSON", with_auth, body=b"{nope"),
        PutCase("not an object", with_auth, body=b"[1, 2]"),
        PutCase("a read-only field", with_auth, body=b'{"version": 3}'),
        PutCase("duplicate keys", with_auth, body=b'{"a": 1, "a": 2}'),
        PutCase("empty body", with_auth, body=b""),
        PutCase("too large", with_auth, body=b'{"pad": "' + b"x" * 2048 + b'"}'),
        PutCase("charset in Content-Type", {**auth, "Content-Type": "application/json; charset=utf-8"}),
        PutCase("not JSON's media type", {**auth, "Content-Type": "text/plain"}),
        PutCase("If-Match: *", {**with_auth, "If-Match": "*"}, exists=True),
        PutCase("If-None-Match: *", {**with_auth, "If-None-Match": "*"}),
        PutCase("query string", with_auth, path="/items/{id}?x=1"),
        PutCase("id past the length limit", with_auth, path="/items/{id}" + "L" * 64),
        PutCase("id with a bad character", with_auth, path="/items/{id}.x"),
        PutCase("no token", JSON_HEADERS, fast=token is None),
        PutCase("a wrong token", {**JSON_HEADERS, "Authorization": "Bearer wrong"}, fast=token is None),
        PutCase("database down", with_auth, fails=DatabaseUnavailable("refused")),
        PutCase("deadline", with_auth, exists=True, fails=DeadlineExceeded("a database connection")),
        PutCase("commit outcome unknown", with_auth, fails=CommitOutcomeUnknown("cut")),
        PutCase("a bug", with_auth, fails=RuntimeError("boom")),
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"API_TOKEN": "s3cret"},
        {"CORS_ORIGINS": ORIGIN},
        {"CORS_ORIGINS": f"{ORIGIN}, https://other.example.com:8443"},
        {"CORS_ORIGINS": "*"},
        {"REQUEST_METRICS": "false", "ACCESS_LOG": "false"},
        {"CACHE_L1_MAX_ITEMS": "0"},
        {"CACHE_ENABLED": "false"},
    ],
    ids=["defaults", "auth", "cors", "cors-two-origins", "cors-any", "no-metrics-no-log", "l1-off", "cache-off"],
)
def test_the_fast_path_writes_as_the_view_does(make_app, access_lines, settings):
    app = make_app(**PARITY, MAX_ITEM_BYTES="1024", **settings)

    def fast(case: PutCase) -> bool:
        return case.fast

    assert_put_parity(app, put_cases(settings.get("API_TOKEN")), access_lines, fast)


def test_a_write_answered_before_routing_is_counted_like_the_view(make_app, access_lines):
    app = make_app(**PARITY)
    created = send(app, app.wsgi_app, Case("new", "/items/n1", JSON_HEADERS, "PUT", body=WRITE_BODY), access_lines)
    assert not created.dispatched and created.response.status_code == 201
    assert created.response.headers["Location"] == "/items/n1" and created.response.headers["ETag"] == '"n1.1"'
    assert created.metrics[("flask_http_request_total", (("method", "PUT"), ("status", "201")))] == 1
    labels = (("endpoint", "items.put_item"), ("method", "PUT"), ("status", "201"))
    assert created.metrics[("flask_http_request_duration_seconds_count", labels)] == 1
    assert created.metrics[("cache_write_outcomes_total", (("outcome", "written"),))] == 1
    assert [(line["path"], line["status"], line["bytes"]) for line in created.log] == [
        ("/items/n1", 201, len(created.response.get_data()))
    ]
    read = Client(app.wsgi_app).get("/items/n1")
    assert read.headers["X-Cache"] == "lru" and read.json["name"] == "w"
