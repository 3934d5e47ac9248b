"""L1 hits answered before Flask's routing (FAST_PATH, on by default).

An L1 hit does almost no work of its own; routing, the request object, hooks and middleware around it
cost more than the hit. This WSGI wrapper, in front of Flask (`app.wsgi_app`), answers exactly one kind of
request itself: a plain `GET /items/<id>` (a valid id, no query string, no body, no `If-None-Match`)
whose item L1 holds, fresh and trusted (ItemCache.read_l1_hit).
Its answer is the routed view's, built by the same function (routes/item_read.py), counted in the same
tier counter and per-endpoint request metrics, logged in the same access line. Everything else (a miss, a
404, a 304, HEAD, an odd path, a disabled or untrusted L1) goes to Flask untouched: the wrapper decides
nothing the view would decide differently, it only declines. tests/test_fast_path.py holds it to that.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flask import Flask
from werkzeug.datastructures import EnvironHeaders

from cache.core.item_cache import ItemCache
from config import Config
from routes.http_headers import cors_headers, log_request, new_request_id
from routes.item_read import STATUS, STATUS_LINE, found_headers
from routes.metrics import RequestMetricsRegistry
from routes.validation import ID_PATTERN

logger = logging.getLogger(__name__)

ENDPOINT = "items.get_item"  # the view's endpoint: the label its request metrics are grouped under
ITEM_PREFIX = "/items/"
ITEM_PATH = re.compile(f"{ITEM_PREFIX}({ID_PATTERN.pattern})")
# Either header in the request and the view might answer differently (a 304, a body): decline. Two names
# tested one by one, not a tuple looped over: no generator per request, and no third name silently ignored.
IF_NONE_MATCH, TRANSFER_ENCODING = "HTTP_IF_NONE_MATCH", "HTTP_TRANSFER_ENCODING"
# prometheus-flask-exporter's default metrics (group_by="endpoint"): recorded here under the same labels.
# Family names: prometheus_client names the counter flask_http_request_total without its _total.
DURATION_METRIC = "flask_http_request_duration_seconds"
TOTAL_METRIC = "flask_http_request"

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class RequestMetrics:
    """The exporter's series for a 200 answer of GET on the item view (what its after_request records)."""

    duration: Any  # a Histogram child
    total: Any  # a Counter child

    def record(self, seconds: float) -> None:
        self.duration.observe(seconds)
        self.total.inc()


def request_metrics(registry: RequestMetricsRegistry) -> RequestMetrics | None:
    """The exporter's request metrics in `registry`, labelled as its hooks label a 200 GET of the item view;
    None when it exports none there (REQUEST_METRICS=false) or under other names (an exporter upgrade)."""
    duration, total = registry.collectors.get(DURATION_METRIC), registry.collectors.get(TOTAL_METRIC)
    if duration is None or total is None:
        return None
    return RequestMetrics(
        duration.labels(method="GET", endpoint=ENDPOINT, status=STATUS), total.labels(method="GET", status=STATUS)
    )


class FastPath:
    """WSGI middleware: an L1 hit of a plain GET /items/<id> answered here, everything else by `app`."""

    def __init__(
        self, app: WSGIApp, item_cache: ItemCache, config: Config, metrics: RequestMetrics | None, cors_options: Any
    ) -> None:
        self.app = app
        self.item_cache = item_cache
        self.config = config
        self.metrics = metrics
        self.cors_options = cors_options  # flask-cors's, as http_headers resolved them; None: CORS off

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(ITEM_PREFIX):  # every other route: one check, then Flask
            return self.app(environ, start_response)
        started = time.perf_counter()
        match = self._plain_item_get(environ, path)
        if match is None:
            return self.app(environ, start_response)
        entry = self.item_cache.read_l1_hit(match.group(1))
        if entry is None or entry.body is None:
            return self.app(environ, start_response)
        request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        cors = cors_headers(self.cors_options, EnvironHeaders(environ), "GET") if self.cors_options else []
        start_response(STATUS_LINE, found_headers(entry, "lru", self.config, request_id, cors))
        if self.metrics is not None:
            self.metrics.record(max(time.perf_counter() - started, 0))
        if self.config.access_log:
            log_request("GET", match.group(0), STATUS, started, len(entry.body), "lru", request_id)
        return [entry.body]

    def _plain_item_get(self, environ: dict[str, Any], path: str) -> re.Match[str] | None:
        if environ["REQUEST_METHOD"] != "GET" or environ.get("QUERY_STRING"):
            return None
        if environ.get("CONTENT_LENGTH", "") not in ("", "0"):
            return None
        if IF_NONE_MATCH in environ or TRANSFER_ENCODING in environ:
            return None
        return ITEM_PATH.fullmatch(path)


def install(app: Flask, config: Config) -> None:
    """Put the fast path in front of `app`'s routing, if FAST_PATH allows it."""
    if not config.fast_path:
        return
    metrics = None
    if config.request_metrics:
        metrics = request_metrics(app.extensions["request_metrics_registry"])
        if metrics is None:  # it could not count what the view counts: answer nothing rather than differ
            logger.error("fast path off: prometheus-flask-exporter's request metrics were not found")
            return
    cors_options = app.extensions.get("cors_options")
    fast = FastPath(app.wsgi_app, app.extensions["item_cache"], config, metrics, cors_options)
    app.wsgi_app = fast  # type: ignore[method-assign]
