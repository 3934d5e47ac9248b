"""Idempotent creates: the Idempotency-Key header on POST /items (IETF httpapi draft), parsed and
fingerprinted; the key claimed in the database, the item written and the key's outcome recorded in one
transaction; the HTTP answers for a key that is replayed, reused for another request, or still running."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from typing import Any, cast

from flask import Response, current_app, request, url_for

from cache.core.entry import make_etag
from cache.core.item_cache import ItemCache, Written
from cache.core.metrics import WRITES_BY_OUTCOME
from cache.core.stampede import backoff_delays
from db import (
    Claim,
    ClaimLost,
    DatabaseUnavailable,
    Deadline,
    DeadlineExceeded,
    ItemStore,
    KeyBusy,
    KeyedCreate,
    KeyReused,
    Precondition,
    PreconditionFailed,
    Replay,
    StoredResponse,
    WriteResult,
)
from routes.errors import ApiError, error_response

logger = logging.getLogger(__name__)
Answered = PreconditionFailed | Replay | KeyReused | KeyBusy  # a keyed create's outcomes that write nothing
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


KEY_BUSY_WAIT = 2.0  # seconds a duplicate waits for the first request with its key
LEASE_MARGIN = 1.0  # a claim's request has ended REQUEST_TIMEOUT after it claimed; this covers the commit


def create_once(
    item_cache: ItemCache,
    store: ItemStore,
    create: KeyedCreate,
    fields: dict[str, Any],
    expect: Precondition,
    deadline: Deadline,
) -> Written | Answered:
    """Write `create.item_id` once per key: the key is claimed, the item written and the answer recorded in
    one transaction; a duplicate arriving meanwhile waits for it in the database and replays it. A key held
    by a claim committed on its own (`claim_key`: an older release, or a tool) is KeyBusy there: then wait a
    little (KEY_BUSY_WAIT, never past the deadline) for it, taking it over once older than its lease."""
    lease, max_keys = _key_limits()

    def create_keyed() -> WriteResult | Answered:
        return store.create_keyed(create, fields, expect, lease, deadline, max_keys)

    # cast: mypy cannot solve write_through's `WriteResult | R` against this union (R is the rest of it).
    outcome = cast("Written | Answered", item_cache.write_through(create.item_id, create_keyed))
    if isinstance(outcome, Replay):
        WRITES_BY_OUTCOME["replayed"].inc()
    if not isinstance(outcome, KeyBusy):
        return outcome
    return _create_claimed(item_cache, store, create, fields, expect, deadline)


def _create_claimed(
    item_cache: ItemCache,
    store: ItemStore,
    create: KeyedCreate,
    fields: dict[str, Any],
    expect: Precondition,
    deadline: Deadline,
) -> Written | Answered:
    """The key is held by a claim committed on its own: wait for it, or take it over when it is stale."""
    outcome = _claim(store, create, deadline)
    if isinstance(outcome, Replay):
        WRITES_BY_OUTCOME["replayed"].inc()
    if not isinstance(outcome, Claim):
        return outcome
    claim = outcome
    try:
        result = item_cache.write_through(claim.item_id, lambda: store.upsert_claimed(claim, fields, expect, deadline))
    except ClaimLost:
        return KeyBusy(claim.item_id)  # our request outlived its lease and another took the key over
    except BaseException:
        _release(store, claim)
        raise
    if isinstance(result, PreconditionFailed):
        _release(store, claim)  # nothing was written: a retry (say, with a fresh ETag) runs again
    return result


def _key_limits() -> tuple[float, int]:
    """A claim's lease (REQUEST_TIMEOUT + LEASE_MARGIN) and how many keys are kept (IDEMPOTENCY_KEYS_MAX)."""
    config = current_app.config["SERVICE_CONFIG"]
    return config.request_timeout + LEASE_MARGIN, config.idempotency_keys_max


def _claim(store: ItemStore, create: KeyedCreate, deadline: Deadline) -> Claim | Replay | KeyReused | KeyBusy:
    lease, max_keys = _key_limits()
    outcome = store.claim_key(create, lease, deadline, max_keys)
    for delay in backoff_delays(deadline.cap(KEY_BUSY_WAIT)):
        if not isinstance(outcome, KeyBusy) or deadline.remaining() <= delay:
            break
        time.sleep(delay)
        outcome = store.claim_key(create, lease, deadline, max_keys)
    return outcome


def _release(store: ItemStore, claim: Claim) -> None:
    try:
        store.release_key(claim)
    except (DatabaseUnavailable, DeadlineExceeded) as exc:  # the lease frees it instead
        logger.warning("could not release idempotency key claim for %s: %s", claim.item_id, exc)
