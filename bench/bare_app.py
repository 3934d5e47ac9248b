"""The baselines of bench/fast_path.py, served by the same gunicorn settings as the app (`gunicorn
bench.bare_app:app` reads the project's gunicorn.conf.py):

- `app`: a bare WSGI callable that answers 2 bytes (issue 17's baseline);
- `item_app`: a bare WSGI callable that answers what an L1 hit answers (the same status, headers and a body
  of the same size, built once by routes/items.py found_headers), doing nothing per request: what gunicorn itself
  spends on that answer (its header checks, the bytes), which no fast path can go below;
- `observed_app`: `item_app` plus the work issue 17 requires of every L1 hit besides finding it and building
  its headers: the tier counter, the request metrics (the exporter's own series, resolved as the fast path
  resolves them), a request id and the access line (as ACCESS_LOG says), each through the function the fast
  path calls. What any L1 hit with the app's observability costs at least; the fast path's own share is what
  it costs beyond this.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from cache.core.entry import CacheEntry
from cache.core.metrics import REQUESTS_BY_TIER
from config import load_config
from routes.fast_path import GET_ENDPOINT, STATUS_LINES, request_metrics
from routes.http import init_request_metrics, log_request, new_request_id
from routes.items import found_headers

# An item as tests.support.seed_items writes it, as L1 holds it; a made-up request id of the usual length.
BODY = b'{"id":"item-0","seeded":true,"version":1,"updated_at":"2026-01-01T00:00:00.000Z"}'
ITEM = CacheEntry.build("item-0", 1, BODY)
ITEM_HEADERS = found_headers(ITEM, "lru", load_config({}), "0" * 32, [])

CONFIG = load_config()  # the environment's: ACCESS_LOG, REQUEST_METRICS
_exporter = Flask(__name__)  # only for the exporter to make its metrics, as it makes the app's
_exporter.config["SERVICE_CONFIG"] = CONFIG
init_request_metrics(_exporter)
METRICS = request_metrics(_exporter.extensions["request_metrics_registry"])
L1_READS = REQUESTS_BY_TIER["lru"]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def item_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(STATUS_LINES[200], ITEM_HEADERS)
    return [ITEM.body or b""]


def observed_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    started = time.perf_counter()
    L1_READS.inc()
    request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
    start_response(STATUS_LINES[200], ITEM_HEADERS)
    if METRICS is not None:
        METRICS.record("GET", GET_ENDPOINT, 200, max(time.perf_counter() - started, 0))
    if CONFIG.access_log:
        log_request("GET", environ["PATH_INFO"], 200, started, len(BODY), "lru", request_id)
    return [BODY]
