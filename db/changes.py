"""The change log's shapes: a change, a batch of them, and the cursor a follower keeps between batches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

CURSOR_FORMAT = "c1"  # first field of a cursor's text, so a stored cursor of another format is refused


@dataclass(frozen=True, slots=True)
class Change:
    """One committed write to the items table: `id` is at `version` now, deleted or not."""

    seq: int
    id: str
    version: int
    deleted: bool


@dataclass(frozen=True, slots=True)
class ChangeCursor:
    """A position in the log: every change with seq <= `seq` has been delivered, except those of the
    transactions listed in `pending` as (xid, floor), which were still open when the position was taken
    (PostgreSQL only): their changes above `floor` are still to come."""

    seq: int
    pending: tuple[tuple[int, int], ...] = ()

    @property
    def safe_seq(self) -> int:
        """Every change at or below this seq has been delivered: the log may be purged up to here."""
        return min([self.seq, *(floor for _, floor in self.pending)])

    def to_text(self) -> str:
        """A short string for durable storage, e.g. 'c1:1042' or 'c1:1042:7781-1040,7790-1042'."""
        text = f"{CURSOR_FORMAT}:{self.seq}"
        if self.pending:
            text += ":" + ",".join(f"{xid}-{floor}" for xid, floor in self.pending)
        return text

    @classmethod
    def from_text(cls, text: str) -> ChangeCursor:
        """Parse `to_text`'s output; ValueError for anything else."""
        parts = text.split(":")
        if len(parts) not in (2, 3) or parts[0] != CURSOR_FORMAT:
            raise ValueError(f"not a change cursor: {text[:40]!r}")
        pending: list[tuple[int, int]] = []
        for entry in parts[2].split(",") if len(parts) == 3 and parts[2] else []:
            xid, _, floor = entry.partition("-")
            pending.append((int(xid), int(floor)))
        return cls(int(parts[1]), tuple(pending))


@dataclass(frozen=True, slots=True)
class ChangeBatch:
    """The changes after a cursor, in seq order, and the cursor to ask from next. `gap`: log rows after the
    given cursor may have been purged, so the caller cannot know what it missed (it should flush what it
    cannot trust); `changes` is then empty and `cursor` is the end of the log as of this call.
    `upto`: once this batch is applied, every change with a seq at or below it has been (a batch that
    reached the end of the log covers seqs no change holds any more: rolled back, or beyond the last)."""

    changes: list[Change] = field(default_factory=list)
    cursor: ChangeCursor = ChangeCursor(0)
    gap: bool = False
    upto: int = 0


class ChangeWaiter(Protocol):
    """Blocks until the log may have grown; every wait is bounded by its timeout."""

    def wait(self, timeout: float) -> bool:
        """True when woken by a change (or when it cannot tell: poll now); False when the timeout ran out."""
        ...

    def close(self) -> None: ...
