"""One log format: JSON lines by default off a terminal, text on one; a request's access line."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import random
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

import logs
from config import ConfigError, load_config


def record(message: str, **extra) -> logging.LogRecord:
    entry = logging.LogRecord("access", logging.INFO, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def test_a_json_line_carries_the_request_fields_and_the_extra_ones_but_never_a_body():
    entry = record("GET /items/a 200", status=200, request_id="r-1", body="x", item_id="a", attempts=3)
    line = json.loads(logs.JsonFormatter().format(entry))
    assert {"time", "level", "logger", "message", "pid", "status", "request_id", "item_id", "attempts"} == set(line)
    assert (line["item_id"], line["attempts"]) == ("a", 3)
    assert line["level"] == "INFO" and line["logger"] == "access" and line["status"] == 200
    assert line["time"].endswith("+00:00")  # UTC, milliseconds


def test_text_is_one_readable_line():
    text = logs.formatter("text").format(record("GET /items/a 200"))
    assert "INFO" in text and "access: GET /items/a 200" in text and not text.startswith("{")


def test_log_format_is_checked():
    assert load_config({"LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        load_config({"LOG_FORMAT": "xml"})


def test_each_request_logs_one_access_line_with_its_id_tier_and_time(make_app, caplog):
    client = make_app().test_client()
    client.put("/items/l1", data="{}", headers={"Content-Type": "application/json"})
    with caplog.at_level(logging.INFO, logger="access"):
        response = client.get("/items/l1", headers={"X-Request-ID": "trace-77"})
    (line,) = [r for r in caplog.records if r.name == "access" and r.method == "GET"]
    assert (line.method, line.path, line.status, line.tier) == ("GET", "/items/l1", 200, "lru")
    assert line.request_id == "trace-77" == response.headers["X-Request-ID"]
    assert line.duration_ms >= 0 and line.bytes == len(response.data)


def test_the_access_log_can_be_turned_off(make_app, caplog):
    client = make_app(ACCESS_LOG="false").test_client()
    with caplog.at_level(logging.INFO, logger="access"):
        client.get("/health/live")
    assert [r for r in caplog.records if r.name == "access"] == []


@contextlib.contextmanager
def production_logging(level: int = logging.INFO) -> Iterator[io.StringIO]:
    """Root logging as gunicorn.conf.py leaves it in a worker: one StreamHandler, JSON, nothing else (pytest
    adds its own handlers for a test's call, so this is entered inside the test)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    saved = logging.root.handlers, logging.root.level, logs.ACCESS.handlers
    logging.root.handlers, logs.ACCESS.handlers = [handler], []
    logging.root.setLevel(level)
    try:
        yield stream
    finally:
        logging.root.handlers, logs.ACCESS.handlers = saved[0], saved[2]
        logging.root.setLevel(saved[1])


FIELDS = {"method": "GET", "path": "/items/a\u00e9", "status": 200, "duration_ms": 0.25, "bytes": 12, "tier": "lru"}


def test_the_access_line_written_directly_is_the_line_logging_writes(monkeypatch):
    moment = 1_790_000_000.123456  # one clock for both paths (LogRecord reads time_ns on Python 3.13)
    monkeypatch.setattr(time, "time", lambda: moment)
    monkeypatch.setattr(time, "time_ns", lambda: int(moment * 1e9))
    fields = {**FIELDS, "request_id": "r-1"}
    made, factory = [], logging.getLogRecordFactory()
    logging.setLogRecordFactory(lambda *args, **kwargs: made.append(args) or factory(*args, **kwargs))
    try:
        with production_logging() as stream:
            logs.access("GET /items/a 200 0.2ms", fields)
    finally:
        logging.setLogRecordFactory(factory)
    assert made == []  # written without a record
    with production_logging() as long_way:
        logs.ACCESS.info("GET /items/a 200 0.2ms", extra=fields)
    assert stream.getvalue() == long_way.getvalue()  # byte for byte, the newline included
    line = json.loads(stream.getvalue())
    assert line["path"] == "/items/a\u00e9" and line["logger"] == "access" and line["pid"] == os.getpid()


@pytest.mark.parametrize("setting", ["no process ids", "renamed level"])
def test_logging_settings_the_template_does_not_know_send_the_line_through_logging(setting, monkeypatch):
    if setting == "no process ids":
        monkeypatch.setattr(logging, "logProcesses", False)
    else:
        monkeypatch.setattr(logging, "_levelToName", {**logging._levelToName, logging.INFO: "info"})
    with production_logging() as stream:
        logs.access("GET /items/a 200 0.2ms", {**FIELDS, "request_id": "r-4"})
    line = json.loads(stream.getvalue())
    assert (line["pid"], line["level"]) == ((None, "INFO") if setting == "no process ids" else (os.getpid(), "info"))


def test_a_handler_of_anyone_else_sees_the_access_line_as_a_record():
    records: list[logging.LogRecord] = []
    with production_logging() as stream:
        logging.root.addHandler(Remember(records))
        logs.access("GET /items/a 200 0.2ms", {**FIELDS, "request_id": "r-2"})
    (entry,) = records
    assert entry.getMessage() == "GET /items/a 200 0.2ms" and entry.request_id == "r-2" and entry.tier == "lru"
    assert json.loads(stream.getvalue())["request_id"] == "r-2"  # and the stream has it too


def test_no_access_line_below_the_level():
    with production_logging(logging.WARNING) as stream:
        logs.access("GET /items/a 200 0.2ms", {**FIELDS, "request_id": "r-3"})
    assert stream.getvalue() == ""


class Remember(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_the_time_is_utc_with_milliseconds_and_never_later_than_the_event():
    rng = random.Random(17)
    moments = [0.0, 1.9995, 5.99999999999999, 1_790_000_000.0004, *(rng.uniform(0, 4e9) for _ in range(2000))]
    for moment in moments:
        text = logs.iso_time(moment)
        parsed = datetime.fromisoformat(text)
        assert parsed.utcoffset() == timedelta(0) and re.fullmatch(r"[-\d]{10}T[:\d]{8}\.\d{3}\+00:00", text)
        assert 0 <= moment - parsed.timestamp() < 0.001 + 1e-6, (moment, text)  # truncated, as a clock reads


def test_the_access_template_writes_what_the_json_encoder_writes():
    rng = random.Random(7)
    alphabet = 'az/%"\\\t\n\x00\x7f\u00e9\u2028\U0001f600'
    for _ in range(2000):
        fields = {
            "method": rng.choice(["GET", "HEAD", "PUT", "DELETE"]),
            "path": "/items/" + "".join(rng.choice(alphabet) for _ in range(rng.randrange(12))),
            "status": rng.choice([200, 304, 404, 503]),
            "duration_ms": rng.choice([0.0, -0.0, 0.01, 12.5, rng.uniform(0, 1e4), 1e-7, 1e300, math.inf, math.nan]),
            "bytes": rng.choice([None, 0, 81, 2**40]),
            "tier": rng.choice([None, "lru", "redis", "db"]),
            "request_id": "".join(rng.choice(alphabet) for _ in range(rng.randrange(40))),
        }
        created, message = rng.uniform(0, 4e9), f"{fields['method']} {fields['path']} 200"
        expected = logs.dumps(logs.json_object(created, "INFO", "access", message, 4242, fields))
        assert logs.access_line(created, message, 4242, fields) == expected


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_a_text_line_escapes_control_characters_so_a_path_cannot_forge_a_line(make_app):
    client = make_app(LOG_FORMAT="text").test_client()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter("text"))
    saved = logging.root.handlers, logging.root.level
    logging.root.handlers = [handler]
    logging.root.setLevel(logging.INFO)
    try:
        response = client.get("/items/a%0a2026-12-07 12:00:00,000 INFO [1] access: GET admin 200%0d%1b[2J")
    finally:
        logging.root.handlers = saved[0]
        logging.root.setLevel(saved[1])
    assert response.status_code == 400  # the id is refused; the request is still logged
    (line,) = stream.getvalue().splitlines()  # one line, however many newlines the path decoded to
    assert "GET /items/a\\n2026-12-07 12:00:00,000 INFO" in line and "200\\r\\x1b[2J 400" in line


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_a_line_logged_while_serving_a_request_carries_its_id(log_format, make_app):
    app = make_app()

    @app.get("/test-logs-warn")
    def warn() -> str:
        logging.getLogger("items.test").warning("inside the request")
        return "ok"

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.formatter(log_format))
    logging.getLogger("items.test").addHandler(handler)
    try:
        client = app.test_client()
        assert client.get("/test-logs-warn", headers={"X-Request-ID": "trace-88"}).status_code == 200
        logging.getLogger("items.test").warning("after the request")
    finally:
        logging.getLogger("items.test").removeHandler(handler)
    inside, after = stream.getvalue().splitlines()
    if log_format == "json":
        assert json.loads(inside)["request_id"] == "trace-88" and "request_id" not in json.loads(after)
    else:
        assert inside.endswith("inside the request request_id=trace-88") and "request_id" not in after
