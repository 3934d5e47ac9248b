"""The baselines of bench/fast_path.py, served by the same gunicorn settings as the app (`gunicorn
bench.bare_app:app` reads the project's gunicorn.conf.py):

- `app`: a bare WSGI callable that answers 2 bytes (issue 17's baseline);
- `item_app`: a bare WSGI callable that answers what an L1 hit answers (the same status, headers and a body
  of the same size, built once by routes/item_read.py), doing nothing per request: what gunicorn itself
  spends on that answer (its header checks, the bytes), which no fast path can go below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cache.entry import CacheEntry
from config import load_config
from routes.item_read import STATUS_LINE, found_headers

# An item as tests.support.seed_items writes it, as L1 holds it; a made-up request id of the usual length.
BODY = b'{"id":"item-0","seeded":true,"version":1,"updated_at":"2026-01-01T00:00:00.000Z"}'
ITEM = CacheEntry.build("item-0", 1, BODY)
ITEM_HEADERS = found_headers(ITEM, "lru", load_config({}), "0" * 32, [])


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def item_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response(STATUS_LINE, ITEM_HEADERS)
    return [ITEM.body or b""]
