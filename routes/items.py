"""The items resource: its views (which translate HTTP to the cache-aside flow, cache/core/item_cache.py,
and back), the one definition of a found item's answer, and the fast path: a WSGI wrapper in front of
Flask (FAST_PATH, on by default) that answers exactly one kind of request itself, a plain
`GET /items/<id>` (a valid id, no query string, no body, no `If-None-Match`) whose item L1 holds, fresh
and trusted. Its answer is the view's (found_headers), counted in the same metrics and logged in the same
access line; everything else goes to Flask untouched: it decides nothing the view would decide
differently, it only declines (tests/test_fast_path.py holds it to that). Flask's after_request hooks
set some of these headers again on the routed answer, to the same values: a header a later change adds in
a hook for every response must be added to found_headers too; the parity suite fails until it is.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request, url_for
from werkzeug.datastructures import EnvironHeaders

from cache.core.entry import CacheEntry, make_etag
from cache.core.item_cache import ItemCache, Written
from config import Config
from db import Deadline, ItemStore, KeyBusy, KeyedCreate, KeyReused, NotFound, PreconditionFailed, Replay
from routes.errors import ApiError, error_response
from routes.http import (
    SECURITY_HEADERS,
    RequestMetricsRegistry,
    StartResponse,
    WSGIApp,
    cache_status,
    cors_headers,
    item_cache_control,
    log_request,
    new_request_id,
    request_id,
    require_token,
)
from routes.idempotency import create_once, fingerprint, idempotency_key, key_busy, key_reused, replayed
from routes.writes import parse_item_body, write_precondition

logger = logging.getLogger(__name__)

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
LIMIT_PATTERN = re.compile(r"[0-9]{1,4}")
STATUS = 200
STATUS_LINE = "200 OK"  # as werkzeug writes it
bp = Blueprint("items", __name__, url_prefix="/items")
JSON = "application/json"


@bp.before_request
def _start_deadline() -> None:
    """The request's deadline starts before anything it waits for (REQUEST_TIMEOUT)."""
    g.deadline = Deadline.after(current_app.config["SERVICE_CONFIG"].request_timeout)


def _deadline() -> Deadline:
    deadline: Deadline = g.deadline
    return deadline


@bp.before_request
def _authenticate_writes() -> None:
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        require_token(admin=False)


def _store() -> ItemStore:
    store: ItemStore = current_app.extensions["item_store"]
    return store


def _cache() -> ItemCache:
    item_cache: ItemCache = current_app.extensions["item_cache"]
    return item_cache


def _item_response(entry: CacheEntry, status: int) -> Response:
    return Response(entry.body, status=status, headers={"ETag": entry.etag}, content_type=JSON)


@bp.get("/<item_id>")
def get_item(item_id: str) -> Response:
    read = _cache().read_item(check_id(item_id), _deadline())
    entry, tier = read.entry, read.tier
    if not entry.exists:
        return error_response(404, "not_found", f"no item with id {item_id!r}", {"X-Cache": tier})
    if_none_match = request.headers.get("If-None-Match")
    # If-None-Match uses the weak comparison (RFC 9110 13.1.2): W/"x" matches "x".
    if if_none_match and request.if_none_match.contains_weak(entry.etag.strip('"')):
        return Response(status=304, headers={"ETag": entry.etag, "X-Cache": tier})
    # The same answer the fast path gives an L1 hit before routing (routes/items.py).
    cors = cors_headers(current_app.extensions.get("cors_options"), request.headers, request.method)
    return found_response(entry, tier, current_app.config["SERVICE_CONFIG"], request_id(), cors)


@bp.get("")
def list_items() -> Response:
    limit, after = list_params()
    page = _store().list(limit + 1, after)  # one more than asked: is there a next page?
    items = [item.to_dict() for item in page[:limit]]
    next_id = items[-1]["id"] if len(page) > limit else None
    return Response(json.dumps({"items": items, "next": next_id}), content_type=JSON)


@bp.post("")
def create_item() -> Response:
    key = idempotency_key()
    body = parse_item_body()
    # Of the body as sent, before its id (if any) is taken out of it.
    body_print = fingerprint(body) if key is not None else ""
    if "id" not in body:
        item_id = secrets.token_urlsafe(12)  # 16 characters of the id alphabet
    elif not isinstance(item_id := body.pop("id"), str):
        return error_response(400, "invalid_id", "id must be a string (or left out, to have one made up)")
    expect = write_precondition(check_id(item_id))
    if key is None:
        return _written(_cache().write_item(item_id, body, expect, _deadline()))
    create = KeyedCreate(key, body_print, item_id)
    match create_once(_cache(), _store(), create, body, expect, _deadline()):
        case Replay(stored):
            return replayed(stored)
        case KeyReused() as reused:
            return key_reused(reused)
        case KeyBusy() as busy:
            return key_busy(busy)
        case written:
            return _written(written)


@bp.put("/<item_id>")
def put_item(item_id: str) -> Response:
    expect = write_precondition(check_id(item_id))
    body = parse_item_body()
    if body.pop("id", item_id) != item_id:
        return error_response(400, "id_mismatch", "the body's id differs from the URL's; drop it or make them equal")
    return _written(_cache().write_item(item_id, body, expect, _deadline()))


def _written(result: Written | PreconditionFailed) -> Response:
    if isinstance(result, PreconditionFailed):
        return _precondition_failed(result)
    response = _item_response(result.entry, 201 if result.created else 200)
    if result.created:
        response.headers["Location"] = url_for("items.get_item", item_id=result.item_id)
    return response


def _precondition_failed(failed: PreconditionFailed) -> Response:
    """412 with the current ETag (none when there is no live item), so the client can re-read and retry."""
    item_id = failed.item_id
    if failed.current_version is None:
        return error_response(412, "precondition_failed", f"no item with id {item_id!r} matches the precondition")
    etag = make_etag(item_id, failed.current_version)
    message = f"item {item_id!r} is now at {etag}: nothing was written; re-read it and retry with that ETag"
    return error_response(412, "precondition_failed", message, {"ETag": etag})


@bp.delete("/<item_id>")
def delete_item(item_id: str) -> Response:
    expect = write_precondition(check_id(item_id))
    result = _cache().remove_item(item_id, expect, _deadline())
    if isinstance(result, PreconditionFailed):
        return _precondition_failed(result)
    if isinstance(result, NotFound):
        return error_response(404, "not_found", f"no item with id {item_id!r}")
    return Response(status=204)


def list_params() -> tuple[int, str | None]:
    """`limit` (1-1000, default 50) and `after` (an id) for GET /items."""
    unknown = set(request.args) - {"limit", "after"}
    if unknown:
        raise ApiError(400, "unknown_parameter", f"unknown query parameter(s): {', '.join(sorted(unknown))}")
    raw_limit = request.args.get("limit", "50")
    if not LIMIT_PATTERN.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= 1000:
        raise ApiError(400, "invalid_limit", "limit must be a whole number from 1 to 1000")
    after = request.args.get("after")
    if after is not None and not ID_PATTERN.fullmatch(after):
        raise ApiError(400, "invalid_after", "after must be an item id (1-64 of A-Z, a-z, 0-9, '_', '-')")
    return int(raw_limit), after


def check_id(item_id: str) -> str:
    if not ID_PATTERN.fullmatch(item_id):
        raise ApiError(400, "invalid_id", "id must be 1-64 characters of A-Z, a-z, 0-9, '_' or '-'")
    return item_id


def found_headers(
    entry: CacheEntry, tier: str, config: Config, request_id: str, cors: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Every header of a 200 answer to GET /items/<id> that `tier` answered with `entry` (which exists);
    `cors`: routes.http.cors_headers for the request."""
    return [
        ("Content-Type", JSON),
        ("Content-Length", str(len(entry.body or b""))),
        ("ETag", entry.etag),
        ("X-Cache", tier),
        ("Cache-Status", cache_status(tier, config)),
        ("Cache-Control", item_cache_control(config)),
        ("X-Request-ID", request_id),
        *SECURITY_HEADERS.items(),
        *cors,
    ]


def found_response(
    entry: CacheEntry, tier: str, config: Config, request_id: str, cors: list[tuple[str, str]]
) -> Response:
    """The same answer as a Flask response (the routed view's)."""
    return Response(entry.body, status=STATUS, headers=found_headers(entry, tier, config, request_id, cors))


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
        self.cors_options = cors_options  # flask-cors's, as routes/http.py resolved them; None: CORS off

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


def install_fast_path(app: Flask, config: Config) -> None:
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
