"""Nesting depth is counted before parsing: the same limit on every Python version (3.13's json parses
far deeper than 3.11's, so a limit that relied on RecursionError let 5,000 levels through there)."""

from __future__ import annotations

import json

import pytest

from routes.writes import MAX_JSON_DEPTH, nesting_depth

JSON_HEADERS = {"Content-Type": "application/json"}


def nested(depth: int) -> bytes:
    """An item whose value nests objects and arrays, alternately, so the whole body is `depth` deep."""
    inner = "1"
    for level in range(depth - 1):
        inner = f'{{"n": {inner}}}' if level % 2 else f"[{inner}]"
    return f'{{"deep": {inner}}}'.encode()


def test_the_helper_builds_what_it_says():
    assert nesting_depth(nested(MAX_JSON_DEPTH).decode()) == MAX_JSON_DEPTH
    assert nesting_depth(nested(3).decode()) == 3 and json.loads(nested(3)) == {"deep": {"n": [1]}}


@pytest.mark.parametrize(
    "text, depth",
    [
        ("1", 0),
        ("{}", 1),
        ('{"a": [1, {"b": []}], "c": {}}', 4),
        ('{"a": "[[[[{{{{"}', 1),  # brackets in a string are text
        (r'{"a": "quote \" [[[ still text"}', 1),  # an escaped quote does not end the string
        (r'{"a\\": [[]]}', 3),  # an escaped backslash does not escape the closing quote
        ("[" * 5000, 101),  # stops counting once past the limit
    ],
)
def test_nesting_depth(text, depth):
    assert nesting_depth(text) == depth


def test_at_the_limit_is_stored(client):
    response = client.put("/items/deep", data=nested(MAX_JSON_DEPTH), headers=JSON_HEADERS)
    assert response.status_code == 201
    assert nesting_depth(client.get("/items/deep").data.decode()) == MAX_JSON_DEPTH


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 5000, 10_000])
def test_past_the_limit_is_a_400_and_nothing_is_stored(client, depth):
    response = client.put("/items/deep", data=nested(depth), headers=JSON_HEADERS)
    assert response.status_code == 400 and response.json["error"] == "invalid_json"
    assert f"more than {MAX_JSON_DEPTH} deep" in response.json["message"]
    assert client.get("/items/deep").status_code == 404


def test_utf16_body_is_counted_as_text(client):
    """json.loads accepts UTF-16; the depth is counted on the decoded text, not on its bytes."""
    body = nested(MAX_JSON_DEPTH + 1).decode().encode("utf-16")
    response = client.put("/items/deep", data=body, headers=JSON_HEADERS)
    assert response.status_code == 400 and "deep" in response.json["message"]
