"""A request whose method no route serves is answered 405 (JSON, with the path's `Allow`) before Flask sees
it: request metrics label every request they count by its method, and a client can send any token as one,
so counting these would let it add series without end. (RFC 9110 suggests 501 for an unknown method; 405 is
what Flask answers an existing route, and keeps the answer to bad input a 4xx, out of 5xx alerts.)"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.routing import Map

from routes.errors import SECURITY_HEADERS
from routes.http_headers import log_request, new_request_id

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class ServedMethodsOnly:
    """WSGI middleware: requests with a method some route serves go to `app`; others are answered 405 here."""

    def __init__(self, app: WSGIApp, url_map: Map, access_log: bool) -> None:
        self.app = app
        self.url_map = url_map
        self.methods = frozenset(method for rule in url_map.iter_rules() for method in rule.methods or ())
        self.access_log = access_log
        message = f"no route serves this method; the methods served are {', '.join(sorted(self.methods))}"
        self.body = json.dumps({"error": "method_not_allowed", "message": message}).encode()

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") in self.methods:
            return self.app(environ, start_response)
        started = time.perf_counter()
        request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID", ""))
        allowed = self.url_map.bind_to_environ(environ).allowed_methods()  # this path's, maybe none
        headers = [
            ("Allow", ", ".join(sorted(allowed))),
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
            ("X-Request-ID", request_id),
            *SECURITY_HEADERS.items(),
        ]
        start_response("405 METHOD NOT ALLOWED", headers)
        if self.access_log:
            method = str(environ.get("REQUEST_METHOD", ""))
            log_request(method, environ.get("PATH_INFO", ""), 405, started, len(self.body), None, request_id)
        return [self.body]


def install(app: Flask, access_log: bool) -> None:
    """Answer in front of `app`'s routing the methods none of its routes serve (HEAD and OPTIONS included)."""
    app.wsgi_app = ServedMethodsOnly(app.wsgi_app, app.url_map, access_log)  # type: ignore[method-assign]
