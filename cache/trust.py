"""Whether this process may serve from (and fill) its L1: the one place that rule is written."""

from __future__ import annotations

import threading


class L1Trust:
    """L1 is usable only while the listener is subscribed AND Redis answers: a process that cannot hear
    invalidations, or whose Redis calls fail, cannot know what other processes wrote meanwhile.

    `generation` changes whenever trust is lost (and on every flush), so a read that began before can tell
    that it must not fill L1 afterwards."""

    def __init__(self) -> None:
        self.subscribed = True  # no listener (tests, tools): nothing to wait for
        self.redis_answers = True
        self.generation = 0
        self.usable = True  # read on every request: an attribute, kept equal to the rule below
        self._lock = threading.Lock()

    def set_subscribed(self, subscribed: bool) -> None:
        with self._lock:
            self.subscribed = subscribed
            self._update()

    def set_redis_answers(self, answers: bool) -> None:
        with self._lock:
            self.redis_answers = answers
            self._update()

    def new_generation(self) -> None:
        with self._lock:
            self.generation += 1

    def _update(self) -> None:
        self.usable = self.subscribed and self.redis_answers
        if not self.usable:
            self.generation += 1
