"""What a write request carries, parsed or refused with a 4xx naming the problem before anything is
stored: its JSON body and RFC 9110 preconditions (If-Match / If-None-Match parsed into
what the store checks)."""

from __future__ import annotations

import json
import math
import re
from typing import Any

from flask import current_app, request

from db import UNCONDITIONAL, IfAbsent, IfExists, IfVersionIn, Precondition
from routes.errors import ApiError

SERVER_FIELDS = ("version", "updated_at")
# Arrays and objects inside one another, at most. Counted before parsing, so the limit is the same on
# every Python (3.13's json parses far deeper than 3.11's) and never depends on the recursion limit.
MAX_JSON_DEPTH = 100
# What nesting depends on: brackets, quotes (strings hide brackets) and escapes (an escaped quote ends nothing).
JSON_STRUCTURE = re.compile(r'\\.|[\[\]{}"]', re.DOTALL)
# What may hold a lone UTF-16 surrogate (U+D800-U+DFFF): one decoded from the bytes (the decode lets them
# pass, as json.loads does) or an escape \uD800-\uDFFF. A pair is one character once parsed; only a body
# that matches is checked for a lone one.
MAY_HOLD_SURROGATE = re.compile(r"[\ud800-\udfff]|\\u[dD][89a-fA-F]")


def nesting_depth(text: str, stop_above: int = MAX_JSON_DEPTH) -> int:
    """How deeply arrays and objects nest in `text`, counted without recursion; stops once past `stop_above`."""
    depth = deepest = 0
    in_string = False
    for token in JSON_STRUCTURE.findall(text):
        if token == '"':
            in_string = not in_string
        elif in_string or len(token) == 2:
            continue
        elif token in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_above:
                    break
        else:
            depth -= 1
    return deepest


def _decode(raw: bytes) -> str:
    """The body as text, in the encoding json.loads would detect (UTF-8, -16 or -32)."""
    return raw.decode(json.detect_encoding(raw), "surrogatepass")


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """The object of `pairs`; ValueError naming the first key repeated. Linear in the number of keys."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def _no_lone_surrogate(text: str, body: Any) -> None:
    """400 when a string of `body` (a key or a value, at any depth) holds a lone UTF-16 surrogate: it is no
    character, and neither the databases nor UTF-8 can store it."""
    if not MAY_HOLD_SURROGATE.search(text):
        return
    try:
        json.dumps(body, ensure_ascii=False).encode()
    except UnicodeEncodeError as exc:
        lone = f"\\u{ord(exc.object[exc.start]):04x}"
        message = f"a string holds a lone UTF-16 surrogate ({lone}), which is no character; send the pair or remove it"
        raise ApiError(400, "invalid_json", message) from None


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]!r} is out of range")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_exactly(stream: Any, length: int) -> bytes:
    """`length` bytes of `stream` (fewer if it ends first), read as one piece where it allows: werkzeug's
    get_data reads 64 KiB pieces, each a fresh buffer, which cost a small write more than parsing it."""
    pieces = []
    while length > 0 and (piece := stream.read(length)):
        pieces.append(piece)
        length -= len(piece)
    return b"".join(pieces)


def _read_body() -> bytes:
    length = request.content_length
    if not length:  # chunked (or none): read to the end the server marks
        return request.get_data(cache=False)
    return read_exactly(request.stream, length)


def parse_item_body() -> dict[str, Any]:
    """The request's JSON object, or a 4xx: 415 wrong type, 413 too large, 400 not a valid object."""
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the item as JSON with 'Content-Type: application/json'")
    raw = _read_body()  # a declared Content-Length over MAX_CONTENT_LENGTH: 413 before reading
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
        # A chunked body is cut at the limit, not refused: one byte more means it was too large.
        raise ApiError(413, "request_entity_too_large", f"the body is larger than MAX_ITEM_BYTES ({limit} bytes)")
    return parse_json_object(raw)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """`raw` as an item's JSON object, or ApiError 400 naming what is wrong with it."""
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        text = _decode(raw)
        if nesting_depth(text) > MAX_JSON_DEPTH:
            raise ApiError(400, "invalid_json", f"the JSON nests arrays and objects more than {MAX_JSON_DEPTH} deep")
        body = json.loads(
            text, object_pairs_hook=_no_duplicate_keys, parse_float=_finite_float, parse_constant=_no_constant
        )
    except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    _no_lone_surrogate(text, body)
    if not isinstance(body, dict):
        raise ApiError(400, "not_an_object", f"an item must be a JSON object, not {type(body).__name__}")
    for field in SERVER_FIELDS:
        if field in body:
            raise ApiError(400, "read_only_field", f"'{field}' is set by the server; remove it from the body")
    return body


# entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE; etagc = %x21 / %x23-7E / obs-text
ENTITY_TAG = re.compile(r'[ \t]*(W/)?"([\x21\x23-\x7e\x80-\xff]*)"[ \t]*')


def write_precondition(item_id: str) -> Precondition:
    """What the request's If-Match / If-None-Match expect of `item_id`; 400 when they cannot be understood."""
    if_match, if_none_match = request.headers.get("If-Match"), request.headers.get("If-None-Match")
    expect: Precondition = UNCONDITIONAL
    if if_none_match is not None:
        if if_none_match.strip() != "*":
            message = "on a write If-None-Match takes only * (create the item only if it does not exist)"
            raise ApiError(400, "invalid_precondition", message)
        expect = IfAbsent()
    if if_match is not None:
        # Both: If-Match needs the item to exist, If-None-Match: * needs it absent; RFC 9110 13.2.2 evaluates
        # both, so the write can never proceed: 412 (after If-Match is checked for being well-formed).
        expect = _if_match(item_id, if_match) if if_none_match is None else _never(item_id, if_match)
    return expect


def _never(item_id: str, if_match: str) -> Precondition:
    _if_match(item_id, if_match)
    return IfVersionIn(frozenset())


def _if_match(item_id: str, value: str) -> Precondition:
    if value.strip() == "*":
        return IfExists()
    # Weak tags never match for a write (RFC 9110 13.1.1 uses the strong comparison); nor do other ids' tags.
    versions = {_version(item_id, opaque) for weak, opaque in entity_tags(value) if not weak}
    return IfVersionIn(frozenset(v for v in versions if v is not None))


def entity_tags(value: str) -> list[tuple[bool, str]]:
    """(weak, opaque-tag) for each tag of a comma-separated list; 400 for anything else (a bare word, `*`
    among tags, an empty list)."""
    tags, position = [], 0
    while True:
        match = ENTITY_TAG.match(value, position)
        if match is None:
            raise ApiError(
                400,
                "invalid_precondition",
                'If-Match must be * alone or a comma-separated list of quoted ETags, such as "item-1.3"',
            )
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
        if position == len(value):
            return tags
        if value[position] != ",":
            position = len(value) + 1  # no match next round: a 400
        position += 1


def _version(item_id: str, opaque: str) -> int | None:
    """The version a strong ETag of this service names for `item_id` (see cache.core.entry.make_etag), or None."""
    tag_id, _, version = opaque.rpartition(".")
    if tag_id != item_id or not version.isascii() or not version.isdigit() or len(version) > 18:
        return None
    return int(version)
