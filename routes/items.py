"""The items API. Views translate HTTP to the cache-aside flow (cache/core/item_cache.py) and back."""

from __future__ import annotations

import json
import secrets

from flask import Blueprint, Response, current_app, g, request, url_for

from cache.core.entry import CacheEntry, make_etag
from cache.core.item_cache import ItemCache, Written
from db import Deadline, ItemStore, KeyBusy, KeyedCreate, KeyReused, NotFound, PreconditionFailed, Replay
from routes import idempotency
from routes.auth import require_token
from routes.errors import error_response
from routes.http_headers import cors_headers, request_id
from routes.item_read import found_response
from routes.preconditions import write_precondition
from routes.validation import check_id, list_params, parse_item_body

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
    key = idempotency.idempotency_key()
    body = parse_item_body()
    # Of the body as sent, before its id (if any) is taken out of it.
    fingerprint = idempotency.fingerprint(body) if key is not None else ""
    if "id" not in body:
        item_id = secrets.token_urlsafe(12)  # 16 characters of the id alphabet
    elif not isinstance(item_id := body.pop("id"), str):
        return error_response(400, "invalid_id", "id must be a string (or left out, to have one made up)")
    expect = write_precondition(check_id(item_id))
    if key is None:
        return _written(_cache().write_item(item_id, body, expect, _deadline()))
    create = KeyedCreate(key, fingerprint, item_id)
    match idempotency.create_once(_cache(), _store(), create, body, expect, _deadline()):
        case Replay(stored):
            return idempotency.replayed(stored)
        case KeyReused() as reused:
            return idempotency.key_reused(reused)
        case KeyBusy() as busy:
            return idempotency.key_busy(busy)
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
