"""What the cache holds for one id: a version and the ready-to-send response body (or None: absent); how
that body is stored in Redis; and the TTL arithmetic of an entry (jitter, XFetch's early refresh).

Stored body: JSON as served, or zlib-compressed above a size threshold, told apart by the first byte (a
JSON object starts with '{'; a compressed body with the marker byte 0x01). Old and new entries both
decode, so the threshold can change (or compression be turned off) at any time. What fails to decode is
reported as CORRUPT: the reader treats it as a miss and deletes it.
"""

from __future__ import annotations

import math
import random
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from cache.core.metrics import COMPRESSION_SAVED


@dataclass(frozen=True, slots=True)
class CacheEntry:
    version: int
    body: bytes | None  # the item's JSON as served; None: the id is known not to exist (tombstone/negative)
    etag: str
    # What Redis knew of it when it was read (not part of its identity): how long the database load
    # took, the TTL it was given, and how much of that was left. They drive early refresh (XFetch).
    load_ms: int = field(default=0, compare=False)
    ttl_ms: int = field(default=0, compare=False)
    remaining_ms: int = field(default=-1, compare=False)

    @classmethod
    def build(cls, item_id: str, version: int, body: bytes | None, load_ms: int = 0) -> CacheEntry:
        return cls(version=version, body=body, etag=make_etag(item_id, version), load_ms=load_ms)

    @property
    def exists(self) -> bool:
        return self.body is not None

    def refresh_due(self, beta: float) -> bool:
        """Whether a reader should refresh this copy early (XFetch: should_refresh)."""
        return should_refresh(self.load_ms, self.remaining_ms, beta)

    def held_bytes(self) -> int:
        """The memory this entry holds (itself, its body and ETag), as sys.getsizeof counts it."""
        body = sys.getsizeof(self.body) if self.body is not None else 0
        return sys.getsizeof(self) + body + sys.getsizeof(self.etag)


def should_refresh(load_ms: int, remaining_ms: int, beta: float, rand: Callable[[], float] = random.random) -> bool:
    """XFetch (Vattani et al., VLDB 2015): refresh early when now - delta * beta * ln(rand()) >= expiry,
    i.e. when -delta * beta * ln(rand()) >= the TTL left. Hot keys, read often near expiry, get refreshed
    by one reader before they expire; cold ones rarely. No TTL (-1) or an unknown load time: never."""
    if beta <= 0 or load_ms <= 0 or remaining_ms < 0:
        return False
    return -load_ms * beta * math.log(max(rand(), 1e-300)) >= remaining_ms


def make_etag(item_id: str, version: int) -> str:
    """A strong ETag from id + version: the database bumps the version on every change."""
    return f'"{item_id}.{version}"'


class _Miss:
    """The sentinel for "not cached", distinct from a cached absent id (dogpile.cache's NO_VALUE)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISS"

    def __bool__(self) -> bool:
        return False


MISS = _Miss()


def jittered(ttl_seconds: float, jitter: float, rand: Callable[[], float] = random.random) -> int:
    """The TTL in ms, spread by +-`jitter` (0.1: +-10%) so keys written together expire apart."""
    return max(1, int(ttl_seconds * 1000 * (1 + jitter * (2 * rand() - 1))))


COMPRESSED = b"\x01"
JSON_OBJECT = b"{"
ABSENT = b""  # a tombstone or negative entry: the id is known not to exist
CORRUPT = object()


def encode_body(body: bytes | None, compress_min_bytes: int) -> bytes:
    if body is None:
        return ABSENT
    if compress_min_bytes and len(body) >= compress_min_bytes:
        packed = COMPRESSED + zlib.compress(body, 6)
        if len(packed) < len(body):
            COMPRESSION_SAVED.inc(len(body) - len(packed))
            return packed
    return body


def decode_body(stored: bytes) -> bytes | None | object:
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
