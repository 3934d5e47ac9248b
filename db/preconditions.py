"""What a conditional write expects of the stored item (RFC 9110 If-Match / If-None-Match), and what the
store answers. The store checks it inside the write itself, so two writers holding one ETag cannot both win."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Unconditional:
    """No precondition: create or replace."""


@dataclass(frozen=True, slots=True)
class IfExists:
    """`If-Match: *`: only if a live item is there."""


@dataclass(frozen=True, slots=True)
class IfAbsent:
    """`If-None-Match: *`: create only."""


@dataclass(frozen=True, slots=True)
class IfVersionIn:
    """`If-Match` with strong ETags: only if the live item is at one of these versions (empty: never)."""

    versions: frozenset[int]


Precondition = Unconditional | IfExists | IfAbsent | IfVersionIn
UNCONDITIONAL = Unconditional()


@dataclass(frozen=True, slots=True)
class PreconditionFailed:
    """Nothing was written; `current_version` is the live item's (None: there is no live item)."""

    item_id: str
    current_version: int | None


@dataclass(frozen=True, slots=True)
class Deleted:
    version: int  # the tombstone's


@dataclass(frozen=True, slots=True)
class NotFound:
    """There was no live item to delete."""
