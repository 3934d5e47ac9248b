"""The one shape of every background thread in a process: the listener, the chores, the change follower
and the cache inspector each run `_run` on a daemon thread until `stop()`."""

from __future__ import annotations

import threading


class Background:
    thread_name = "cache-background"

    def __init__(self) -> None:
        self.stopped = threading.Event()  # set by stop(); loops wait on it, so stopping never waits long
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        raise NotImplementedError
