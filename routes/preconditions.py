"""RFC 9110 preconditions on writes: If-Match / If-None-Match parsed into what the store checks."""

from __future__ import annotations

import re

from flask import request

from db import UNCONDITIONAL, IfAbsent, IfExists, IfVersionIn, Precondition
from routes.errors import ApiError

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
