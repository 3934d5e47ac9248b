"""Every error is JSON: {"error": "<name>", "message": "<what to fix>"}. A 5xx never carries a traceback."""

from __future__ import annotations

import logging

from flask import Flask, Response, current_app, json
from werkzeug.exceptions import ClientDisconnected, HTTPException

from cache.changelog.warm import CacheUnavailable, WarmInProgress
from db import CommitOutcomeUnknown, ConnectionsRefused, DatabaseUnavailable, DeadlineExceeded, MalformedItem

logger = logging.getLogger(__name__)


class ApiError(HTTPException):
    """An HTTP error with a machine-readable name and a message saying what to fix."""

    code: int  # always given (HTTPException's may be None)

    def __init__(self, code: int, error: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.error = error
        self.extra_headers = headers or {}


def error_response(code: int, error: str, message: str, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps({"error": error, "message": message})
    response = Response(body, status=code, mimetype="application/json")
    response.headers.update(headers or {})
    return response


def _http_error(exc: HTTPException) -> Response:
    if isinstance(exc, ApiError):
        return error_response(exc.code, exc.error, exc.description or "", exc.extra_headers)
    if isinstance(exc, ClientDisconnected) and isinstance(exc.__context__, TimeoutError):
        # werkzeug calls every failed body read a disconnect (400); this one is a body that stopped arriving
        # (a read that timed out), which HTTP calls 408. Nothing was stored. (buffering_worker's poller answers
        # such a body 408 itself; a thread there never reads past the request it was given.)
        timeout = current_app.config["SERVICE_CONFIG"].client_timeout
        message = f"the request body did not arrive within CLIENT_TIMEOUT ({timeout:g} s); send it again, faster"
        return error_response(408, "request_timeout", message)
    name = (exc.name or "error").lower().replace(" ", "_")
    headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
    message = exc.description or name
    if exc.code == 413:
        message = f"the body is larger than MAX_ITEM_BYTES ({current_app.config['MAX_CONTENT_LENGTH']} bytes)"
    return error_response(exc.code or 500, name, message, headers)


def _database_down(exc: DatabaseUnavailable) -> Response:
    if isinstance(exc, ConnectionsRefused):  # the pool logged the refusal once; the access line counts each 503
        message = (
            f"The database refused a new connection: it has too many ({exc}). This instance opens at most "
            "DATABASE_MAX_CONNECTIONS; nothing was written. Retry shortly."
        )
        return error_response(503, "database_connections_refused", message, {"Retry-After": "5"})
    logger.error("database unavailable: %s", exc)
    return error_response(
        503,
        "database_unavailable",
        "The database is unreachable; nothing was written. Retry shortly.",
        {"Retry-After": "5"},
    )


def _outcome_unknown(exc: CommitOutcomeUnknown) -> Response:
    logger.error("write outcome unknown: %s", exc)
    message = (
        "The connection to the database failed after the write was sent to commit: it may or may not have been "
        "committed. GET the item to see which (its version and ETag), or retry safely: with If-Match and the "
        "ETag you last saw, or with the same Idempotency-Key."
    )
    return error_response(503, "outcome_unknown", message, {"Retry-After": "1"})


def _deadline_exceeded(exc: DeadlineExceeded) -> Response:
    logger.warning("request deadline exceeded: %s", exc)
    message = (
        f"The request ran out of time (REQUEST_TIMEOUT) waiting for {exc.waiting_for}; nothing was written. "
        "Retry shortly."
    )
    return error_response(503, "deadline_exceeded", message, {"Retry-After": "1"})


def _malformed(exc: MalformedItem) -> Response:
    logger.error("item %s is stored in a form this service cannot read", exc.item_id)
    message = f"item {exc.item_id!r} is stored in a form this service cannot read (not a JSON object); fix its row"
    return error_response(500, "malformed_item", message)


def _cache_down(exc: CacheUnavailable) -> Response:
    message = f"{exc}. Items are still served from the database."
    return error_response(503, "cache_unavailable", message, {"Retry-After": "5"})


def _warm_running(exc: WarmInProgress) -> Response:
    return error_response(409, "warm_in_progress", "a warm is already running; try again when it has finished")


def _unexpected(exc: Exception) -> Response:
    logger.exception("unhandled error")
    return error_response(500, "internal_error", "The server failed to handle this request; it was logged.")


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(DatabaseUnavailable, _database_down)
    app.register_error_handler(DeadlineExceeded, _deadline_exceeded)
    app.register_error_handler(CommitOutcomeUnknown, _outcome_unknown)
    app.register_error_handler(CacheUnavailable, _cache_down)
    app.register_error_handler(MalformedItem, _malformed)
    app.register_error_handler(WarmInProgress, _warm_running)
    app.register_error_handler(Exception, _unexpected)
