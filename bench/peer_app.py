"""The peer: the same item read served the way a Flask user would write it with Flask-Caching's Redis
backend (`@cache.cached` on a plain view), over the same store. Run by bench as
`gunicorn bench.peer_app:app` with the project's gunicorn.conf.py."""

from __future__ import annotations

import os

from flask import Flask, Response, abort
from flask_caching import Cache

from db import open_store

app = Flask(__name__)
cache = Cache(
    app,
    config={
        "CACHE_TYPE": "RedisCache",
        "CACHE_REDIS_URL": os.environ["REDIS_URL"],
        "CACHE_DEFAULT_TIMEOUT": 300,
        "CACHE_KEY_PREFIX": "peer:",
    },
)
store = open_store(os.environ["DATABASE_URL"])


@app.get("/items/<item_id>")
@cache.cached()
def get_item(item_id: str) -> Response:
    item = store.get(item_id)
    if item is None:
        abort(404)
    return Response(item.to_json(), content_type="application/json")


@app.get("/health/live")
def live() -> dict[str, str]:
    return {"status": "ok"}
