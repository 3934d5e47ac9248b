"""The pub/sub listener: one thread per process that hears other processes' writes and hands them to
its `ListenerEvents` (cache/coherence/apply.py applies them to L1).

What it hears is an announcement (cache/core/redis_tier.py), published by the Redis write scripts.

Pub/sub is at-most-once, so the listener reports every doubt: until it is subscribed (and again whenever
its connection fails) it says the connection is lost; and it PINGs on the subscribed connection, treating
a missing pong as a dead connection, since a half-open TCP connection is otherwise never noticed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import redis

from cache.core.background import Background
from cache.core.guard import REDIS_ERRORS_CAUGHT
from cache.core.metrics import LISTENER_SUBSCRIBED
from cache.core.redis_tier import Invalidation, decode_message, own_marker

logger = logging.getLogger(__name__)

RECONNECT_MIN, RECONNECT_MAX = 0.05, 0.5  # seconds between attempts: fast first, then twice a second


class ListenerEvents(Protocol):
    def before_subscribe(self) -> None: ...

    def on_subscribed(self, reason: str) -> None:
        """Subscribed (`reason`: "subscribe", or "watchdog" after a silent connection)."""

    def on_lost(self) -> None:
        """Not subscribed any more: messages may be missed from now on."""

    def on_message(self, message: Invalidation) -> None: ...

    def on_own(self) -> None:
        """One of this process's own announcements (told apart unparsed: `own_marker`)."""


@dataclass(frozen=True, slots=True)
class Watchdog:
    """How the listener checks its connection: a PING every `ping_interval` s, a pong within `pong_timeout`."""

    ping_interval: float = 0.5
    pong_timeout: float = 2.0
    timer: Callable[[], float] = time.monotonic


class ConnectionSilent(Exception):
    """The subscribed connection stopped answering (no pong, or no subscribe confirmation) in time."""


class Listener(Background):
    thread_name = "cache-invalidation-listener"

    def __init__(
        self, client: redis.Redis, channel: str, events: ListenerEvents, watchdog: Watchdog, origin: str = ""
    ) -> None:
        """`origin`: this process's, whose announcements go to `on_own` without being parsed."""
        super().__init__()
        self.client, self.channel, self.events, self.watchdog = client, channel, events, watchdog
        self.own_marker = own_marker(origin) if origin else None
        self.subscribed = False
        self._flush_reason = "subscribe"

    def _run(self) -> None:
        delay = RECONNECT_MIN
        while not self.stopped.is_set():
            try:
                self._session()
            except (*REDIS_ERRORS_CAUGHT, ConnectionSilent) as exc:
                logger.warning("invalidation listener lost its connection: %s: %s", type(exc).__name__, exc)
                if isinstance(exc, ConnectionSilent):  # kept until a subscribe succeeds, then counted once
                    self._flush_reason = "watchdog"
            except Exception:  # a bug must not end coherence for the life of the worker
                logger.exception("invalidation listener failed")
            delay = RECONNECT_MIN if self.subscribed else min(delay * 2, RECONNECT_MAX)
            self.subscribed = False
            LISTENER_SUBSCRIBED.set(0)
            self.events.on_lost()
            self.stopped.wait(delay)

    def _session(self) -> None:
        self.events.before_subscribe()
        pubsub = self.client.pubsub()
        try:
            pubsub.subscribe(self.channel)
            self._watch(pubsub)
        finally:
            _close_quietly(pubsub)

    def _watch(self, pubsub: Any) -> None:
        """Read messages until stopped; raise ConnectionSilent when the connection stops answering."""
        timer, ping_interval, pong_timeout = (
            self.watchdog.timer,
            self.watchdog.ping_interval,
            self.watchdog.pong_timeout,
        )
        started = last_ping = timer()
        awaiting_pong_since: float | None = None
        while not self.stopped.is_set():
            message = pubsub.get_message(timeout=min(0.25, ping_interval))
            if message is not None:
                awaiting_pong_since = None if message["type"] == "pong" else awaiting_pong_since
                self._dispatch(message)
            now = timer()
            if not self.subscribed and now - started > pong_timeout:
                raise ConnectionSilent(f"no subscribe confirmation within {pong_timeout}s")
            if awaiting_pong_since is None and now - last_ping >= ping_interval:
                pubsub.ping()
                awaiting_pong_since = last_ping = now
            elif awaiting_pong_since is not None and now - awaiting_pong_since > pong_timeout:
                raise ConnectionSilent(f"no pong within {pong_timeout}s")

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] == "subscribe":  # first subscribe, or redis-py's own resubscribe after a reconnect
            self.events.on_subscribed(self._flush_reason)
            self._flush_reason = "subscribe"
            self.subscribed = True
            LISTENER_SUBSCRIBED.set(1)
        elif message["type"] == "message":
            data = message["data"]
            if self.own_marker is not None and data.startswith(self.own_marker):
                self.events.on_own()  # most of what a busy writer hears: no JSON parse for it
                return
            parsed = decode_message(data)
            if parsed is not None:
                self.events.on_message(parsed)


def _close_quietly(pubsub: Any) -> None:
    try:
        pubsub.close()
    except Exception:  # noqa: BLE001 - the connection is already broken; nothing left to do with it
        logger.debug("closing the pubsub connection failed", exc_info=True)
