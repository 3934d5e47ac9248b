"""What every request and answer shares: the request id, caching and CORS headers, RFC 9211's
`Cache-Status` beside `X-Cache`, the security headers, the access line, the bearer tokens (writes need
API_TOKEN when set, admin always, metrics METRICS_TOKEN when set), the label request metrics group by, and a
405 (JSON, before Flask) for a method no route serves: request metrics label requests by method, and a
client can send any token as one, so counting these would let it add series without end.
"""

from __future__ import annotations

import hmac
import json
import random
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, Request, Response, current_app, g, request
from flask_cors import CORS
from flask_cors.core import get_cors_headers, get_cors_options
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector
from prometheus_flask_exporter import PrometheusMetrics
from werkzeug.routing import Map

import logs
from config import Config
from routes.errors import ApiError

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="item-cache"'}
UNROUTED = "unrouted"  # the endpoint label of every request no route took (a 404, a 405)

# Heroku's router sends a UUID; a caller's own id is kept if it is short and plain (it reaches the logs).
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:+=/-]{1,128}$")
CACHE_NAME = "item-cache"
CACHE_STATUS = {  # X-Cache -> Cache-Status (RFC 9211): hits say which tier; a database load is a miss
    "lru": f"{CACHE_NAME}; hit; detail=lru",
    "redis": f"{CACHE_NAME}; hit; detail=redis",
    "negative": f"{CACHE_NAME}; hit; detail=negative",
    "bloom": f"{CACHE_NAME}; hit; detail=bloom",
    "db": f"{CACHE_NAME}; fwd=miss; stored",
}
EXPOSED = ["ETag", "X-Cache", "Cache-Status", "X-Request-ID", "Location", "Retry-After"]
ALLOWED = ["Content-Type", "Authorization", "If-Match", "If-None-Match", "Idempotency-Key", "X-Request-ID"]


def register(app: Flask, config: Config) -> None:
    app.before_request(_start)
    app.teardown_request(_end)
    app.after_request(_describe)
    app.after_request(_secure)
    if config.cors_origins:
        settings: dict[str, Any] = {
            "origins": list(config.cors_origins),
            "expose_headers": EXPOSED,
            "allow_headers": ALLOWED,
            "max_age": 600,
        }
        CORS(app, **settings)
        # The same options, resolved as flask-cors resolves them for its one resource (/*), for the answers
        # that set their CORS headers themselves (routes/fast_path.py).
        app.extensions["cors_options"] = get_cors_options(app, settings)


def cors_headers(options: Any, request_headers: Any, method: str) -> list[tuple[str, str]]:
    """The CORS headers flask-cors's after_request would add to this request's answer, computed by
    flask-cors itself, and `Vary: Origin` (none without `options`: CORS_ORIGINS unset)."""
    if options is None:
        return []
    headers = [(name, str(value)) for name, value in get_cors_headers(options, request_headers, method).items()]
    if not any(name == "Vary" and _names_origin(value) for name, value in headers):
        headers.append(("Vary", "Origin"))
    return headers


def _names_origin(vary: str) -> bool:
    return any(field.strip().lower() == "origin" for field in vary.split(","))


def _vary_on_origin(response: Response) -> None:
    """With CORS on, every answer depends on the request's Origin (allowed, another, none): a shared cache
    must not give one origin's answer to another. flask-cors says so only when several origins may match."""
    if not any(_names_origin(value) for value in response.headers.getlist("Vary")):
        response.vary.add("Origin")


def item_cache_control(config: Config) -> str:
    """An item's Cache-Control: revalidate with its ETag every time, unless HTTP_MAX_AGE allows reuse."""
    if not config.http_max_age:
        return "no-cache"
    swr = f", stale-while-revalidate={config.http_stale_while_revalidate}" if config.http_stale_while_revalidate else ""
    return f"public, max-age={config.http_max_age}{swr}"


def request_id() -> str:
    """This request's id: the caller's X-Request-ID when it is plain and short, else one made up."""
    return g.get("request_id") or _take_request_id()


def _start() -> None:
    g.started = time.perf_counter()
    _take_request_id()  # (a before_request hook that returned a value would answer the request with it)


def _end(_exc: BaseException | None) -> None:
    logs.REQUEST_ID.set(None)  # the thread's next lines belong to no request, or to the next one


def _take_request_id() -> str:
    g.request_id = new_request_id(request.headers.get("X-Request-ID", ""))
    logs.REQUEST_ID.set(g.request_id)  # every line logged while serving it carries it (logs.py)
    return str(g.request_id)


def new_request_id(incoming: str) -> str:
    """The id a request with this X-Request-ID (or "") is answered and logged under."""
    if incoming and REQUEST_ID.match(incoming):
        return incoming
    # 128 random bits as 32 hex digits, like a UUID's hex; not uuid4(): its os.urandom is a system call that
    # lets go of the GIL, on every request. random is reseeded in each forked worker; its output can be
    # predicted from enough of it, which is fine for an id that is echoed to the caller and never a secret.
    return f"{random.getrandbits(128):032x}"


def cache_status(tier: str, config: Config) -> str:
    """The Cache-Status (RFC 9211) of a read answered by `tier`."""
    return CACHE_STATUS[tier] if config.cache_enabled else f"{CACHE_NAME}; fwd=bypass"


def _describe(response: Response) -> Response:
    config: Config = current_app.config["SERVICE_CONFIG"]
    response.headers["X-Request-ID"] = request_id()
    tier = response.headers.get("X-Cache")
    if tier in CACHE_STATUS:
        response.headers["Cache-Status"] = cache_status(tier, config)
    if "Cache-Control" not in response.headers:
        response.headers["Cache-Control"] = _cache_control(response, config)
    if config.cors_origins:
        _vary_on_origin(response)
    if config.access_log:
        _log_request(response)
    return response


def _log_request(response: Response) -> None:
    """This request's access line (log_request), from Flask's request and response."""
    tier = response.headers.get("X-Cache")
    started = g.get("started", time.perf_counter())
    status, size = response.status_code, response.content_length
    log_request(request.method, request.path, status, started, size, tier, request_id())


def log_request(
    method: str, path: str, status: int, started: float, size: int | None, tier: str | None, request_id: str
) -> None:
    """The request's line in the access log, in the format of every other line (logs.py); `started` is
    its time.perf_counter() when it arrived."""
    duration_ms = round((time.perf_counter() - started) * 1000, 2)
    fields = {
        "method": method,
        "path": path,
        "status": status,
        "duration_ms": duration_ms,
        "bytes": size,
        "tier": tier,
        "request_id": request_id,
    }
    logs.access(f"{method} {path} {status} {duration_ms:.1f}ms", fields)


def _cache_control(response: Response, config: Config) -> str:
    """Items read successfully may be cached (revalidated by ETag); nothing else is to be stored: errors,
    lists (no validator), writes, admin, health and metrics all change under the caller."""
    if request.endpoint == "items.get_item" and response.status_code in (200, 304):
        return item_cache_control(config)
    return "no-store"


SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",  # a JSON body is never to be sniffed into HTML
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
}


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)  # a view that sets its own policy (the dashboard's) keeps it
    return response


def require_token(*, admin: bool) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <API_TOKEN>` (compared in constant
    time). With no API_TOKEN configured, writes are open and admin endpoints answer 403."""
    token = current_app.config["SERVICE_CONFIG"].api_token
    if token is None:
        if admin:
            raise ApiError(403, "admin_disabled", "admin endpoints are disabled: start the service with API_TOKEN set")
        return
    if not _bearer_is(token):
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <API_TOKEN>'", CHALLENGE)


def require_metrics_token() -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <METRICS_TOKEN>`; open when it is unset."""
    token = current_app.config["SERVICE_CONFIG"].metrics_token
    if token is not None and not _bearer_is(token):
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <METRICS_TOKEN>'", CHALLENGE)


def _bearer_is(token: str) -> bool:
    return bearer_matches(request.headers.get("Authorization", ""), token)


def bearer_matches(authorization: str, token: str) -> bool:
    """An `Authorization` header value is `Bearer <token>` (compared in constant time)."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def endpoint(request: Request) -> str:
    """The `endpoint` label (the exporter names it after this function): a route's endpoint, never a path."""
    return request.endpoint or UNROUTED


class RequestMetricsRegistry(CollectorRegistry):
    """A registry that also keeps each collector registered in it, under the family names it describes:
    the exporter keeps its metric objects to itself, and the fast path records into the same ones."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.collectors: dict[str, Any] = {}

    def register(self, collector: Collector) -> None:
        super().register(collector)
        for family in getattr(collector, "describe", list)():  # a metric object describes itself
            self.collectors[family.name] = collector

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self.collectors = {name: kept for name, kept in self.collectors.items() if kept is not collector}


def init_request_metrics(app: Flask) -> None:
    """Request counts and latencies per endpoint (not raw path: ids would explode the label set). Every
    label has a bounded set of values: endpoint (above), status (the app's), method (routes/http.py)."""
    registry = RequestMetricsRegistry()  # per app, so tests can build many apps
    if app.config["SERVICE_CONFIG"].request_metrics:
        PrometheusMetrics(app, path=None, group_by=endpoint, registry=registry)
    app.extensions["request_metrics_registry"] = registry


class ServedMethodsOnly:
    """WSGI middleware: requests with a method some route serves go to `app`; others are answered 405 here."""

    def __init__(self, app: WSGIApp, url_map: Map, access_log: bool) -> None:
        self.app = app
        self.url_map = url_map
        self.methods = frozenset(method for rule in url_map.iter_rules() for method in rule.methods or ())
        self.access_log = access_log
        message = f"no route serves this method; the methods served are {', '.join(sorted(self.methods))}"
        self.body = json.dumps({"error": "method_not_allowed", "message": message}).encode()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in self.methods:
            return self.app(environ, start_response)
        started = time.perf_counter()
        request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        allowed = self.url_map.bind_to_environ(environ).allowed_methods()  # this path's, maybe none
        headers = [
            ("Allow", ", ".join(sorted(allowed))),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            ("X-Request-ID", request_id),
            *SECURITY_HEADERS.items(),
        ]
        start_response("405 METHOD NOT ALLOWED", headers)
        if self.access_log:
            method = str(environ.get("REQUEST_METHOD", ""))
            log_request(method, environ.get("PATH_INFO", ""), 405, started, len(self.body), None, request_id)
        return [self.body]


def install_served_methods(app: Flask, access_log: bool) -> None:
    """Answer in front of `app`'s routing the methods none of its routes serve (HEAD and OPTIONS included)."""
    app.wsgi_app = ServedMethodsOnly(app.wsgi_app, app.url_map, access_log)  # type: ignore[method-assign]
