"""One log format for everything a process writes: a JSON object per line for machines (the default
where no person watches: platforms and log drains parse it), or one readable line for a terminal.
LOG_FORMAT picks: json, text, or auto (text when stderr is a terminal, else json).

A request's line (logger "access", written by the app itself rather than gunicorn, so both share one
format) carries method, path, status, duration in ms, bytes, the X-Cache tier, the worker's pid and the
request id. Item bodies and tokens are never logged. The formatter is a dozen lines of the standard
library: no dependency earns its place for that.

The access line is written once per request, so its cost is every request's (BENCHMARKS.md "Fast path"):
where `logging` would only turn it into a JSON line and write that to one stream (the production setup),
`access` writes the same line itself, without a LogRecord; anything else (a handler or filter of the
caller's, text lines, pytest's caplog) gets it through `logging` as usual.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "bytes", "tier", "request_id")
ACCESS = logging.getLogger("access")


def json_line(
    created: float, level: str, logger: str, message: str, pid: int | None, fields: dict[str, Any]
) -> dict[str, Any]:
    """A line's JSON object, the request fields among `fields` after the common ones."""
    line = {
        "time": datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
        "pid": pid,
    }
    line.update({name: fields[name] for name in REQUEST_FIELDS if name in fields})
    return line


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # one, not one a line (json.dumps makes one)


def dumps(line: dict[str, Any]) -> str:
    return _ENCODER.encode(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = json_line(record.created, record.levelname, record.name, record.getMessage(), record.process, vars(record))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return dumps(line)


def access(message: str, fields: dict[str, Any]) -> None:
    """Log a request's line (logger "access", INFO) with its REQUEST_FIELDS: what `ACCESS.info(message,
    extra=fields)` writes, in fewer steps where that is the same line."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    handler = _sole_json_handler()
    if handler is None:
        ACCESS.info(message, extra=fields)  # no arguments: a % in the path is not a placeholder
        return
    line = dumps(json_line(time.time(), "INFO", ACCESS.name, message, os.getpid(), fields)) + handler.terminator
    with handler.lock:  # type: ignore[union-attr]  # a Handler's lock, created with it
        try:
            handler.stream.write(line)
            handler.flush()
        except Exception:  # as logging does: a log that cannot be written does not fail the request
            handler.handleError(ACCESS.makeRecord(ACCESS.name, logging.INFO, "", 0, message, (), None))


def _sole_json_handler() -> logging.StreamHandler[Any] | None:
    """The one handler an access line reaches when `logging` would only format it as JSON and write it to
    that handler's stream: no handler or filter on the way but the root's one plain StreamHandler."""
    if ACCESS.handlers or ACCESS.filters or not ACCESS.propagate or ACCESS.parent is not logging.root:
        return None
    handlers = logging.root.handlers
    if len(handlers) != 1 or logging.root.filters:
        return None
    handler = handlers[0]
    if type(handler) is not logging.StreamHandler or handler.filters or handler.level > logging.INFO:
        return None
    return handler if type(handler.formatter) is JsonFormatter else None


def formatter(log_format: str) -> logging.Formatter:
    """The formatter LOG_FORMAT names ("auto": text on a terminal, JSON elsewhere)."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT)


def configure(level: str, log_format: str) -> None:
    """Root logging to stderr in the chosen format, once per process (gunicorn.conf.py formats gunicorn's
    own loggers the same way through its logconfig_dict)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
    root.setLevel(level)
