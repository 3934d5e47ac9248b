"""Bearer-token auth: writes need API_TOKEN when it is set; admin endpoints need it always; metrics and the
dashboard's data need METRICS_TOKEN when it is set."""

from __future__ import annotations

import hmac

from flask import current_app, request

from routes.errors import ApiError

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="item-cache"'}


def require_token(*, admin: bool) -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <API_TOKEN>` (compared in constant
    time). With no API_TOKEN configured, writes are open and admin endpoints answer 403."""
    token = current_app.config["SERVICE_CONFIG"].api_token
    if token is None:
        if admin:
            raise ApiError(403, "admin_disabled", "admin endpoints are disabled: start the service with API_TOKEN set")
        return
    if not _bearer_is(token):
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <API_TOKEN>'", CHALLENGE)


def require_metrics_token() -> None:
    """Raise 401 unless the request carries `Authorization: Bearer <METRICS_TOKEN>`; open when it is unset."""
    token = current_app.config["SERVICE_CONFIG"].metrics_token
    if token is not None and not _bearer_is(token):
        raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <METRICS_TOKEN>'", CHALLENGE)


def _bearer_is(token: str) -> bool:
    """The request's `Authorization: Bearer` credential is `token` (compared in constant time)."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
