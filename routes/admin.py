"""Admin: warm every tier from the database, flush the tiers. Always behind the API token."""

from __future__ import annotations

from flask import Blueprint, current_app
from flask.typing import ResponseReturnValue

from cache.changelog import warm
from routes.http import require_token

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
def _authenticate() -> None:
    require_token(admin=True)


@bp.post("/cache/warm")
def warm_cache() -> ResponseReturnValue:
    """Start a warm in the background: 202; 409 while one is already running; 503 when Redis is down."""
    store = current_app.extensions["item_store"]
    warm.warm_in_background(current_app.extensions["item_cache"], store)
    return {"status": "warming", "items": store.count()}, 202


@bp.delete("/cache")
def flush_cache() -> ResponseReturnValue:
    """Delete this service's cached items from Redis and empty every worker's L1."""
    return {"status": "flushed", "redis_keys_deleted": warm.flush(current_app.extensions["item_cache"])}, 200
