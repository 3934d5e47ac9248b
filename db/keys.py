"""Idempotency keys in the database: claim a key, write and complete it in one transaction
(`create_keyed`), replay its first response. What both SQL backends share; their SQL is in KeyStatements.

A key keeps its first answer's status, item id and version, not its body (a replay is rebuilt from the
item as it is now), and at most `max_keys` keys are kept: a claim deletes the keys claimed `max_keys` or
more claims before it. So the table is bounded whatever the rate of new keys."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from db.base import (
    Claim,
    ClaimLost,
    ClaimOutcome,
    Deadline,
    KeyBusy,
    KeyedCreate,
    KeyReused,
    Replay,
    StoredResponse,
    WriteResult,
    decode_item,
)
from db.preconditions import Precondition, PreconditionFailed, Unconditional

KEY_LIFETIME = 24 * 3600.0  # seconds a key is honoured (the draft's suggestion: at least 24 h)
MAX_KEYS = 100_000  # keys kept, at most: IDEMPOTENCY_KEYS_MAX's default (24 h of 1.2 keyed creates a second)
Rows = list[Sequence[Any]]
Pending = Callable[[], Rows]  # a sent statement's rows: readable once its transaction has committed


class Fetch(Protocol):
    """The open transaction. Calling it runs a statement now and returns its rows (a round trip); `send`
    queues one whose rows are read after the commit, so a backend may send it together with the COMMIT."""

    def __call__(self, sql: str, params: Mapping[str, Any], /) -> Rows: ...

    def send(self, sql: str, params: Mapping[str, Any], /) -> Pending: ...


@dataclass(frozen=True, slots=True)
class KeyStatements:
    claim: str  # key, fingerprint, token, item_id -> item_id, seq (no row: the key exists)
    evict: str  # seq, keep -> deletes the keys claimed `keep` or more claims before `seq`
    # key, age -> fingerprint, item_id, status_code, version, stale (claimed over age s ago), and the live
    # item's id, fields, version, updated_at as the store's item reads select them (NULLs: none)
    find: str
    take_over: str  # key, token, age -> item_id (a running claim older than age s)
    complete: str  # key, token, status_code, version -> key (no row: the claim was taken over)
    # key, token -> key: complete from the key's item as this transaction wrote it (201 when it was created)
    complete_written: str
    release: str  # key, token
    purge: str  # age


class _RolledBack(Exception):
    """Ends a keyed create's transaction without committing, answering `result`."""

    def __init__(self, result: PreconditionFailed) -> None:
        super().__init__(result)
        self.result = result


class KeyStore:
    """The idempotency half of SQLStore: it provides `keys`, `_within`, `_upsert_in` and `_send_upsert`."""

    keys: KeyStatements

    def _within(self, deadline: Deadline) -> contextlib.AbstractContextManager[Fetch]:
        raise NotImplementedError

    def _upsert_in(
        self, fetch: Fetch, item_id: str, fields: dict[str, Any], expect: Precondition
    ) -> WriteResult | PreconditionFailed:
        raise NotImplementedError

    def _send_upsert(
        self, fetch: Fetch, item_id: str, fields: dict[str, Any], expect: Precondition
    ) -> Callable[[], WriteResult | PreconditionFailed]:
        raise NotImplementedError

    def _execute(self, sql: str, params: Mapping[str, Any] | None = None) -> int:
        raise NotImplementedError

    def claim_key(
        self, create: KeyedCreate, lease: float, deadline: Deadline, max_keys: int = MAX_KEYS
    ) -> ClaimOutcome:
        """Claim `create.key`, or say what holds it. A running claim older than `lease` seconds (its request
        must have ended by then) is taken over. A claim deletes the keys `max_keys` or more claims older."""
        token = secrets.token_hex(8)
        with self._within(deadline) as fetch:
            held = self._claim_in(fetch, create, token, lease, max_keys)
            if held is None:
                return Claim(create.key, token, create.item_id)
            return self._held(fetch, create, held, token, lease)

    def _held(self, fetch: Fetch, create: KeyedCreate, row: Sequence[Any], token: str, lease: float) -> ClaimOutcome:
        answer = _answer(create, row)
        stale = row[4]
        if isinstance(answer, KeyBusy) and stale:
            if rows := fetch(self.keys.take_over, {"key": create.key, "token": token, "age": lease}):
                return Claim(create.key, token, str(rows[0][0]))
        return answer

    def create_keyed(
        self,
        create: KeyedCreate,
        fields: dict[str, Any],
        expect: Precondition,
        lease: float,
        deadline: Deadline,
        max_keys: int = MAX_KEYS,
    ) -> WriteResult | PreconditionFailed | Replay | KeyReused | KeyBusy:
        """Claim `create.key`, write `create.item_id` and complete the key, in one transaction: a failure
        (or a failed precondition) leaves no claim behind, and a duplicate running meanwhile waits for the
        commit (its claim blocks on the key) and gets Replay. A key held by a claim committed on its own
        (`claim_key`'s) answers KeyBusy, stale or not: `claim_key` takes such a claim over."""
        token = secrets.token_hex(8)
        try:
            with self._within(deadline) as fetch:
                held = self._claim_in(fetch, create, token, lease, max_keys)
                if held is not None:
                    return _answer(create, held)
                written = self._send_upsert(fetch, create.item_id, fields, expect)
                # A condition is read before the commit (a round trip): refused, the claim goes with the
                # rollback and a retry runs the request again. An unconditional write goes with the COMMIT.
                if not isinstance(expect, Unconditional) and isinstance(failed := written(), PreconditionFailed):
                    raise _RolledBack(failed)
                fetch.send(self.keys.complete_written, {"key": create.key, "token": token})
        except _RolledBack as refused:
            return refused.result
        return written()

    def _claim_in(
        self, fetch: Fetch, create: KeyedCreate, token: str, lease: float, max_keys: int
    ) -> Sequence[Any] | None:
        """Claim the key in the open transaction (None), or the key's `find` row when another holds it."""
        params = {"key": create.key, "fingerprint": create.fingerprint, "token": token, "item_id": create.item_id}
        for _ in range(3):  # a key released between the two statements: claim it again
            if rows := fetch(self.keys.claim, params):
                fetch.send(self.keys.evict, {"seq": int(rows[0][1]), "keep": max_keys})  # goes with the write
                return None
            if rows := fetch(self.keys.find, {"key": create.key, "age": lease}):
                return rows[0]
        raise RuntimeError(f"idempotency key {create.key!r} kept vanishing while being claimed")

    def upsert_claimed(
        self, claim: Claim, fields: dict[str, Any], expect: Precondition, deadline: Deadline
    ) -> WriteResult | PreconditionFailed:
        """Upsert `claim.item_id` and record the response under the key, in one transaction: ClaimLost (and
        nothing written) if the claim was taken over. A failed precondition leaves the claim running."""
        with self._within(deadline) as fetch:
            result = self._upsert_in(fetch, claim.item_id, fields, expect)
            if isinstance(result, PreconditionFailed):
                return result
            response = {
                "key": claim.key,
                "token": claim.token,
                "status_code": 201 if result.created else 200,
                "version": result.item.version,
            }
            if not fetch(self.keys.complete, response):
                raise ClaimLost(claim.key)
            return result

    def release_key(self, claim: Claim) -> None:
        """Give a claim up (its write failed), so a retry runs the request again."""
        self._execute(self.keys.release, {"key": claim.key, "token": claim.token})

    def purge_keys(self, older_than_s: float) -> int:
        """Delete keys created over `older_than_s` ago; returns how many."""
        return self._execute(self.keys.purge, {"age": float(older_than_s)})


def _answer(create: KeyedCreate, row: Sequence[Any]) -> Replay | KeyReused | KeyBusy:
    """What a key held by another request (its `find` row) answers `create`."""
    fingerprint, item_id, status_code, version, _stale, *item = row
    if fingerprint != create.fingerprint:
        return KeyReused()
    if status_code is not None:
        current = decode_item(item) if item[0] is not None else None
        return Replay(StoredResponse(item_id, int(version), int(status_code), current))
    return KeyBusy(item_id)
