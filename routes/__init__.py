"""Blueprints: items, metrics, health (+ admin, openapi, dashboard); and the JSON error handlers."""

from __future__ import annotations

from flask import Flask

from routes import admin, dashboard, errors, fast_path, health, http, items, metrics, openapi


def register(app: Flask) -> None:
    # Routing never redirects: werkzeug's redirect of /items//x to /items/x is an HTML page whose Location
    # is built from the client's Host header. Such a path is a JSON 404 (errors.py) instead: the API's paths
    # are exact. (Its other redirect, to a rule's trailing slash, needs a rule ending in '/': there is none.)
    app.url_map.merge_slashes = False
    http.init_request_metrics(app)
    app.register_blueprint(items.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(admin.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(dashboard.bp)
    errors.register(app)
    http.register(app, app.config["SERVICE_CONFIG"])
    http.install_served_methods(
        app, app.config["SERVICE_CONFIG"].access_log
    )  # after every route: it knows their methods
    fast_path.install_fast_path(app, app.config["SERVICE_CONFIG"])  # last: it answers in front of everything above
