"""JSON bodies the databases could not store, and JSON that costs more to check than to parse: lone UTF-16
surrogates are a 400 naming them (not a 500), and the duplicate-key check is linear in the keys."""

from __future__ import annotations

import json

import pytest

from routes.writes import _no_duplicate_keys

JSON_HEADERS = {"Content-Type": "application/json"}

LONE_SURROGATES = [
    pytest.param(b'{"a": "\\ud800"}', "\\ud800", id="value"),
    pytest.param(b'{"\\udc00": 1}', "\\udc00", id="key"),
    pytest.param(b'{"a": {"b": ["x", "\\udfff tail"]}}', "\\udfff", id="nested-array"),
    pytest.param(b'{"a": {"\\ud83d": {"c": 1}}}', "\\ud83d", id="nested-key"),
    pytest.param(b'{"a": "\\ude00\\ud83d"}', "\\ude00", id="pair-backwards"),
    pytest.param(b'{"a": "\xed\xa0\x80"}', "\\ud800", id="utf8-encoded-surrogate"),
]


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)  # SQLite, PostgreSQL
@pytest.mark.parametrize("body, named", LONE_SURROGATES)
def test_a_lone_surrogate_is_a_400_naming_it_and_nothing_is_stored(client, body, named):
    for response in (
        client.put("/items/s", data=body, headers=JSON_HEADERS),
        client.post("/items", data=body, headers=JSON_HEADERS),
        client.post("/items", data=body, headers={**JSON_HEADERS, "Idempotency-Key": "k1"}),
    ):
        assert response.status_code == 400, response.data
        assert response.json["error"] == "invalid_json"
        assert "lone UTF-16 surrogate" in response.json["message"] and named in response.json["message"]
    assert client.get("/items").json["items"] == []


@pytest.mark.parametrize("stack", ["embedded", "real"], indirect=True)
def test_a_surrogate_pair_is_one_character_and_is_stored(client):
    response = client.put("/items/s", data=b'{"\\ud83d\\ude00": "\\ud83d\\ude00"}', headers=JSON_HEADERS)
    assert response.status_code == 201
    assert client.get("/items/s").json["\U0001f600"] == "\U0001f600"


class CountedKey(str):
    """A key that counts how often it is compared for equality (what a quadratic check does n^2 times)."""

    comparisons = 0

    def __eq__(self, other: object) -> bool:
        CountedKey.comparisons += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("keys", [2_000, 8_000])
def test_the_duplicate_key_check_is_linear(keys):
    last = f"k{keys - 1}"  # repeated at the end: the worst case of a check that counts each key's copies
    pairs = [(CountedKey(f"k{n}"), n) for n in range(keys)] + [(CountedKey(last), "again")]
    CountedKey.comparisons = 0
    with pytest.raises(ValueError, match=f"duplicate key '{last}'"):
        _no_duplicate_keys(pairs)
    # A set finds the repeat with a handful of equality checks (hash collisions); `keys.count` made ~n^2/2.
    assert CountedKey.comparisons <= 2 * keys
    CountedKey.comparisons = 0
    assert len(_no_duplicate_keys(pairs[:-1])) == keys and CountedKey.comparisons <= 2 * keys


@pytest.mark.parametrize("stack", ["embedded"], indirect=True)
def test_many_keys_and_one_repeat_is_still_a_400(client):
    body = {f"{n:x}": 0 for n in range(7_705)}  # as many keys as fit in MAX_ITEM_BYTES
    text = json.dumps(body, separators=(",", ":"))[:-1] + ',"0":1}'
    assert len(text) < 65_536
    response = client.put("/items/many", data=text, headers=JSON_HEADERS)
    assert response.status_code == 400 and response.json["error"] == "invalid_json"
    assert "duplicate key '0'" in response.json["message"]
    assert client.get("/items/many").status_code == 404
