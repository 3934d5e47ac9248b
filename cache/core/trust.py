"""What this process may trust: its L1, and Redis's copies. The one place those rules are written.

Redis's copies: writes made while Redis was away (down, frozen, restarted empty, failed over) reached
only the database, so after any doubt (a failed Redis call, a lost listener) Redis may serve versions
older than this process has served from the database. It is trusted again once the change follower has
applied the database's change log (cache/changelog/follower.py) up to where the log stood after Redis answered
again: every change committed before then has then reached Redis as a floor or a tombstone. Until then
reads go to the database (cache/core/item_cache.py), and their fills, version-guarded, only move Redis forward.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from cache.core.metrics import REDIS_CATCHING_UP

CATCH_UP_LIMIT = 30.0  # seconds: a follower that announces nothing for this long (none left?) is not waited for


class L1Trust:
    """L1 is usable only while the listener is subscribed, Redis answers AND Redis is caught up with the
    change log: a process that cannot hear invalidations, or whose Redis calls fail, cannot know what other
    processes wrote meanwhile.

    `generation` changes whenever trust is lost (and on every flush), so a read that began before can tell
    that it must not fill L1 afterwards. `epoch` changes on every doubt about Redis, so a catch-up that
    began before it cannot end it."""

    def __init__(self, timer: Callable[[], float] = time.monotonic, *, follows_log: bool) -> None:
        self.timer = timer
        # Only a process that follows the change log can tell when Redis has caught up: one that does not
        # never doubts Redis (it would read through to the database for good).
        self.follows_log = follows_log
        self.chores_due = threading.Event()  # set when the chores' thread should look now (a doubt, a subscribe)
        self.subscribed = True  # no listener (tests, tools): nothing to wait for
        self.redis_answers = True
        self.redis_current = True  # Redis holds every change the log had when it last came back
        self.generation = 0
        self.epoch = 0
        self.head: int | None = None  # where the log stood after Redis answered again: to be applied first
        self.head_at = 0.0
        self.usable = True  # read on every request: an attribute, kept equal to the rule below
        self._lock = threading.Lock()

    def follow_log(self) -> None:
        """A change follower runs in this process now: doubts about Redis can be ended, so they count."""
        self.follows_log = True

    def set_subscribed(self, subscribed: bool) -> None:
        with self._lock:
            self.subscribed = subscribed
            self._update()
        if subscribed:
            self.chores_due.set()  # their first pass now: the catch-up, or the Bloom filter's upkeep at start

    def set_redis_answers(self, answers: bool) -> None:
        with self._lock:
            self.redis_answers = answers
            self._update()

    def new_generation(self) -> None:
        with self._lock:
            self.generation += 1

    def doubt_redis(self) -> None:
        """Redis may have missed writes (a call failed, the listener lost it, or it just came back): its
        copies are not trusted until the log is applied up to a head taken after this."""
        if not self.follows_log:
            return
        with self._lock:
            self.redis_current, self.head = False, None
            self.epoch += 1
            self._update()
        REDIS_CATCHING_UP.set(1)
        self.chores_due.set()  # the chores' thread watches the catch-up: never a request's thread

    def on_breaker_change(self, closed: bool) -> None:
        """The circuit breaker opened (False) or closed (True): a Redis that comes back may lack writes."""
        self.set_redis_answers(closed)
        if closed:
            self.doubt_redis()

    def set_head(self, epoch: int, head: int) -> bool:
        """The log's head, read after Redis answered (and after the doubt of `epoch`); False if doubted since."""
        with self._lock:
            if epoch != self.epoch or self.redis_current:
                return False
            self.head, self.head_at = head, self.timer()
            return True

    def applied(self, epoch: int, position: int) -> bool:
        """The follower announced the log applied up to `position`: True when that ends the doubt of `epoch`."""
        with self._lock:
            if epoch != self.epoch or self.head is None or position < self.head:
                return False
            self._trust_redis()
            return True

    def give_up(self, epoch: int) -> bool:
        """No announcement reached the head within CATCH_UP_LIMIT of taking it: trust Redis anyway (True),
        rather than read every item from the database for as long as no follower works."""
        with self._lock:
            if epoch != self.epoch or self.head is None or self.timer() - self.head_at < CATCH_UP_LIMIT:
                return False
            self._trust_redis()
            return True

    def _trust_redis(self) -> None:
        self.redis_current, self.head = True, None
        self._update()

    def _update(self) -> None:
        usable = self.subscribed and self.redis_answers and self.redis_current
        if not usable:
            self.generation += 1
        self.usable = usable
