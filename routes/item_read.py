"""The answer to a read that found its item: one definition of its status, body and every header, used by
the routed view (routes/items.py) and by the fast path that answers L1 hits before Flask's routing
(routes/fast_path.py), so the two cannot answer differently.

Flask's after_request hooks (http_headers, errors) set some of these headers again on the routed answer,
to the same values: they come from the same functions. A header that a later change adds in a hook for
every response must be added here too; the parity suite (tests/test_fast_path.py) fails until it is.
"""

from __future__ import annotations

from flask import Response

from cache.core.entry import CacheEntry
from config import Config
from routes.errors import SECURITY_HEADERS
from routes.http_headers import cache_status, item_cache_control

JSON = "application/json"
STATUS = 200
STATUS_LINE = "200 OK"  # as werkzeug writes it


def found_headers(
    entry: CacheEntry, tier: str, config: Config, request_id: str, cors: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Every header of a 200 answer to GET /items/<id> that `tier` answered with `entry` (which exists);
    `cors`: routes.http_headers.cors_headers for the request."""
    return [
        ("Content-Type", JSON),
        ("Content-Length", str(len(entry.body or b""))),
        ("ETag", entry.etag),
        ("X-Cache", tier),
        ("Cache-Status", cache_status(tier, config)),
        ("Cache-Control", item_cache_control(config)),
        ("X-Request-ID", request_id),
        *SECURITY_HEADERS.items(),
        *cors,
    ]


def found_response(
    entry: CacheEntry, tier: str, config: Config, request_id: str, cors: list[tuple[str, str]]
) -> Response:
    """The same answer as a Flask response (the routed view's)."""
    return Response(entry.body, status=STATUS, headers=found_headers(entry, tier, config, request_id, cors))
