"""The database's list of cache writes that never reached Redis, so that ANY process repairs them.

A writer that cannot reach Redis replays its own writes when it can (cache/replay.py); but until then,
or if it dies first, the other processes would keep serving the older copy Redis still holds. So the
writer also records (id, version) in the database it just wrote to, and every process, about once a
second while Redis answers (from a thread of its own: database calls may be slow), drops older cached
copies of what is listed, announces it to every process, and clears the rows.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from cache.guard import RedisDown

if TYPE_CHECKING:
    from cache.process import CacheProcess

logger = logging.getLogger(__name__)


class Outbox(Protocol):
    """What the item store provides for it (db/sql.py)."""

    def outbox_add(self, item_id: str, version: int) -> None: ...

    def outbox_list(self, limit: int = 100) -> list[tuple[str, int]]: ...

    def outbox_done(self, item_id: str, version: int) -> None: ...


def record(outbox: Outbox, item_id: str, version: int) -> None:
    try:
        outbox.outbox_add(item_id, version)
    except Exception:  # noqa: BLE001 - the database just took the write; if it fails now, replay remains
        logger.warning("could not record the missed cache write of %s in the outbox", item_id, exc_info=True)


def drain(outbox: Outbox, cache: CacheProcess) -> int:
    """Repair what the outbox lists; returns how many rows were cleared. Stops at a Redis failure."""
    done = 0
    try:
        for item_id, version in outbox.outbox_list():
            key = cache.key(item_id)
            if isinstance(cache.redis.drop_if_older(key, version), RedisDown):
                break  # Redis failed: the rows stay for the next look
            cache.lru.invalidate(key, version)  # our own announcement never reaches our own listener
            outbox.outbox_done(item_id, version)
            done += 1
    except Exception as exc:  # noqa: BLE001 - the database is down: the rows stay for the next look
        logger.warning("could not read the cache outbox: %s: %s", type(exc).__name__, exc)
    if done:
        logger.info("repaired %d cache entries listed in the outbox", done)
    return done
