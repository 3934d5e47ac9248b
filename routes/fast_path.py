"""The fast path: a WSGI wrapper in front of Flask (FAST_PATH, on by default) that answers two kinds of
request itself, with the views' own answers (routes/items.py), counted in the same metrics and logged in
the same access line:
- a plain `GET /items/<id>` (a valid id, no query string, no body, no `If-None-Match`) whose item L1 holds,
  fresh and trusted;
- a plain `PUT /items/<id>`: no precondition, no query string, `Content-Type: application/json`, a
  declared length within MAX_ITEM_BYTES, the token if API_TOKEN is set, a body that is a valid item (an
  `id` in it, if any, the URL's). Its write is the view's (ItemCache.write_item); should the write
  raise, the request goes to Flask with what it raised, and the view raises it there
  (routes/items.py FAILED_WRITE), so a failed write is answered, counted and logged as the view does.
Everything else goes to Flask untouched (a declined PUT with its body as sent): the fast path decides
nothing the views would decide differently, it only declines (tests/test_fast_path.py holds it to that).
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from flask import Flask
from werkzeug.datastructures import EnvironHeaders

import logs
from cache.core.item_cache import ItemCache, Written
from config import Config
from db import UNCONDITIONAL, Deadline
from routes.errors import ApiError
from routes.http import (
    RequestMetricsRegistry,
    StartResponse,
    WSGIApp,
    bearer_matches,
    cors_headers,
    log_request,
    new_request_id,
)
from routes.items import FAILED_WRITE, ID_PATTERN, JSON, found_headers, written_headers
from routes.writes import parse_json_object, read_exactly

logger = logging.getLogger(__name__)

GET_ENDPOINT, PUT_ENDPOINT = "items.get_item", "items.put_item"  # the labels their request metrics go under
STATUS_LINES = {200: "200 OK", 201: "201 CREATED"}  # as werkzeug writes them
ITEM_PREFIX = "/items/"
ITEM_PATH = re.compile(f"{ITEM_PREFIX}({ID_PATTERN.pattern})")
# Any of these headers in the request and the view might answer differently (a 304, a 412, a body):
# decline. Names tested one by one, not a tuple looped over: no generator per request.
IF_MATCH, IF_NONE_MATCH, TRANSFER_ENCODING = "HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_TRANSFER_ENCODING"
# prometheus-flask-exporter's default metrics (group_by="endpoint"): recorded here under the same labels.
# Family names: prometheus_client names the counter flask_http_request_total without its _total.
DURATION_METRIC = "flask_http_request_duration_seconds"
TOTAL_METRIC = "flask_http_request"


class RequestMetrics:
    """The exporter's series for what the fast path answers (what its after_request records): one pair of
    children per (method, endpoint, status), of which the fast path answers three."""

    def __init__(self, duration: Any, total: Any) -> None:
        self.duration, self.total = duration, total  # a Histogram, a Counter
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, method: str, endpoint: str, status: int, seconds: float) -> None:
        children = self._children.get((method, endpoint, status))
        if children is None:
            duration = self.duration.labels(method=method, endpoint=endpoint, status=status)
            children = self._children[(method, endpoint, status)] = (duration, self.total.labels(method, status))
        children[0].observe(seconds)
        children[1].inc()


def request_metrics(registry: RequestMetricsRegistry) -> RequestMetrics | None:
    """The exporter's request metrics in `registry`; None when it exports none there (REQUEST_METRICS=false)
    or under other names (an exporter upgrade)."""
    duration, total = registry.collectors.get(DURATION_METRIC), registry.collectors.get(TOTAL_METRIC)
    return None if duration is None or total is None else RequestMetrics(duration, total)


class FastPath:
    """WSGI middleware: an L1 hit of a plain GET /items/<id> and a plain PUT answered here, all else by `app`."""

    def __init__(
        self, app: WSGIApp, item_cache: ItemCache, config: Config, metrics: RequestMetrics | None, cors_options: Any
    ) -> None:
        self.app = app
        self.item_cache = item_cache
        self.config = config
        self.metrics = metrics
        self.cors_options = cors_options  # flask-cors's, as routes/http.py resolved them; None: CORS off

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(ITEM_PREFIX):  # every other route: one check, then Flask
            return self.app(environ, start_response)
        method = environ["REQUEST_METHOD"]
        if method == "GET":
            return self._get(environ, start_response, path)
        if method == "PUT":
            return self._put(environ, start_response, path)
        return self.app(environ, start_response)

    def _get(self, environ: dict[str, Any], start_response: StartResponse, path: str) -> Iterable[bytes]:
        started = time.perf_counter()
        match = self._plain_item_get(environ, path)
        if match is None:
            return self.app(environ, start_response)
        entry = self.item_cache.read_l1_hit(match.group(1))
        if entry is None or entry.body is None:
            return self.app(environ, start_response)
        request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        cors = cors_headers(self.cors_options, EnvironHeaders(environ), "GET") if self.cors_options else []
        start_response(STATUS_LINES[200], found_headers(entry, "lru", self.config, request_id, cors))
        self._done("GET", GET_ENDPOINT, match.group(0), 200, started, len(entry.body), "lru", request_id)
        return [entry.body]

    def _plain_item_get(self, environ: dict[str, Any], path: str) -> re.Match[str] | None:
        if environ.get("QUERY_STRING") or environ.get("CONTENT_LENGTH", "") not in ("", "0"):
            return None
        if IF_NONE_MATCH in environ or TRANSFER_ENCODING in environ:
            return None
        return ITEM_PATH.fullmatch(path)

    def _put(self, environ: dict[str, Any], start_response: StartResponse, path: str) -> Iterable[bytes]:
        started = time.perf_counter()
        match, length = self._plain_item_put(environ, path)
        if match is None:
            return self.app(environ, start_response)
        item_id, raw = match.group(1), read_exactly(environ["wsgi.input"], length)
        try:
            body: dict[str, Any] | None = parse_json_object(raw)
        except ApiError:
            body = None
        if body is None or body.pop("id", item_id) != item_id:
            return self._decline(environ, start_response, raw)
        request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        logs.REQUEST_ID.set(request_id)  # every line logged while writing carries it, as in Flask
        try:
            deadline = Deadline.after(self.config.request_timeout)
            written = self.item_cache.write_item(item_id, body, UNCONDITIONAL, deadline)
        except Exception as exc:  # noqa: BLE001 - not handled here: handed to the view, which raises it
            environ[FAILED_WRITE], environ["HTTP_X_REQUEST_ID"] = exc, request_id  # logged under one id
            return self._decline(environ, start_response, raw)
        finally:
            logs.REQUEST_ID.set(None)
        assert isinstance(written, Written)  # an unconditional write has no precondition to fail
        status = 201 if written.created else 200
        location = f"{ITEM_PREFIX}{item_id}" if written.created else None
        body_bytes = written.entry.body or b""
        cors = cors_headers(self.cors_options, EnvironHeaders(environ), "PUT") if self.cors_options else []
        start_response(STATUS_LINES[status], written_headers(written, location, request_id, cors))
        self._done("PUT", PUT_ENDPOINT, match.group(0), status, started, len(body_bytes), None, request_id)
        return [body_bytes]

    def _plain_item_put(self, environ: dict[str, Any], path: str) -> tuple[re.Match[str] | None, int]:
        """The path's match and the body's declared length, or (None, 0): decline."""
        length = environ.get("CONTENT_LENGTH", "")
        if not (length.isascii() and length.isdigit() and 0 < int(length) <= self.config.max_item_bytes):
            return None, 0
        if environ.get("QUERY_STRING") or environ.get("CONTENT_TYPE") != JSON or environ.get("SCRIPT_NAME"):
            return None, 0
        if IF_MATCH in environ or IF_NONE_MATCH in environ or TRANSFER_ENCODING in environ:
            return None, 0
        token = self.config.api_token
        if token is not None and not bearer_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            return None, 0
        return ITEM_PATH.fullmatch(path), int(length)

    def _decline(self, environ: dict[str, Any], start_response: StartResponse, raw: bytes) -> Iterable[bytes]:
        environ["wsgi.input"] = io.BytesIO(raw)  # the body as sent, for Flask to read again
        return self.app(environ, start_response)

    def _done(
        self, method: str, endpoint: str, path: str, status: int, started: float, size: int, tier: str | None, rid: str
    ) -> None:
        if self.metrics is not None:
            self.metrics.record(method, endpoint, status, max(time.perf_counter() - started, 0))
        if self.config.access_log:
            log_request(method, path, status, started, size, tier, rid)


def install_fast_path(app: Flask, config: Config) -> None:
    """Put the fast path in front of `app`'s routing, if FAST_PATH allows it."""
    if not config.fast_path:
        return
    metrics = None
    if config.request_metrics:
        metrics = request_metrics(app.extensions["request_metrics_registry"])
        if metrics is None:  # it could not count what the views count: answer nothing rather than differ
            logger.error("fast path off: prometheus-flask-exporter's request metrics were not found")
            return
    cors_options = app.extensions.get("cors_options")
    fast = FastPath(app.wsgi_app, app.extensions["item_cache"], config, metrics, cors_options)
    app.wsgi_app = fast  # type: ignore[method-assign]
