"""How a body is stored in Redis: JSON as served, or zlib-compressed above a size threshold, told apart
by the first byte (a JSON object starts with '{'; a compressed body with the marker byte 0x01).

Old and new entries both decode, so the threshold can change (or compression be turned off) at any
time. What fails to decode is reported as CORRUPT: the reader treats it as a miss and deletes it.
"""

from __future__ import annotations

import zlib

from cache.core.metrics import COMPRESSION_SAVED

COMPRESSED = b"\x01"
JSON_OBJECT = b"{"
ABSENT = b""  # a tombstone or negative entry: the id is known not to exist
CORRUPT = object()


def encode(body: bytes | None, compress_min_bytes: int) -> bytes:
    if body is None:
        return ABSENT
    if compress_min_bytes and len(body) >= compress_min_bytes:
        packed = COMPRESSED + zlib.compress(body, 6)
        if len(packed) < len(body):
            COMPRESSION_SAVED.inc(len(body) - len(packed))
            return packed
    return body


def decode(stored: bytes) -> bytes | None | object:
    """The body, None for an absent id, or CORRUPT."""
    if stored == ABSENT:
        return None
    marker = stored[:1]
    if marker == JSON_OBJECT:
        return stored
    if marker == COMPRESSED:
        try:
            body = zlib.decompress(stored[1:])
        except zlib.error:
            return CORRUPT
        return body if body[:1] == JSON_OBJECT else CORRUPT
    return CORRUPT
