"""What every response says beside its body: request id, Cache-Control, Cache-Status, CORS."""

from __future__ import annotations

import json

import pytest

from config import ConfigError, load_config

JSON_HEADERS = {"Content-Type": "application/json"}
ORIGIN = "https://app.example.com"


def put(client, item_id: str, body: dict):
    return client.put(f"/items/{item_id}", data=json.dumps(body), headers=JSON_HEADERS)


def test_a_plain_request_id_is_echoed_and_anything_else_replaced(client):
    assert client.get("/health/live", headers={"X-Request-ID": "req-42.a:b"}).headers["X-Request-ID"] == "req-42.a:b"
    for bad in ("x" * 129, "has space", "semi;colon", ""):
        made_up = client.get("/health/live", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert made_up != bad and len(made_up) == 32 and int(made_up, 16) >= 0
    first, second = (client.get("/items/nothing").headers["X-Request-ID"] for _ in range(2))
    assert first != second  # made up per request, errors included


def test_items_are_revalidated_by_etag_and_nothing_else_is_stored(client):
    put(client, "c1", {"n": 1})
    ok = client.get("/items/c1")
    assert ok.headers["Cache-Control"] == "no-cache"
    not_modified = client.get("/items/c1", headers={"If-None-Match": ok.headers["ETag"]})
    assert not_modified.status_code == 304 and not_modified.headers["Cache-Control"] == "no-cache"
    for response in (
        put(client, "c1", {"n": 2}),
        client.get("/items/missing"),
        client.get("/items"),
        client.get("/health/live"),
        client.get("/metrics/cache"),
        client.put("/items/c1", data="not json", headers=JSON_HEADERS),
    ):
        assert response.headers["Cache-Control"] == "no-store", response.status_code


def test_a_max_age_for_a_cdn_is_a_setting(make_app):
    client = make_app(HTTP_MAX_AGE="60", HTTP_STALE_WHILE_REVALIDATE="30").test_client()
    put(client, "c2", {})
    assert client.get("/items/c2").headers["Cache-Control"] == "public, max-age=60, stale-while-revalidate=30"
    assert client.get("/items/none").headers["Cache-Control"] == "no-store"


def test_cache_status_names_the_tier_that_answered(client):
    put(client, "s1", {})
    assert client.get("/items/s1").headers["Cache-Status"] == "item-cache; hit; detail=lru"
    missing = client.get("/items/s-none")
    assert missing.headers["X-Cache"] == "db" and missing.headers["Cache-Status"] == "item-cache; fwd=miss; stored"
    again = client.get("/items/s-none")
    assert again.headers["Cache-Status"] == "item-cache; hit; detail=negative"
    assert "Cache-Status" not in client.get("/health/live").headers


def test_cors_is_off_unless_origins_are_configured(client):
    response = client.get("/health/live", headers={"Origin": ORIGIN})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_cors_allows_the_configured_origins_and_exposes_the_cache_headers(make_app):
    client = make_app(CORS_ORIGINS=f"{ORIGIN}, https://other.example.com:8443").test_client()
    put(client, "o1", {})
    response = client.get("/items/o1", headers={"Origin": ORIGIN})
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip().lower() for h in response.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"etag", "x-cache", "cache-status", "x-request-id"} <= exposed
    preflight = client.options(
        "/items/o1",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "Content-Type, If-Match, Authorization",
        },
    )
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "if-match" in allowed and "authorization" in allowed
    stranger = client.get("/items/o1", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers


def vary(response) -> list[str]:
    return [field.strip().lower() for value in response.headers.getlist("Vary") for field in value.split(",")]


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
@pytest.mark.parametrize("origins", [ORIGIN, f"{ORIGIN}, https://other.example.com:8443", "*"])
def test_with_cors_every_answer_varies_on_origin(make_app, origins):
    """One origin too: the answer with Access-Control-Allow-Origin and the one without (no Origin, another
    Origin) must not be given one for the other by a shared cache (HTTP_MAX_AGE lets one keep them)."""
    client = make_app(CORS_ORIGINS=origins, HTTP_MAX_AGE="60").test_client()
    answers = [put(client, "o1", {})]
    for origin in ({"Origin": ORIGIN}, {"Origin": "https://evil.example"}, {}):
        answers += [
            client.get("/items/o1", headers=origin),  # L1 hits: answered before routing
            client.get("/items/o1", headers={**origin, "If-None-Match": '"o1.1"'}),  # 304, routed
            client.get("/items/nobody", headers=origin),
            client.get("/items", headers=origin),
            client.get("/health/live", headers=origin),
            client.options("/items/o1", headers={**origin, "Access-Control-Request-Method": "PUT"}),
        ]
    assert {answer.headers.get("X-Cache") for answer in answers} >= {"lru", None}
    for answer in answers:
        assert vary(answer).count("origin") == 1, (answer.status_code, answer.headers)


def test_without_cors_nothing_varies_on_origin(client):
    put(client, "o1", {})
    for answer in (client.get("/items/o1", headers={"Origin": ORIGIN}), client.get("/health/live")):
        assert "origin" not in vary(answer)


@pytest.mark.parametrize(
    "name, value",
    [("CORS_ORIGINS", "app.example.com"), ("CORS_ORIGINS", "https://a.example/path"), ("HTTP_MAX_AGE", "-1")],
)
def test_bad_http_settings_are_refused_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
@pytest.mark.parametrize("path", ["/items//x", "/items/x//", "/health//live", "/items/x/", "/metrics/"])
def test_an_odd_path_is_a_json_404_never_a_redirect_to_the_clients_host(client, path):
    put(client, "x", {})
    response = client.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.json["error"] == "not_found" and "Location" not in response.headers
    assert b"evil.example" not in response.data


def test_no_rule_ends_with_a_slash_so_routing_never_redirects_to_add_one(app):
    assert [rule.rule for rule in app.url_map.iter_rules() if rule.rule.endswith("/")] == []
