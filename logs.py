"""One log format for everything a process writes: a JSON object per line for machines (the default
where no person watches: platforms and log drains parse it), or one readable line for a terminal.
LOG_FORMAT picks: json, text, or auto (text when stderr is a terminal, else json).

A request's line (logger "access", written by the app itself rather than gunicorn, so both share one
format) carries method, path, status, duration in ms, bytes, the X-Cache tier, the worker's pid and the
request id. Item bodies and tokens are never logged. The formatter is a dozen lines of the standard
library: no dependency earns its place for that.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "bytes", "tier", "request_id")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        line.update({name: getattr(record, name) for name in REQUEST_FIELDS if hasattr(record, name)})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


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
