"""The items resource: its views, which translate HTTP to the cache-aside flow (cache/core/item_cache.py)
and back, and the one definition of a found item's and a written item's answer, which the fast path
(routes/fast_path.py) gives too. Flask's after_request hooks set some of these headers again on the routed
answer, to the same values: a header a later change adds in a hook for every response must be added to
found_headers and written_headers too; tests/test_fast_path.py fails until it is.
"""

from __future__ import annotations

import json
import re
import secrets

from flask import Blueprint, Response, current_app, g, request, url_for

from cache.core.entry import CacheEntry, make_etag
from cache.core.item_cache import ItemCache, Written
from config import Config
from db import Deadline, ItemStore, KeyBusy, KeyedCreate, KeyReused, NotFound, PreconditionFailed, Replay
from routes.errors import ApiError, error_response
from routes.http import (
    SECURITY_HEADERS,
    cache_status,
    cors_headers,
    item_cache_control,
    request_id,
    require_token,
)
from routes.idempotency import create_once, fingerprint, idempotency_key, key_busy, key_reused, replayed
from routes.writes import parse_item_body, write_precondition

ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
LIMIT_PATTERN = re.compile(r"[0-9]{1,4}")
bp = Blueprint("items", __name__, url_prefix="/items")
JSON = "application/json"
FAILED_WRITE = "items.failed_write"  # environ: what the fast path's write of this request raised


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
    # The same answer the fast path gives an L1 hit before routing (routes/fast_path.py).
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
    if (failed := request.environ.pop(FAILED_WRITE, None)) is not None:
        raise failed  # the fast path's write of this request failed: answered as every failed write is
    expect = write_precondition(check_id(item_id))
    body = parse_item_body()
    if body.pop("id", item_id) != item_id:
        return error_response(400, "id_mismatch", "the body's id differs from the URL's; drop it or make them equal")
    return _written(_cache().write_item(item_id, body, expect, _deadline()))


def _written(result: Written | PreconditionFailed) -> Response:
    if isinstance(result, PreconditionFailed):
        return _precondition_failed(result)
    location = url_for("items.get_item", item_id=result.item_id) if result.created else None
    # The same answer the fast path gives a plain PUT before routing (routes/fast_path.py).
    cors = cors_headers(current_app.extensions.get("cors_options"), request.headers, request.method)
    headers = written_headers(result, location, request_id(), cors)
    return Response(result.entry.body, status=201 if result.created else 200, headers=headers)


def written_headers(
    written: Written, location: str | None, request_id: str, cors: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Every header of a 200 or 201 answer to a write that committed `written` (`location`: a created
    item's); `cors`: routes.http.cors_headers for the request."""
    return [
        ("Content-Type", JSON),
        ("Content-Length", str(len(written.entry.body or b""))),
        ("ETag", written.entry.etag),
        *([("Location", location)] if location is not None else []),
        ("X-Request-ID", request_id),
        ("Cache-Control", "no-store"),  # a write's answer changes under the caller (routes/http.py)
        *SECURITY_HEADERS.items(),
        *cors,
    ]


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
    return Response(entry.body, status=200, headers=found_headers(entry, tier, config, request_id, cors))
