"""Announcements: what the Redis write scripts publish on the invalidation channel (atomically with the
write) and every process's listener hears, as JSON:
{"k": key, "v": version, "o": origin id of the sender, "t": sender's wall-clock time}."""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import time
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CHANNEL = "cache-invalidate"
FLUSH_ALL = "*"  # the key of a message that tells every process to flush its whole L1
UNVERSIONED = -1  # the version of a message that drops a key whatever version a process holds


def new_origin() -> str:
    """An id for this process's messages, so it can recognise (and ignore) its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def encode_message(key: str, version: int, origin: str) -> bytes:
    return json.dumps({"k": key, "v": version, "o": origin, "t": time.time()}, separators=(",", ":")).encode()


@dataclass(frozen=True, slots=True)
class Invalidation:
    key: str
    version: int
    origin: str
    sent_at: float  # the sender's wall clock


def decode_message(data: bytes) -> Invalidation | None:
    """The message, or None (logged) when it is malformed."""
    try:
        payload = json.loads(data)
        return Invalidation(str(payload["k"]), int(payload["v"]), str(payload["o"]), float(payload["t"]))
    except (ValueError, KeyError, TypeError):
        logger.warning("ignored a malformed invalidation message (%d bytes)", len(data))
        return None
