"""Cross-process L1 coherence: one pub/sub listener thread per process, and the writes to replay.

Messages are published by the Redis write script itself (atomically with the write), as JSON:
{"k": key, "v": version, "o": origin id of the sender, "t": sender's wall-clock time}.

Pub/sub is at-most-once, so the listener assumes the worst whenever it cannot be sure:
- until it is subscribed (and again whenever its connection fails) the process bypasses L1;
- every (re)subscribe flushes L1, since messages may have been lost while it was away;
- it PINGs on the subscribed connection and treats a missing pong as a dead connection: a half-open
  TCP connection is otherwise never noticed.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import redis

from cache.metrics import INVALIDATION_LAG, INVALIDATIONS, LISTENER_SUBSCRIBED
from cache.redis_tier import REDIS_ERRORS_CAUGHT

logger = logging.getLogger(__name__)

CHANNEL = "cache-invalidate"
FLUSH_ALL = "*"  # the key of a message that tells every process to flush its whole L1
RECONNECT_MIN, RECONNECT_MAX = 0.05, 0.5  # seconds between attempts: fast first, then twice a second


def new_origin() -> str:
    """An id for this process's messages, so it can recognise (and ignore) its own."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def encode_message(key: str, version: int, origin: str) -> bytes:
    return json.dumps({"k": key, "v": version, "o": origin, "t": time.time()}, separators=(",", ":")).encode()


class ConnectionSilent(Exception):
    """The subscribed connection stopped answering (no pong, or no subscribe confirmation) in time."""


class Listener:
    """The per-process subscriber. `on_subscribed(reason)` / `on_lost()` let the cache flush and bypass L1;
    `on_message(key, version)` applies an invalidation and returns False when it was stale; `on_tick()`
    runs about four times a second while subscribed (the replay of pending writes)."""

    def __init__(
        self,
        client: redis.Redis,
        channel: str,
        origin: str,
        *,
        on_subscribed: Callable[[str], None],
        on_lost: Callable[[], None],
        on_message: Callable[[str, int], bool],
        on_tick: Callable[[], None],
        before_subscribe: Callable[[], object] | None = None,
        ping_interval: float = 0.5,
        pong_timeout: float = 2.0,
    ) -> None:
        self.client, self.channel, self.origin = client, channel, origin
        self.on_subscribed, self.on_lost, self.on_message, self.on_tick = on_subscribed, on_lost, on_message, on_tick
        self.ping_interval, self.pong_timeout = ping_interval, pong_timeout
        self.before_subscribe = before_subscribe
        self.subscribed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_reason = "subscribe"

    @property
    def stopped(self) -> threading.Event:
        """Set once `stop()` was called: threads that live as long as the listener wait on it."""
        return self._stop

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cache-invalidation-listener", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        delay = RECONNECT_MIN
        while not self._stop.is_set():
            try:
                self._session()
            except (*REDIS_ERRORS_CAUGHT, ConnectionSilent) as exc:
                logger.warning("invalidation listener lost its connection: %s: %s", type(exc).__name__, exc)
                if isinstance(exc, ConnectionSilent):  # kept until a subscribe succeeds, then counted once
                    self._flush_reason = "watchdog"
            except Exception:  # a bug must not end coherence for the life of the worker
                logger.exception("invalidation listener failed")
            delay = RECONNECT_MIN if self.subscribed else min(delay * 2, RECONNECT_MAX)
            self._set_lost()
            self._stop.wait(delay)

    def _set_lost(self) -> None:
        self.subscribed = False
        LISTENER_SUBSCRIBED.set(0)
        self.on_lost()

    def _session(self) -> None:
        if self.before_subscribe is not None:
            self.before_subscribe()
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            started = last_ping = time.monotonic()
            awaiting_pong_since: float | None = None
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=0.25)
                if message is not None:
                    awaiting_pong_since = self._dispatch(message, awaiting_pong_since)
                now = time.monotonic()
                if not self.subscribed and now - started > self.pong_timeout:
                    raise ConnectionSilent(f"no subscribe confirmation within {self.pong_timeout}s")
                if awaiting_pong_since is None and now - last_ping >= self.ping_interval:
                    pubsub.ping()
                    awaiting_pong_since = last_ping = now
                elif awaiting_pong_since is not None and now - awaiting_pong_since > self.pong_timeout:
                    raise ConnectionSilent(f"no pong within {self.pong_timeout}s")
                if self.subscribed:
                    self.on_tick()
        finally:
            self._close_quietly(pubsub)

    def _dispatch(self, message: dict[str, Any], awaiting_pong_since: float | None) -> float | None:
        kind = message["type"]
        if kind == "pong":
            return None
        if kind == "subscribe":  # first subscribe, or redis-py's own resubscribe after a reconnect
            self.on_subscribed(self._flush_reason)
            self._flush_reason = "subscribe"
            self.subscribed = True
            LISTENER_SUBSCRIBED.set(1)
        elif kind == "message":
            self._handle(message["data"])
        return awaiting_pong_since

    def _handle(self, data: bytes) -> None:
        try:
            payload = json.loads(data)
            key, version, origin, sent_at = payload["k"], int(payload["v"]), payload["o"], float(payload["t"])
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a malformed invalidation message (%d bytes)", len(data))
            return
        if origin == self.origin:
            INVALIDATIONS.labels("own").inc()
        elif self.on_message(key, version):
            INVALIDATIONS.labels("applied").inc()
            INVALIDATION_LAG.observe(max(0.0, time.time() - sent_at))
        else:
            INVALIDATIONS.labels("stale").inc()

    @staticmethod
    def _close_quietly(pubsub: Any) -> None:
        try:
            pubsub.close()
        except Exception:  # noqa: BLE001 - the connection is already broken; nothing left to do with it
            logger.debug("closing the pubsub connection failed", exc_info=True)
