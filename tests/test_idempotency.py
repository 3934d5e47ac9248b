"""Idempotency-Key on POST /items: the store's key records on both databases, and the HTTP API."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from config import ConfigError, load_config
from db import (
    UNCONDITIONAL,
    Claim,
    ClaimLost,
    Deadline,
    IfAbsent,
    KeyBusy,
    KeyedCreate,
    KeyReused,
    PreconditionFailed,
    Replay,
    StoredResponse,
    WriteResult,
)
from routes.idempotency import fingerprint

NEVER = Deadline.never()
LEASE = 60.0
JSON_HEADERS = {"Content-Type": "application/json"}


def test_a_key_is_claimed_once_then_replayed(store):
    create = KeyedCreate("k1", "print-a", "item-a")
    claim = store.claim_key(create, LEASE, NEVER)
    assert isinstance(claim, Claim) and claim.item_id == "item-a"
    assert store.claim_key(create, LEASE, NEVER) == KeyBusy("item-a")
    assert store.claim_key(KeyedCreate("k1", "print-b", "item-b"), LEASE, NEVER) == KeyReused()
    written = store.upsert_claimed(claim, {"n": 1}, UNCONDITIONAL, NEVER)
    assert isinstance(written, WriteResult) and written.created
    # A retry brings a made-up id of its own: the key's first id and response win.
    replay = store.claim_key(KeyedCreate("k1", "print-a", "another-id"), LEASE, NEVER)
    assert replay == Replay(StoredResponse("item-a", 1, 201, written.item))


def test_a_released_claim_can_be_claimed_again(store):
    create = KeyedCreate("k2", "print", "item")
    first = store.claim_key(create, LEASE, NEVER)
    store.release_key(first)
    second = store.claim_key(create, LEASE, NEVER)
    assert isinstance(second, Claim) and second.token != first.token


def test_a_failed_precondition_records_nothing(store):
    store.upsert("taken", {})
    claim = store.claim_key(KeyedCreate("k3", "print", "taken"), LEASE, NEVER)
    assert store.upsert_claimed(claim, {}, IfAbsent(), NEVER) == PreconditionFailed("taken", 1)
    assert store.claim_key(KeyedCreate("k3", "print", "taken"), LEASE, NEVER) == KeyBusy("taken")


def test_a_dead_claim_is_taken_over_and_its_late_write_rolled_back(store):
    create = KeyedCreate("k4", "print", "item-4")
    dead = store.claim_key(create, LEASE, NEVER)
    taken = store.claim_key(create, 0.0, NEVER)  # a lease of 0 s: the first claim counts as dead
    assert isinstance(taken, Claim) and taken.token != dead.token and taken.item_id == "item-4"
    with pytest.raises(ClaimLost):
        store.upsert_claimed(dead, {"late": True}, UNCONDITIONAL, NEVER)
    assert store.get("item-4") is None  # the late write was rolled back with its claim
    assert isinstance(store.upsert_claimed(taken, {"n": 1}, UNCONDITIONAL, NEVER), WriteResult)


def test_concurrent_claims_of_one_key_give_one_claim(store):
    threads = 12
    start = threading.Barrier(threads)

    def claim(n: int) -> object:
        start.wait(10)
        return store.claim_key(KeyedCreate("k5", "print", f"id-{n}"), LEASE, NEVER)

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(claim, range(threads)))
    claims = [o for o in outcomes if isinstance(o, Claim)]
    assert len(claims) == 1
    assert all(o == KeyBusy(claims[0].item_id) for o in outcomes if not isinstance(o, Claim))


def test_keys_are_purged_after_their_lifetime(store):
    store.claim_key(KeyedCreate("old", "print", "x"), LEASE, NEVER)
    assert store.purge_keys(3600) == 0
    assert store.purge_keys(0) == 1
    assert isinstance(store.claim_key(KeyedCreate("old", "other", "y"), LEASE, NEVER), Claim)


def test_a_keyed_create_claims_writes_and_completes_in_one_go(store):
    written = store.create_keyed(KeyedCreate("one", "print", "item-1"), {"n": 1}, UNCONDITIONAL, LEASE, NEVER)
    assert isinstance(written, WriteResult) and written.created and store.get("item-1") == written.item
    again = store.create_keyed(KeyedCreate("one", "print", "other-id"), {"n": 1}, UNCONDITIONAL, LEASE, NEVER)
    assert again == Replay(StoredResponse("item-1", 1, 201, written.item))
    assert store.create_keyed(KeyedCreate("one", "other", "x"), {}, UNCONDITIONAL, LEASE, NEVER) == KeyReused()
    update = store.create_keyed(KeyedCreate("two", "print", "item-1"), {"n": 2}, UNCONDITIONAL, LEASE, NEVER)
    assert isinstance(update, WriteResult) and not update.created
    assert store.claim_key(KeyedCreate("two", "print", "y"), LEASE, NEVER) == Replay(
        StoredResponse("item-1", 2, 200, update.item)
    )


def test_a_keyed_create_refused_by_its_precondition_leaves_no_claim(store):
    store.upsert("taken", {})
    refused = store.create_keyed(KeyedCreate("k6", "print", "taken"), {"n": 2}, IfAbsent(), LEASE, NEVER)
    assert refused == PreconditionFailed("taken", 1)
    assert isinstance(store.claim_key(KeyedCreate("k6", "print", "taken"), LEASE, NEVER), Claim)


def test_a_keyed_create_finding_a_claim_committed_on_its_own_is_busy(store):
    store.claim_key(KeyedCreate("k7", "print", "item-7"), LEASE, NEVER)
    assert store.create_keyed(KeyedCreate("k7", "print", "x"), {}, UNCONDITIONAL, LEASE, NEVER) == KeyBusy("item-7")
    assert store.get("x") is None and store.get("item-7") is None


def test_concurrent_keyed_creates_of_one_key_write_once_and_replay(store):
    threads = 8
    start = threading.Barrier(threads)

    def create(n: int) -> object:
        start.wait(10)
        return store.create_keyed(KeyedCreate("k8", "print", f"id-{n}"), {"n": 1}, UNCONDITIONAL, LEASE, NEVER)

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(create, range(threads)))
    written = [o for o in outcomes if isinstance(o, WriteResult)]
    assert len(written) == 1  # the others waited for its transaction and replay it
    assert all(
        o == Replay(StoredResponse(written[0].item.id, 1, 201, written[0].item)) for o in outcomes if o not in written
    )


# --- HTTP ------------------------------------------------------------------------------------------------


def post(client, body, key=None, **headers):
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/items", data=json.dumps(body), headers={**JSON_HEADERS, **headers})


def replays() -> float:
    return REGISTRY.get_sample_value("cache_write_outcomes_total", {"outcome": "replayed"}) or 0.0


def test_a_retried_create_answers_the_first_response(client):
    before = replays()
    first = post(client, {"name": "x"}, key="order-1")
    assert first.status_code == 201 and "Idempotent-Replayed" not in first.headers
    item_id = first.json["id"]
    retry = post(client, {"name": "x"}, key='"order-1"')  # the draft's sf-string form is the same key
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.data == first.data and retry.headers["ETag"] == first.headers["ETag"] == f'"{item_id}.1"'
    assert retry.headers["Location"] == first.headers["Location"] == f"/items/{item_id}"
    assert replays() == before + 1
    assert len(client.get("/items").json["items"]) == 1  # one item, not two


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)  # SQLite, PostgreSQL
def test_a_replay_after_the_item_changed_has_the_first_status_and_location_and_the_item_now(client):
    first = post(client, {"name": "x"}, key="order-3")
    item_id = first.json["id"]
    changed = client.put(f"/items/{item_id}", data=json.dumps({"name": "changed"}), headers=JSON_HEADERS)
    retry = post(client, {"name": "x"}, key="order-3")
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.headers["Location"] == first.headers["Location"]
    assert retry.data == changed.data and retry.headers["ETag"] == changed.headers["ETag"] == f'"{item_id}.2"'
    client.delete(f"/items/{item_id}")
    gone = post(client, {"name": "x"}, key="order-3")
    assert gone.status_code == 404 and gone.headers["Idempotent-Replayed"] == "true"
    assert item_id in gone.json["message"] and "deleted" in gone.json["message"]
    assert client.get("/items").json["items"] == []  # the replay wrote nothing


def stored_bytes(store) -> int:
    """Every value of every idempotency_keys row, as text: what the keys hold, whatever their columns."""
    with store._within(NEVER) as fetch:
        return sum(len(str(value)) for row in fetch("SELECT * FROM idempotency_keys", {}) for value in row)


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)
def test_a_key_keeps_a_few_hundred_bytes_not_its_answers_body(app, client):
    body = {"id": "big", "blob": "x" * 60_000}
    for n in range(20):  # a retrying client that makes up a new key every time: one item, 20 keys
        assert post(client, body, key=f"new-key-{n}").status_code in (200, 201)
    assert len(client.get("/items").json["items"]) == 1
    assert stored_bytes(app.extensions["item_store"]) < 20 * 400


def test_at_most_max_keys_are_kept_the_oldest_claimed_go_first(store):
    for n in range(5):
        claim = store.claim_key(KeyedCreate(f"key-{n}", "print", f"item-{n}"), LEASE, NEVER, max_keys=3)
        store.upsert_claimed(claim, {}, UNCONDITIONAL, NEVER)
    with store._within(NEVER) as fetch:
        assert sorted(row[0] for row in fetch("SELECT key FROM idempotency_keys", {})) == ["key-2", "key-3", "key-4"]
    assert isinstance(store.claim_key(KeyedCreate("key-4", "print", "x"), LEASE, NEVER, max_keys=3), Replay)
    # key-0 is forgotten: its retry is a new request (the cap is the price of a bounded table)
    assert isinstance(store.claim_key(KeyedCreate("key-0", "print", "x"), LEASE, NEVER, max_keys=3), Claim)


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)
def test_idempotency_keys_max_caps_the_keys_over_http(make_app):
    app = make_app(IDEMPOTENCY_KEYS_MAX="2")
    client = app.test_client()
    ids = [post(client, {"n": n}, key=f"k{n}").json["id"] for n in range(3)]
    assert post(client, {"n": 2}, key="k2").headers["Idempotent-Replayed"] == "true"
    with app.extensions["item_store"]._within(NEVER) as fetch:
        assert sorted(row[0] for row in fetch("SELECT item_id FROM idempotency_keys", {})) == sorted(ids[1:])


def test_idempotency_keys_max_is_checked():
    assert load_config({"IDEMPOTENCY_KEYS_MAX": "500"}).idempotency_keys_max == 500
    for bad in ("0", "-1", "many"):
        with pytest.raises(ConfigError, match="IDEMPOTENCY_KEYS_MAX"):
            load_config({"IDEMPOTENCY_KEYS_MAX": bad})


def test_the_same_key_with_another_body_is_422(client):
    post(client, {"name": "x"}, key="order-2")
    other = post(client, {"name": "y"}, key="order-2")
    assert other.status_code == 422 and other.json["error"] == "idempotency_key_reused"
    assert len(client.get("/items").json["items"]) == 1


def test_spacing_and_key_order_do_not_make_another_request(client):
    first = client.post("/items", data='{"a": 1, "b": 2}', headers={**JSON_HEADERS, "Idempotency-Key": "k"})
    again = client.post("/items", data='{"b":2,"a":1}', headers={**JSON_HEADERS, "Idempotency-Key": "k"})
    assert again.headers["Idempotent-Replayed"] == "true" and again.json["id"] == first.json["id"]


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)
def test_a_key_still_running_answers_409(make_app):
    app = make_app(REQUEST_TIMEOUT="0.3")
    client = app.test_client()
    body = {"id": "busy", "n": 1}
    # The first request with this key is mid-write in another process: its claim is there, not completed.
    with app.test_request_context("/items", method="POST"):
        request_print = fingerprint(body)
    app.extensions["item_store"].claim_key(KeyedCreate("running", request_print, "busy"), LEASE, NEVER)
    response = post(client, body, key="running")
    assert response.status_code == 409 and response.json["error"] == "idempotency_key_in_use"
    assert response.headers["Retry-After"] == "1"
    assert client.get("/items/busy").status_code == 404


@pytest.mark.parametrize("key", ["", " ", "x" * 256, "tab\there", "caf\u00e9"])
def test_a_bad_key_is_400_and_writes_nothing(client, key):
    response = client.post("/items", data=json.dumps({"id": "nokey"}), headers={**JSON_HEADERS, "Idempotency-Key": key})
    assert response.status_code == 400 and response.json["error"] == "invalid_idempotency_key"
    assert client.get("/items/nokey").status_code == 404


def test_the_longest_key_is_accepted(client):
    assert post(client, {"n": 1}, key="k" * 255).status_code == 201


def test_a_create_refused_by_its_precondition_can_be_retried_with_the_same_key(client):
    post(client, {"id": "exists"})
    refused = post(client, {"id": "exists", "n": 2}, key="once", **{"If-None-Match": "*"})
    assert refused.status_code == 412 and refused.headers["ETag"] == '"exists.1"'
    client.delete("/items/exists")
    retried = post(client, {"id": "exists", "n": 2}, key="once", **{"If-None-Match": "*"})
    assert retried.status_code == 201 and "Idempotent-Replayed" not in retried.headers
