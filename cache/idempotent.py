"""Idempotent creates (POST /items with an Idempotency-Key, IETF httpapi draft): claim the key, write the
item and record the response in one database transaction, answer a retry with that response.

A duplicate arriving meanwhile waits in the database for that transaction and replays it. A key held by a
claim of its own (committed by `claim_key`: an older release, or a tool) answers KeyBusy: the request then
waits a little (KEY_BUSY_WAIT, never past its deadline) for it to finish, taking it over once it is older
than its lease, and then answers 409."""

from __future__ import annotations

import logging
import time
from typing import Any

from cache import state
from cache.aside import Written, write_through
from cache.metrics import WRITES_BY_OUTCOME
from cache.stampede import backoff_delays
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
    WriteResult,
)

logger = logging.getLogger(__name__)

KEY_BUSY_WAIT = 2.0  # seconds a duplicate waits for the first request with its key
LEASE_MARGIN = 1.0  # a claim's request has ended REQUEST_TIMEOUT after it claimed; this covers the commit


def create_once(
    store: ItemStore, create: KeyedCreate, fields: dict[str, Any], expect: Precondition, deadline: Deadline
) -> Written | PreconditionFailed | Replay | KeyReused | KeyBusy:
    """Write `create.item_id` once per key: the first request writes, its retries get Replay."""
    config = state().config
    lease, max_keys = config.request_timeout + LEASE_MARGIN, config.idempotency_keys_max

    def create_keyed() -> WriteResult | PreconditionFailed:
        result = store.create_keyed(create, fields, expect, lease, deadline, max_keys)
        if isinstance(result, Replay | KeyReused | KeyBusy):
            raise _Answered(result)  # nothing written: write_through caches nothing
        return result

    try:
        return write_through(create.item_id, create_keyed)
    except _Answered as answered:
        if not isinstance(answered.outcome, KeyBusy):
            if isinstance(answered.outcome, Replay):
                WRITES_BY_OUTCOME["replayed"].inc()
            return answered.outcome
    return _create_claimed(store, create, fields, expect, deadline)


class _Answered(Exception):
    def __init__(self, outcome: Replay | KeyReused | KeyBusy) -> None:
        super().__init__(outcome)
        self.outcome = outcome


def _create_claimed(
    store: ItemStore, create: KeyedCreate, fields: dict[str, Any], expect: Precondition, deadline: Deadline
) -> Written | PreconditionFailed | Replay | KeyReused | KeyBusy:
    """The key is held by a claim committed on its own: wait for it, or take it over when it is stale."""
    outcome = _claim(store, create, deadline)
    if isinstance(outcome, Replay):
        WRITES_BY_OUTCOME["replayed"].inc()
    if not isinstance(outcome, Claim):
        return outcome
    claim = outcome
    try:
        result = write_through(claim.item_id, lambda: store.upsert_claimed(claim, fields, expect, deadline))
    except ClaimLost:
        return KeyBusy(claim.item_id)  # our request outlived its lease and another took the key over
    except BaseException:
        _release(store, claim)
        raise
    if isinstance(result, PreconditionFailed):
        _release(store, claim)  # nothing was written: a retry (say, with a fresh ETag) runs again
    return result


def _claim(store: ItemStore, create: KeyedCreate, deadline: Deadline) -> Claim | Replay | KeyReused | KeyBusy:
    config = state().config
    lease, max_keys = config.request_timeout + LEASE_MARGIN, config.idempotency_keys_max
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
