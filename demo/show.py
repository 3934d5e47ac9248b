"""How a scene speaks: the command a person could type, what came back, metric deltas, and its verdict."""

from __future__ import annotations

from dataclasses import dataclass

from demo.stack import counters, delta
from tests.support import Gunicorn


@dataclass
class Outcome:
    ok: bool
    summary: str
    skipped: bool = False


def title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def say(text: str) -> None:
    print(f"   {text}", flush=True)


def cmd(text: str) -> None:
    print(f"   $ {text}", flush=True)


def got(text: str) -> None:
    print(f"     -> {text}", flush=True)


class Metrics:
    """`with Metrics(servers):` prints the change of every cache counter over the block (curl .../metrics)."""

    def __init__(self, servers: list[Gunicorn]) -> None:
        self.servers = servers
        self.changes: dict[str, float] = {}

    def __enter__(self) -> Metrics:
        self.before = counters(self.servers)
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        self.changes = delta(self.before, counters(self.servers))
        ports = " ".join(str(s.port) for s in self.servers)
        cmd(f"for p in {ports}; do curl -s localhost:$p/metrics | grep '^cache_.*_total'; done   # deltas, summed:")
        for name, change in self.changes.items():
            got(f"{name} {change:+g}")
        if not self.changes:
            got("(no cache counter moved)")

    def __getitem__(self, name: str) -> float:
        return self.changes.get(name, 0.0)

    def tier(self, tier: str) -> float:
        return self[f'cache_requests_total{{tier="{tier}"}}']
