"""A Redis Cluster client learns of a failover slowly: ask the cluster for its slots again, for both of a
process's clients (the requests' and the batches', which the change follower's pipeline uses). Nothing to
do outside a cluster."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from redis import Redis

from cache.core.guard import Guard

INTERVAL = 1.0  # seconds: while Redis calls keep failing, ask a cluster for its slots at most this often


class Topology:
    def __init__(self, clients: list[Redis], guard: Guard, timer: Callable[[], float] = time.monotonic) -> None:
        self.clients, self.guard, self.timer = clients, guard, timer
        self._next = float("-inf")

    def views(self) -> list[Any]:
        """The cluster clients' views of the slots (nodes_manager); none outside a cluster."""
        views = (getattr(client, "nodes_manager", None) for client in self.clients)
        return [view for view in views if view is not None]

    def refresh(self) -> None:
        """Ask the cluster for its slots now. Raises what the client raises when no node answers."""
        for view in self.views():
            view.initialize()

    def refresh_soon(self, now: float) -> None:
        """refresh() at most every INTERVAL (`now`: time.monotonic()), its failure absorbed and counted: for
        background chores whose Redis calls keep failing."""
        if now < self._next or not self.views():  # outside a cluster it would only count as a success,
            return  # and each success resets the breaker's run of failures
        self._next = now + INTERVAL
        self.guard("topology", "-", self.refresh)
