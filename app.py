"""The app factory. `gunicorn app:app` and `python app.py` both start here."""

from __future__ import annotations

import os

if __name__ == "__main__" or "PROMETHEUS_MULTIPROC_DIR" in os.environ:
    # prometheus_client (imported below, through cache) writes files to PROMETHEUS_MULTIPROC_DIR as soon as a
    # metric is made: every setting is checked first, so a bad one is one line (exit 1) and nothing is written.
    import metrics_dir
    from config import load_config_or_exit

    _settings = load_config_or_exit()
    if __name__ == "__main__" and _settings.metrics_dir is not None:
        metrics_dir.prepare(_settings.metrics_dir)  # `python app.py`; under gunicorn, on_starting does it

import logging
from collections.abc import Callable, Mapping
from typing import Any

import click
import redis
from flask import Flask
from flask.cli import with_appcontext

import logs
import routes
from cache import service
from cache.changelog import warm
from cache.core.item_cache import ItemCache
from config import ConfigError, load_config
from db import DatabaseUnavailable, ItemStore, open_store

logger = logging.getLogger(__name__)


def create_app(
    overrides: Mapping[str, str] | None = None, wrap_store: Callable[[ItemStore], ItemStore] | None = None
) -> Flask:
    """Build the app from the environment, with `overrides` (same names as the variables) on top;
    `wrap_store` wraps the database the cache loads from (the demo's slow database: demo/slow_app.py).
    One app per process: building another replaces this process's cache (cache/service.py)."""
    config = load_config({**os.environ, **(overrides or {})})
    logs.configure(config.log_level, config.log_format)
    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=config.max_item_bytes, SERVICE_CONFIG=config)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    store = open_store(config.database_url, config.database_timeout, config.database_pool_size)
    try:
        store.init_schema()
    except DatabaseUnavailable as exc:  # keep serving cached reads; readiness reports the database
        logger.error("could not create the schema at start-up: %s", exc)
    app.extensions["item_store"] = store
    # No REDIS_URL: the embedded Redis, in this process (gunicorn's instances share a server: gunicorn.conf.py).
    client, bulk = (None, None) if config.redis_url else (_embedded_client(), _embedded_client())
    item_cache = service.init_cache(config, client, wrap_store(store) if wrap_store else store, bulk)
    app.extensions["item_cache"] = item_cache
    if config.warm_on_start:
        _warm_on_start(item_cache, store)
    if config.api_token is None:
        logger.warning("API_TOKEN is not set: anyone who can reach this service can write items")

    routes.register(app)
    app.cli.add_command(init_db_command)
    app.cli.add_command(warm_cache_command)
    return app


def _embedded_client() -> redis.Redis:
    from cache.embedded import server as embedded

    return embedded.client()


def _warm_on_start(item_cache: ItemCache, store: ItemStore) -> None:
    try:
        warm.warm_in_background(item_cache, store)
    except (warm.WarmInProgress, warm.CacheUnavailable) as exc:
        logger.info("warm on start skipped: %s", exc)


@click.command("init-db")
@with_appcontext
def init_db_command() -> None:
    """Create the schema if it is missing (the Procfile's release phase)."""
    from flask import current_app

    current_app.extensions["item_store"].init_schema()
    click.echo("schema ready")


@click.command("warm-cache")
@with_appcontext
def warm_cache_command() -> None:
    """Load every item into Redis (CACHE_LONG_TTL) and rebuild the Bloom filter, in batches."""
    import sys

    from flask import current_app

    store, process = current_app.extensions["item_store"], current_app.extensions["item_cache"]
    try:
        hold = warm.take_lock(process)
        if sys.stderr.isatty():
            with click.progressbar(length=store.count(), label="warming", file=sys.stderr) as bar:
                result = warm.warm(process, store, hold, lambda done, total: bar.update(done - bar.pos))
        else:
            result = warm.warm(process, store, hold, warm.log_progress())
    except (warm.WarmInProgress, warm.CacheUnavailable) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"warmed {result.items} items in {result.seconds:.1f}s (bloom filter rebuilt: {result.bloom_rebuilt})")


app: Flask  # made by __getattr__ below, on first access


def __getattr__(name: str) -> Any:
    """`app.app`, built on first access: gunicorn and `flask --app app` find it, tests that only import
    create_app do not build a second app from the environment."""
    if name == "app":
        global app
        try:
            app = create_app()
        except ConfigError as exc:  # one line, exit 1, as gunicorn.conf.py and `python app.py` say it
            raise SystemExit(f"configuration error: {exc}") from None
        return app
    raise AttributeError(name)


if __name__ == "__main__":
    from cache.embedded.share import leave, use_shared

    service.enable_listener()  # one process, no fork: its listener starts with the cache
    # No REDIS_URL: the embedded Redis that `gunicorn app:app` instances on this database use too.
    shared = use_shared(_settings.database_url) if _settings.redis_url is None else None
    try:
        application = create_app()
        application.run(host="0.0.0.0", port=_settings.port, threaded=True)
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    finally:
        if shared is not None:
            leave(shared)
