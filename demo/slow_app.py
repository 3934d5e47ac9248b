"""`gunicorn demo.slow_app:app`: the service over a database whose item loads take DEMO_DB_LOAD_DELAY
seconds, for the demo's stampede scene. Demo only: the service itself has no such setting."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, cast

from app import create_app
from db import Item, ItemStore

logger = logging.getLogger(__name__)


class SlowLoads:
    """An ItemStore whose `get` (a cache miss's load) sleeps `delay` seconds first; all else passes through."""

    def __init__(self, store: ItemStore, delay: float, sleep: Callable[[float], None] = time.sleep) -> None:
        self.store, self.delay, self.sleep = store, delay, sleep

    def get(self, item_id: str) -> Item | None:
        self.sleep(self.delay)
        return self.store.get(item_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


def load_delay(environ: dict[str, str]) -> float:
    """DEMO_DB_LOAD_DELAY in seconds (0 to 5)."""
    raw = environ.get("DEMO_DB_LOAD_DELAY", "0") or "0"
    try:
        delay = float(raw)
    except ValueError:
        delay = -1.0
    if not 0 <= delay <= 5:
        raise ValueError(f"DEMO_DB_LOAD_DELAY must be between 0 and 5 seconds, got {raw!r}")
    return delay


_delay = load_delay(dict(os.environ))
logger.warning("DEMO_DB_LOAD_DELAY=%g: every database load of an item is slowed on purpose (demo only)", _delay)


def _slowed(store: ItemStore) -> ItemStore:
    return cast(ItemStore, SlowLoads(store, _delay))  # an ItemStore by delegation (__getattr__)


app = create_app(wrap_store=_slowed)
