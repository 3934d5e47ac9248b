"""Liveness (no I/O) and readiness (the database and Redis, each with a short timeout)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from db import DatabaseUnavailable, ItemStore

bp = Blueprint("health", __name__, url_prefix="/health")


@bp.get("/live")
def live() -> ResponseReturnValue:
    return {"status": "ok"}


@bp.get("/ready")
def ready() -> ResponseReturnValue:
    """200 ok; 200 degraded when only Redis is down (reads fall back to the DB); 503 when the DB is down."""
    store: ItemStore = current_app.extensions["item_store"]
    checks = {"database": "ok", "redis": "ok"}
    try:
        store.ping()
    except DatabaseUnavailable as exc:
        checks["database"] = f"unavailable: {exc}"
    if not current_app.extensions["item_cache"].redis.ping():
        checks["redis"] = "unavailable"
    if checks["database"] != "ok":
        return jsonify(status="unavailable", checks=checks), 503
    return jsonify(status="ok" if checks["redis"] == "ok" else "degraded", checks=checks), 200
