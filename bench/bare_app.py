"""The baseline of bench/fast_path.py: a bare WSGI callable that answers 2 bytes, served by the same
gunicorn settings as the app (`gunicorn bench.bare_app:app` reads the project's gunicorn.conf.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]
