"""One log format: JSON lines by default off a terminal, text on one; a request's access line."""

from __future__ import annotations

import json
import logging

import pytest

import logs
from config import ConfigError, load_config


def record(message: str, **extra) -> logging.LogRecord:
    entry = logging.LogRecord("access", logging.INFO, __file__, 1, message, (), None)
    entry.__dict__.update(extra)
    return entry


def test_a_json_line_carries_the_request_fields_and_nothing_else():
    line = json.loads(logs.JsonFormatter().format(record("GET /items/a 200", status=200, request_id="r-1", body="x")))
    assert {"time", "level", "logger", "message", "pid", "status", "request_id"} == set(line)
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
