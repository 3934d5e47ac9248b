"""One log format for everything a process writes: a JSON object per line for machines (the default
where no person watches: platforms and log drains parse it), or one readable line for a terminal.
LOG_FORMAT picks: json, text, or auto (text when stderr is a terminal, else json).

A request's line (logger "access", written by the app itself rather than gunicorn, so both share one
format) carries method, path, status, duration in ms, bytes, the X-Cache tier, the worker's pid and the
request id. Every other line written while a request is served carries that request's id too (REQUEST_ID),
and a JSON line carries the fields a caller passed with `extra=`. Item bodies and tokens are never logged.
The formatter is a dozen lines of the standard library: no dependency earns its place for that.

The access line is written once per request, so its cost is every request's (BENCHMARKS.md "Fast path"):
where `logging` would only turn it into a JSON line and write that to one stream (the production setup),
`access` writes the same line itself, from a template, without a LogRecord; anything else (a handler or
filter of the caller's, text lines, pytest's caplog) gets it through `logging` as usual.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from contextvars import ContextVar
from json.encoder import encode_basestring_ascii
from typing import Any

TEXT = "%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s"
# What a text line must not carry raw: C0 and C1 controls (a newline starts a forged line, ESC drives the
# terminal), DEL, and Unicode's line and paragraph separators.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
REQUEST_FIELDS = ("method", "path", "status", "duration_ms", "bytes", "tier", "request_id")
ACCESS = logging.getLogger("access")
# The id of the request this thread is serving (routes/http.py sets it, and clears it after), or None.
REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
# A LogRecord's own attributes: whatever else a record holds came with `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
NEVER_LOGGED = frozenset({"body", "token", "api_token", "authorization"})  # an `extra=` of these is left out

_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)  # one, not one a line (json.dumps makes one)
_second: tuple[int, str] = (-1, "")  # the last whole second iso_time formatted, and its text


def iso_time(created: float) -> str:
    """A time.time() in UTC with milliseconds, as every JSON line carries it: 2026-11-27T18:20:11.713+00:00."""
    global _second
    second, cached = int(created), _second  # one read: another thread may replace it meanwhile
    if cached[0] != second:  # once a second
        cached = _second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
    millis = min(int(created * 1000) - second * 1000, 999)  # created * 1000 may round up to the next second
    return f"{cached[1]}.{millis:03d}+00:00"


def json_object(
    created: float, level: str, logger: str, message: str, pid: int | None, fields: dict[str, Any]
) -> dict[str, Any]:
    """A line's fields: the common ones, then the request fields among `fields`."""
    line = {"time": iso_time(created), "level": level, "logger": logger, "message": message, "pid": pid}
    line.update({name: fields[name] for name in REQUEST_FIELDS if name in fields})
    return line


def dumps(line: dict[str, Any]) -> str:
    return _ENCODER.encode(line)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields `record` came with (`extra=`, NEVER_LOGGED left out), and the id of the request being served."""
    fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRIBUTES and k not in NEVER_LOGGED}
    if "request_id" not in fields:
        request_id = REQUEST_ID.get()
        if request_id is not None:
            fields["request_id"] = request_id
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        fields = extra_fields(record)
        line = json_object(record.created, record.levelname, record.name, message, record.process, fields)
        line.update((name, value) for name, value in fields.items() if name not in line)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return dumps(line)


# dumps(json_object(...)) of an access line (every request field present), as a template: the encoder's own
# string escaping, int, finite float and None spelled as it spells them, anything else encoded by it.
_ACCESS_LINE = (
    '{"time":"%s","level":"INFO","logger":"access","message":%s,"pid":%s'
    + "".join(f',"{name}":%s' for name in REQUEST_FIELDS)
    + "}"
)


def _json_value(value: Any) -> str:
    kind = type(value)
    if kind is str:
        return encode_basestring_ascii(value)
    if kind is int:
        return int.__repr__(value)
    if kind is float and value - value == 0:  # finite (the encoder's NaN and Infinity are its own)
        return float.__repr__(value)
    return "null" if value is None else _ENCODER.encode(value)


def access_line(created: float, message: str, pid: int, fields: dict[str, Any]) -> str:
    """dumps(json_object(created, "INFO", "access", message, pid, fields)) for `fields` holding every one of
    REQUEST_FIELDS."""
    values = [_json_value(fields[name]) for name in REQUEST_FIELDS]
    return _ACCESS_LINE % (iso_time(created), encode_basestring_ascii(message), pid, *values)


def access(message: str, fields: dict[str, Any]) -> None:
    """Log a request's line (logger "access", INFO) with its REQUEST_FIELDS (all of them): what
    `ACCESS.info(message, extra=fields)` writes, in fewer steps where that is the same line."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    handler = _sole_json_handler()
    if handler is None or not logging.logProcesses or logging.getLevelName(logging.INFO) != "INFO":
        ACCESS.info(message, extra=fields)  # no arguments: a % in the path is not a placeholder
        return
    line = access_line(time.time(), message, os.getpid(), fields) + handler.terminator
    with handler.lock:  # type: ignore[union-attr]  # a Handler's lock, created with it
        try:
            handler.stream.write(line)
            handler.flush()
        except RecursionError:  # as StreamHandler.emit does
            raise
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


class TextFormatter(logging.Formatter):
    """TEXT, one line per message: its control characters are escaped (\\n, \\x1b), so nothing a client
    sends (a path with %0a) can start a line of its own; ` request_id=<id>` follows the message of a line
    written while a request is served. A traceback still follows on lines of its own."""

    def __init__(self) -> None:
        super().__init__(TEXT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return CONTROL.sub(_escaped, super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id is None:
            return text
        head, newline, rest = text.partition("\n")  # after the message, before a traceback
        return f"{head} request_id={request_id}{newline}{rest}"


def _escaped(control: re.Match[str]) -> str:
    return control.group().encode("unicode_escape").decode("ascii")


def formatter(log_format: str) -> logging.Formatter:
    """The formatter LOG_FORMAT names ("auto": text on a terminal, JSON elsewhere)."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
    return JsonFormatter() if log_format == "json" else TextFormatter()


def configure(level: str, log_format: str) -> None:
    """Root logging to stderr in the chosen format, once per process (gunicorn.conf.py formats gunicorn's
    own loggers the same way through its logconfig_dict)."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(formatter(log_format))
        root.addHandler(handler)
    root.setLevel(level)
