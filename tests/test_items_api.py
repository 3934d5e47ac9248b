"""The HTTP API on both stacks (fakeredis + SQLite; real Redis + PostgreSQL)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from tests.support import running_cache

JSON_HEADERS = {"Content-Type": "application/json"}
UNSUPPORTED = "unsupported_media_type"


def put(client, item_id, body, headers=JSON_HEADERS):
    return client.put(f"/items/{item_id}", data=json.dumps(body), headers=headers)


def test_read_goes_db_then_redis_then_lru(client, app):
    app.extensions["item_store"].upsert("w1", {"name": "widget"})  # in the DB, not cached
    first = client.get("/items/w1")
    assert first.status_code == 200 and first.headers["X-Cache"] == "db"
    assert first.json == {"id": "w1", "name": "widget", "version": 1, "updated_at": first.json["updated_at"]}
    running_cache().lru.clear()  # as another worker would see it: only Redis has it
    assert client.get("/items/w1").headers["X-Cache"] == "redis"
    third = client.get("/items/w1")
    assert third.headers["X-Cache"] == "lru" and third.data == first.data


def test_put_then_get_never_reads_the_database(client):
    created = put(client, "p1", {"n": 1})
    assert created.status_code == 201 and created.headers["Location"] == "/items/p1"
    assert created.json["version"] == 1 and created.headers["ETag"] == '"p1.1"'
    for _ in range(3):
        got = client.get("/items/p1")
        assert got.status_code == 200 and got.headers["X-Cache"] in ("lru", "redis")
    updated = put(client, "p1", {"n": 2})
    assert updated.status_code == 200 and "Location" not in updated.headers
    got = client.get("/items/p1")
    assert got.json["n"] == 2 and got.json["version"] == 2 and got.headers["X-Cache"] == "lru"


def test_post_without_id_creates_with_server_id(client):
    response = client.post("/items", data=json.dumps({"name": "x"}), headers=JSON_HEADERS)
    assert response.status_code == 201
    item_id = response.json["id"]
    assert len(item_id) == 16 and response.headers["Location"] == f"/items/{item_id}"
    assert client.get(f"/items/{item_id}").json["name"] == "x"


def test_post_with_id_upserts(client):
    first = client.post("/items", data=json.dumps({"id": "given", "a": 1}), headers=JSON_HEADERS)
    second = client.post("/items", data=json.dumps({"id": "given", "a": 2}), headers=JSON_HEADERS)
    assert (first.status_code, second.status_code) == (201, 200)
    assert client.get("/items/given").json["a"] == 2


def test_etag_and_conditional_get(client):
    etag = put(client, "e1", {}).headers["ETag"]
    not_modified = client.get("/items/e1", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304 and not_modified.data == b"" and not_modified.headers["ETag"] == etag
    weak = client.get("/items/e1", headers={"If-None-Match": f"W/{etag}"})
    assert weak.status_code == 304
    put(client, "e1", {"changed": True})
    changed = client.get("/items/e1", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and changed.headers["ETag"] == '"e1.2"'


def test_missing_id_is_json_404_and_negative_cached(client):
    first = client.get("/items/ghost")
    assert first.status_code == 404 and first.json["error"] == "not_found" and first.headers["X-Cache"] == "db"
    second = client.get("/items/ghost")
    assert second.status_code == 404 and second.headers["X-Cache"] == "negative"  # the cached absence
    put(client, "ghost", {"now": "exists"})  # a create replaces the negative entry
    assert client.get("/items/ghost").status_code == 200


def test_delete_then_get_is_404_and_recreate_works(client):
    put(client, "d1", {})
    assert client.delete("/items/d1").status_code == 204
    gone = client.get("/items/d1")
    assert gone.status_code == 404 and gone.headers["X-Cache"] == "negative"  # the tombstone, cached
    assert client.delete("/items/d1").status_code == 404
    again = put(client, "d1", {"again": True})
    assert again.status_code == 201 and again.json["version"] == 3
    assert client.get("/items/d1").json["again"] is True


def test_list_pagination(client):
    for item_id in ["b", "a", "c"]:
        put(client, item_id, {"id": item_id})
    page = client.get("/items?limit=2").json
    assert [i["id"] for i in page["items"]] == ["a", "b"] and page["next"] == "b"
    rest = client.get("/items?limit=2&after=b").json
    assert [i["id"] for i in rest["items"]] == ["c"] and rest["next"] is None


@pytest.mark.parametrize(
    "method, path, body, headers, status, error",
    [
        ("GET", "/items/bad%20id", None, {}, 400, "invalid_id"),
        ("GET", "/items/" + "x" * 65, None, {}, 400, "invalid_id"),
        ("PUT", "/items/ok", b"{not json", JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b"", JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b"[1, 2]", JSON_HEADERS, 400, "not_an_object"),
        ("PUT", "/items/ok", b'"text"', JSON_HEADERS, 400, "not_an_object"),
        ("PUT", "/items/ok", b'{"a": 1, "a": 2}', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"a": NaN}', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"a": 1e999}', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b"[" * 100_000 + b"]" * 100_000, JSON_HEADERS, 413, "request_entity_too_large"),
        ("PUT", "/items/ok", b'{"a":' * 5000 + b"1" + b"}" * 5000, JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"a": "\xff"}', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"version": 9}', JSON_HEADERS, 400, "read_only_field"),
        ("PUT", "/items/ok", b'{"updated_at": "x"}', JSON_HEADERS, 400, "read_only_field"),
        ("PUT", "/items/ok", b'{"id": "other"}', JSON_HEADERS, 400, "id_mismatch"),
        ("PUT", "/items/ok", b'{"a": 1}', {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        ("PUT", "/items/ok", b'{"a": 1}', {}, 415, "unsupported_media_type"),
        ("POST", "/items", b'{"id": 5}', JSON_HEADERS, 400, "invalid_id"),
        ("POST", "/items", b'{"id": "no/slash"}', JSON_HEADERS, 400, "invalid_id"),
        ("PUT", "/items/ok", b'{"big": "' + b"x" * 70_000 + b'"}', JSON_HEADERS, 413, "request_entity_too_large"),
        ("GET", "/items?limit=0", None, {}, 400, "invalid_limit"),
        ("GET", "/items?limit=abc", None, {}, 400, "invalid_limit"),
        ("GET", "/items?limit=" + "9" * 5000, None, {}, 400, "invalid_limit"),
        ("GET", "/items?after=%00", None, {}, 400, "invalid_after"),
        ("GET", "/items?page=2", None, {}, 400, "unknown_parameter"),
        ("PATCH", "/items/ok", b"{}", JSON_HEADERS, 405, "method_not_allowed"),
        ("DELETE", "/items", None, {}, 405, "method_not_allowed"),
        ("GET", "/nowhere", None, {}, 404, "not_found"),
        ("GET", "/items/%C3%A9t%C3%A9", None, {}, 400, "invalid_id"),
        ("GET", "/items/a.b", None, {}, 400, "invalid_id"),
        ("GET", "/items/%00", None, {}, 400, "invalid_id"),
        ("PUT", "/items/ok", b"null", JSON_HEADERS, 400, "not_an_object"),
        ("PUT", "/items/ok", b"42", JSON_HEADERS, 400, "not_an_object"),
        ("PUT", "/items/ok", b'{"a": -Infinity}', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"a": ' + b"9" * 5000 + b"}", JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"a": 1,}', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"a": {"b": 1, "b": 2}}', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"a": 1} trailing', JSON_HEADERS, 400, "invalid_json"),
        ("PUT", "/items/ok", b'{"version": null}', JSON_HEADERS, 400, "read_only_field"),
        (
            "PUT",
            "/items/ok",
            b"a=1",
            {"Content-Type": "application/x-www-form-urlencoded"},
            415,
            "unsupported_media_type",
        ),
        (
            "PUT",
            "/items/ok",
            b"--x--",
            {"Content-Type": "multipart/form-data; boundary=x"},
            415,
            "unsupported_media_type",
        ),
        ("POST", "/items", b'{"id": null}', JSON_HEADERS, 400, "invalid_id"),
        ("POST", "/items", b'{"id": ""}', JSON_HEADERS, 400, "invalid_id"),
        ("POST", "/items", b'{"id": "' + b"x" * 65 + b'"}', JSON_HEADERS, 400, "invalid_id"),
        ("POST", "/items", b'{"id": ["a"]}', JSON_HEADERS, 400, "invalid_id"),
        ("POST", "/items/x", b"{}", JSON_HEADERS, 405, "method_not_allowed"),
        ("GET", "/items?limit=-1", None, {}, 400, "invalid_limit"),
        ("GET", "/items?limit=1.5", None, {}, 400, "invalid_limit"),
        ("GET", "/items?limit=1001", None, {}, 400, "invalid_limit"),
        ("GET", "/items?after=", None, {}, 400, "invalid_after"),
        ("GET", "/items?after=" + "a" * 65, None, {}, 400, "invalid_after"),
        ("TRACE", "/items/ok", None, {}, 405, "method_not_allowed"),
        ("PROPFIND", "/items", None, {}, 405, "method_not_allowed"),
        ("POST", "/admin/cache/warm", None, {}, 403, "admin_disabled"),
    ],
)
def test_bad_requests_get_json_4xx_and_store_nothing(client, app, method, path, body, headers, status, error):
    response = client.open(path, method=method, data=body, headers=headers)
    assert response.status_code == status, response.data
    assert response.is_json and response.json["error"] == error and response.json["message"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert b"Traceback" not in response.data and b'File "' not in response.data
    assert app.extensions["item_store"].count() == 0
    assert client.get("/health/live").status_code == 200


def test_method_not_allowed_lists_allowed_methods(client):
    response = client.patch("/items/x")
    assert "PUT" in response.headers["Allow"] and "GET" in response.headers["Allow"]


def test_health(client):
    assert client.get("/health/live").json == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and ready.json == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_metrics_count_reads_by_tier(client, app):
    def summary():
        return client.get("/metrics/cache").json

    before = summary()
    put(client, "m1", {})
    client.get("/items/m1")
    client.get("/items/nothing")
    client.get("/items/nothing")
    after = summary()
    delta = {tier: after["requests"][tier] - before["requests"][tier] for tier in after["requests"]}
    assert delta == {"lru": 1, "redis": 0, "db": 1, "negative": 1, "bloom": 0}
    assert after["absent_answered_without_db"] - before["absent_answered_without_db"] == 1
    assert after["hit_ratio_means"].startswith("reads answered without the database")
    assert after["db_loads"] - before["db_loads"] == 1
    assert after["l1"]["entries_this_worker"] == 2 and after["l1"]["capacity_per_worker"] == 10000
    text = client.get("/metrics").data.decode()
    assert 'cache_requests_total{tier="lru"}' in text
    assert 'flask_http_request_total{method="GET",status="200"}' in text
    assert 'endpoint="items.get_item"' in text and "/items/m1" not in text  # grouped by endpoint


def test_a_method_no_route_serves_is_405_json_and_no_label_takes_a_value_the_client_chose(client):
    for method in ("BREW", "PATCH", "XYZZYPLUGH"):
        response = client.open("/items/a", method=method)
        assert response.status_code == 405 and response.json["error"] == "method_not_allowed"
        assert response.headers["Allow"] == "DELETE, GET, HEAD, OPTIONS, PUT"
        assert "GET" in response.json["message"] and method not in response.json["message"]
    assert client.open("/nowhere", method="BREW").headers["Allow"] == ""
    assert client.put("/health/live").status_code == 405  # a method another route serves: Flask's 405
    assert client.get("/no/such/path").status_code == 404
    text = client.get("/metrics").data.decode()
    assert "BREW" not in text and "XYZZYPLUGH" not in text and "/no/such/path" not in text
    assert 'endpoint="unrouted",le="0.005",method="GET",status="404"' in text  # one value for every path
    assert 'endpoint="None"' not in text


def test_server_error_is_json_without_traceback(client, app, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(app.extensions["item_store"], "get", boom)
    response = client.get("/items/any")
    assert response.status_code == 500 and response.json["error"] == "internal_error"
    assert b"secret" not in response.data and b"Traceback" not in response.data


class StalledBody(io.RawIOBase):
    """A request body whose client stopped sending, and whose read timed out."""

    def readable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:  # werkzeug's test client notes where it starts
        return 0

    def readinto(self, buffer: Any) -> int:
        raise TimeoutError("the client did not send its request within CLIENT_TIMEOUT")


def test_a_body_that_stops_arriving_is_408_not_a_disconnect_and_nothing_is_stored(client):
    chunked = {"wsgi.input_terminated": True}  # as gunicorn hands over a chunked body: read it to its end
    response = client.put("/items/slow", input_stream=StalledBody(), headers=JSON_HEADERS, environ_overrides=chunked)
    assert response.status_code == 408 and response.json["error"] == "request_timeout"
    assert "CLIENT_TIMEOUT (10 s)" in response.json["message"]
    assert client.get("/items/slow").status_code == 404
