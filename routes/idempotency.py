"""The Idempotency-Key header on POST /items (IETF httpapi draft): parsed, fingerprinted, and the HTTP
answers for a key that is replayed, reused for another request, or still running."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from flask import Response, request, url_for

from cache.core.entry import make_etag
from db import KeyBusy, KeyReused, StoredResponse
from routes.errors import ApiError, error_response

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# Printable ASCII, capped: keys are stored and indexed, and a UUID (the draft's example) is 36.
KEY_PATTERN = re.compile(r"[\x20-\x7e]{1,255}")


def idempotency_key() -> str | None:
    """The request's Idempotency-Key (a bare token or the draft's quoted sf-string), None when absent;
    400 when it is empty, too long or not printable ASCII."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not KEY_PATTERN.fullmatch(key):
        raise ApiError(
            400, "invalid_idempotency_key", f"{HEADER} must be 1-255 printable ASCII characters, such as a UUID"
        )
    return key


def fingerprint(body: dict[str, Any]) -> str:
    """The request as the key's owner sent it: method, path and body (as parsed: spacing and key order
    do not make a retry a different request)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{request.method} {request.path}\n{canonical}".encode()).hexdigest()


def replayed(stored: StoredResponse) -> Response:
    """The key's first answer again, marked as a replay: its status and Location, with the item as it is
    now, so its body and ETag are the first answer's while the item is still at that version (the key does
    not keep the body: it would cost up to an item per key). 404 once the item has been deleted."""
    item = stored.current
    if item is None:
        message = (
            f"the first request with this {HEADER} wrote item {stored.item_id!r} (version {stored.version}), "
            "which has since been deleted; nothing was written now"
        )
        return error_response(404, "not_found", message, {REPLAYED: "true"})
    headers = {"ETag": make_etag(item.id, item.version), REPLAYED: "true"}
    if stored.status_code == 201:
        headers["Location"] = url_for("items.get_item", item_id=item.id)
    return Response(item.to_json(), status=stored.status_code, headers=headers, content_type="application/json")


def key_reused(_: KeyReused) -> Response:
    message = f"this {HEADER} was used for a different request (another body); use a new key for a new request"
    return error_response(422, "idempotency_key_reused", message)


def key_busy(_: KeyBusy) -> Response:
    message = f"a request with this {HEADER} is still running; retry shortly to get its answer"
    return error_response(409, "idempotency_key_in_use", message, {"Retry-After": "1"})
