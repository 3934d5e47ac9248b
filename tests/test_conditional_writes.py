"""Conditional writes (RFC 9110 If-Match / If-None-Match): the store's contract on both databases, and the
HTTP API on every stack."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import REGISTRY

from db import (
    UNCONDITIONAL,
    Deadline,
    Deleted,
    IfAbsent,
    IfExists,
    IfVersionIn,
    NotFound,
    PreconditionFailed,
    WriteResult,
)

NEVER = Deadline.never()
JSON_HEADERS = {"Content-Type": "application/json"}


def at(*versions: int) -> IfVersionIn:
    return IfVersionIn(frozenset(versions))


def test_if_version_writes_only_at_that_version(store):
    store.upsert("a", {"n": 1})
    written = store.upsert_if("a", {"n": 2}, at(1), NEVER)
    assert isinstance(written, WriteResult) and written.item.version == 2 and not written.created
    assert store.upsert_if("a", {"n": 3}, at(1), NEVER) == PreconditionFailed("a", current_version=2)
    assert store.get("a").fields == {"n": 2} and store.get("a").version == 2


def test_if_version_never_creates(store):
    assert store.upsert_if("ghost", {}, at(1), NEVER) == PreconditionFailed("ghost", current_version=None)
    assert store.upsert_if("ghost", {}, IfExists(), NEVER) == PreconditionFailed("ghost", current_version=None)
    assert store.get("ghost") is None


def test_if_absent_creates_only(store):
    created = store.upsert_if("new", {"n": 1}, IfAbsent(), NEVER)
    assert isinstance(created, WriteResult) and created.created and created.item.version == 1
    assert store.upsert_if("new", {"n": 2}, IfAbsent(), NEVER) == PreconditionFailed("new", current_version=1)
    store.delete("new")  # a tombstone at version 2 is absent: the id can be created again, above it
    again = store.upsert_if("new", {"n": 3}, IfAbsent(), NEVER)
    assert isinstance(again, WriteResult) and again.created and again.item.version == 3


def test_if_exists_updates_any_live_version(store):
    store.upsert("e", {})
    written = store.upsert_if("e", {"x": 1}, IfExists(), NEVER)
    assert isinstance(written, WriteResult) and written.item.version == 2


def test_unconditional_upsert_if_is_the_plain_upsert(store):
    assert store.upsert_if("u", {"n": 1}, UNCONDITIONAL, NEVER).created
    assert store.upsert_if("u", {"n": 2}, UNCONDITIONAL, NEVER).item.version == 2


def test_conditional_delete(store):
    store.upsert("d", {"keep": True})
    assert store.delete_if("d", at(7), NEVER) == PreconditionFailed("d", current_version=1)
    assert store.get("d").fields == {"keep": True}
    assert store.delete_if("d", IfAbsent(), NEVER) == PreconditionFailed("d", current_version=1)
    assert store.delete_if("d", at(1), NEVER) == Deleted(version=2)
    assert store.delete_if("d", IfExists(), NEVER) == PreconditionFailed("d", current_version=None)
    assert store.delete_if("d", UNCONDITIONAL, NEVER) == NotFound()
    assert store.delete_if("d", IfAbsent(), NEVER) == NotFound()


def test_one_of_many_concurrent_writers_with_one_etag_wins(store):
    store.upsert("hot", {"n": 0})
    writers = 16
    start = threading.Barrier(writers)

    def write(n: int) -> object:
        start.wait(10)
        return store.upsert_if("hot", {"n": n}, at(1), NEVER)

    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(write, range(writers)))
    assert sum(isinstance(r, WriteResult) for r in results) == 1
    assert all(r == PreconditionFailed("hot", current_version=2) for r in results if not isinstance(r, WriteResult))
    assert store.get("hot").version == 2


# --- HTTP ------------------------------------------------------------------------------------------------


def put(client, item_id, body, **headers):
    return client.put(f"/items/{item_id}", data=json.dumps(body), headers={**JSON_HEADERS, **headers})


def outcomes(outcome: str) -> float:
    return REGISTRY.get_sample_value("cache_write_outcomes_total", {"outcome": outcome}) or 0.0


def test_a_lost_update_is_prevented(client):
    etag = put(client, "doc", {"text": "v1"}).headers["ETag"]
    assert put(client, "doc", {"text": "alice"}, **{"If-Match": etag}).status_code == 200
    failed_before = outcomes("precondition_failed")
    bob = put(client, "doc", {"text": "bob"}, **{"If-Match": etag})  # bob read v1 too
    assert bob.status_code == 412 and bob.json["error"] == "precondition_failed"
    assert bob.headers["ETag"] == '"doc.2"'
    assert outcomes("precondition_failed") == failed_before + 1
    got = client.get("/items/doc")
    assert got.json["text"] == "alice" and got.json["version"] == 2


def test_if_match_lists_any_and_weak_tags(client):
    put(client, "m", {})
    assert put(client, "m", {"n": 1}, **{"If-Match": '"m.9", "m.1"'}).status_code == 200
    assert put(client, "m", {"n": 2}, **{"If-Match": "*"}).headers["ETag"] == '"m.3"'
    weak = put(client, "m", {"n": 3}, **{"If-Match": 'W/"m.3"'})  # weak tags never match for a write
    assert weak.status_code == 412 and weak.headers["ETag"] == '"m.3"'
    other_id = put(client, "m", {"n": 3}, **{"If-Match": '"x.3"'})
    assert other_id.status_code == 412
    assert client.get("/items/m").json["n"] == 2


def test_if_match_on_a_missing_item_is_412_without_etag(client):
    response = put(client, "nobody", {}, **{"If-Match": "*"})
    assert response.status_code == 412 and "ETag" not in response.headers
    assert client.get("/items/nobody").status_code == 404


def test_if_match_with_if_none_match_star_can_never_hold(client):
    etag = put(client, "both", {"n": 1}).headers["ETag"]
    response = put(client, "both", {"n": 2}, **{"If-Match": etag, "If-None-Match": "*"})
    assert response.status_code == 412 and response.headers["ETag"] == etag


def test_if_none_match_star_creates_only(client):
    created = put(client, "once", {"n": 1}, **{"If-None-Match": "*"})
    assert created.status_code == 201 and created.headers["ETag"] == '"once.1"'
    again = put(client, "once", {"n": 2}, **{"If-None-Match": "*"})
    assert again.status_code == 412 and again.headers["ETag"] == '"once.1"'
    assert client.get("/items/once").json["n"] == 1


def test_post_with_an_id_is_conditional_too(client):
    body = json.dumps({"id": "p", "n": 1})
    assert client.post("/items", data=body, headers=JSON_HEADERS).status_code == 201
    stale = client.post("/items", data=body, headers={**JSON_HEADERS, "If-None-Match": "*"})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"p.1"'


def test_conditional_delete_over_http(client):
    put(client, "gone", {})
    put(client, "gone", {"n": 2})
    stale = client.delete("/items/gone", headers={"If-Match": '"gone.1"'})
    assert stale.status_code == 412 and stale.headers["ETag"] == '"gone.2"'
    assert client.get("/items/gone").status_code == 200
    assert client.delete("/items/gone", headers={"If-Match": '"gone.2"'}).status_code == 204
    assert client.get("/items/gone").status_code == 404
    assert client.delete("/items/gone", headers={"If-Match": "*"}).status_code == 412


@pytest.mark.parametrize(
    "headers",
    [
        {"If-Match": "garbage"},
        {"If-Match": '*, "bad.1"'},
        {"If-Match": '"bad.1" *'},
        {"If-Match": ""},
        {"If-Match": '"bad.1",'},
        {"If-None-Match": '"bad.1"'},
    ],
)
def test_malformed_preconditions_are_a_clear_400_and_write_nothing(client, headers):
    put(client, "bad", {"n": 1})
    for response in (put(client, "bad", {"n": 2}, **headers), client.delete("/items/bad", headers=headers)):
        assert response.status_code == 400 and response.json["error"] == "invalid_precondition"
        assert response.json["message"]
    got = client.get("/items/bad")
    assert got.json["n"] == 1 and got.json["version"] == 1


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)  # SQLite, PostgreSQL
def test_an_old_etag_never_matches_a_new_incarnation_of_its_id(app, client):
    """Deleted, its tombstone purged (as the follower does after the longest cache TTL), created again:
    the new item's versions start above the old one's, so the ETag a client kept from before fails."""
    old_etag = put(client, "x", {"incarnation": 1}).headers["ETag"]
    assert old_etag == '"x.1"'
    assert client.delete("/items/x").status_code == 204
    assert app.extensions["item_store"].purge_tombstones(older_than_s=0) == 1
    again = put(client, "x", {"incarnation": 2})
    assert again.status_code == 201 and again.headers["ETag"] != old_etag
    stale_put = put(client, "x", {"incarnation": "overwritten"}, **{"If-Match": old_etag})
    assert stale_put.status_code == 412 and stale_put.headers["ETag"] == again.headers["ETag"]
    stale_post = client.post(
        "/items", data=json.dumps({"id": "x", "incarnation": "posted"}), headers={**JSON_HEADERS, "If-Match": old_etag}
    )
    assert stale_post.status_code == 412
    assert client.delete("/items/x", headers={"If-Match": old_etag}).status_code == 412
    got = client.get("/items/x")
    assert got.status_code == 200 and got.json["incarnation"] == 2 and got.headers["ETag"] == again.headers["ETag"]
