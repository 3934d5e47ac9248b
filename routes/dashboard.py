"""/dashboard: one page that shows the cache working, refreshed every second from /metrics (parsed in the
browser) and /dashboard/status.json (what /metrics does not hold: Redis memory, L1 capacity, workers).

Its script and stylesheet are served here too, and its Content-Security-Policy allows nothing else: no
inline script or style, no other origin."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

from flask import Blueprint, Response, current_app
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue

from cache.core.redis_tier import info_summary
from config import Config
from routes.http import require_metrics_token

bp = Blueprint("dashboard", __name__, url_prefix="/dashboard")
POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
ASSETS = resources.files("routes").joinpath("static")
PAGES = {  # name -> (body, content type), read once
    name: (ASSETS.joinpath(name).read_bytes(), content_type)
    for name, content_type in (
        ("dashboard.html", "text/html; charset=utf-8"),
        ("dashboard.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("dashboard.svg", "image/svg+xml"),
    )
}


class RecentRedisInfo:
    """Redis INFO, read at most once per `max_age` seconds in this process: every open dashboard polls it,
    and INFO is not free on a busy Redis. Callers that arrive during a read wait for it (one read at a time)."""

    def __init__(self, max_age: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        self._value: dict[str, Any] | None = None
        self._read_at = 0.0

    def get(self, read: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._read_at >= self.max_age:
                self._value, self._read_at = read(), now
            return self._value


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    state.app.extensions["dashboard_redis_info"] = RecentRedisInfo()


def _asset(name: str) -> Response:
    body, content_type = PAGES[name]
    response = Response(body, content_type=content_type)
    response.headers["Content-Security-Policy"] = POLICY  # errors.py keeps a policy a view has set
    return response


@bp.get("")
def page() -> Response:
    return _asset("dashboard.html")


@bp.get("/app.js")
def script() -> Response:
    return _asset("dashboard.js")


@bp.get("/app.css")
def stylesheet() -> Response:
    return _asset("dashboard.css")


@bp.get("/icon.svg")
def icon() -> Response:
    return _asset("dashboard.svg")  # else the browser asks for /favicon.ico, a 404 in its console


@bp.get("/status.json")
def status() -> ResponseReturnValue:
    """What the page needs beside /metrics (METRICS_TOKEN guards both). Redis down or embedded: said in
    "redis", still a 200."""
    require_metrics_token()
    config: Config = current_app.config["SERVICE_CONFIG"]
    item_cache = current_app.extensions["item_cache"]
    redis = current_app.extensions["dashboard_redis_info"].get(
        lambda: info_summary(item_cache.redis, embedded=config.fakeredis)
    )
    return {
        "redis": redis,
        "l1": {"capacity_per_worker": config.l1_max_items, "ttl_seconds": config.l1_ttl},
        # gunicorn's workers; `python app.py` is one process (and has no multiprocess metrics directory)
        "workers": config.web_concurrency if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else 1,
        "cache_enabled": config.cache_enabled,
        "worker_pid": os.getpid(),
    }
