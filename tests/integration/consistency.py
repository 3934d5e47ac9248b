"""A consistency checker for a fleet of instances (also used by bench/).

Writers PUT items through every instance and record each acknowledged version with the time the
acknowledgement arrived; readers GET them through every instance, on a new connection each time (so the
kernel spreads them over every worker), and record the version each read returned and when it started.

A read is *stale* when it started more than `allowance` seconds after a newer version was acknowledged.
Its *staleness* is how long after that acknowledgement it started: the report's `max_staleness` is the
widest window in which any worker served an older version than one already acknowledged. `stale()` lists
each stale read with what a diagnosis needs: the instance, the tier and the request id it sent (the
instance's access log names the worker that served it), and which newer version was acknowledged, when.
"""

from __future__ import annotations

import http.client
import itertools
import json
import random
import threading
import time
from bisect import bisect_left
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Read:
    key: str
    version: int
    started: float
    tier: str
    elapsed: float = 0.0
    base: str = ""  # the instance that answered
    request_id: str = ""  # sent as X-Request-ID
    reader: str = ""  # the reading client (its thread's name)


@dataclass(frozen=True)
class StaleRead:
    read: Read
    newest: int  # the newest version acknowledged before the read started
    first_newer_acked: float  # when the first version newer than the read's was acknowledged (monotonic)
    newest_via: str  # the instance that acknowledged `newest`

    @property
    def staleness(self) -> float:
        return self.read.started - self.first_newer_acked


@dataclass
class Report:
    reads: int
    writes: int
    read_errors: int
    write_errors: int
    stale_reads: int  # started more than `allowance` after a newer version was acknowledged
    max_staleness: float  # seconds
    tiers: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return (
            f"reads={self.reads} writes={self.writes} read_errors={self.read_errors} "
            f"write_errors={self.write_errors} stale_reads={self.stale_reads} "
            f"max_staleness={self.max_staleness * 1000:.1f}ms tiers={self.tiers}"
        )


def request(
    base: str,
    method: str,
    path: str,
    body: bytes | None = None,
    token: str | None = None,
    extra_headers: dict[str, str] | None = None,
) -> tuple[int, dict, bytes]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Connection": "close"} if body is not None else {}
        headers.update(extra_headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


class Checker:
    def __init__(
        self, bases: list[str], keys: int = 20, writers: int = 2, readers: int = 4, token: str | None = None
    ) -> None:
        self.bases, self.token = bases, token
        self.keys = [f"chk-{n}" for n in range(keys)]
        self.writers, self.readers = writers, readers
        self.acks: dict[str, list[tuple[int, float]]] = {k: [] for k in self.keys}
        self.acked_via: dict[tuple[str, int], str] = {}  # (key, version) -> the instance that acknowledged it
        self._request_ids = itertools.count()
        self.reads: list[Read] = []
        self.writes: list[tuple[float, float]] = []  # (started, elapsed) of each acknowledged write
        self.read_errors = self.write_errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def seed(self) -> None:
        for key in self.keys:
            self._write(self.bases[0], key)

    def start(self) -> Checker:
        self.seed()
        for n in range(self.writers):
            self._threads.append(threading.Thread(target=self._loop, args=(self._write, n), daemon=True))
        for n in range(self.readers):
            self._threads.append(threading.Thread(target=self._loop, args=(self._read, n), daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def _loop(self, action, n: int) -> None:
        rng = random.Random(n)
        while not self._stop.is_set():
            action(rng.choice(self.bases), rng.choice(self.keys))
            if action == self._write:
                time.sleep(0.01)  # writes are the minority, as in a read-mostly cache

    def _write(self, base: str, key: str) -> None:
        started = time.monotonic()
        try:
            status, _, body = request(base, "PUT", f"/items/{key}", json.dumps({"by": base}).encode(), self.token)
        except OSError:
            status, body = 0, b""
        acked = time.monotonic()
        with self._lock:
            if status in (200, 201):
                version = json.loads(body)["version"]
                self.acks[key].append((version, acked))
                self.writes.append((started, acked - started))
                self.acked_via[key, version] = base
            else:
                self.write_errors += 1

    def _read(self, base: str, key: str) -> None:
        request_id = f"chk-{next(self._request_ids)}"
        started = time.monotonic()
        try:
            status, headers, body = request(base, "GET", f"/items/{key}", extra_headers={"X-Request-ID": request_id})
        except OSError:
            status = 0
        with self._lock:
            if status == 200:
                tier, elapsed = headers.get("X-Cache", "?"), time.monotonic() - started
                version = json.loads(body)["version"]
                reader = threading.current_thread().name
                self.reads.append(Read(key, version, started, tier, elapsed, base, request_id, reader))
            else:
                self.read_errors += 1

    def read_latency(self, start: float, end: float, q: float) -> float:
        """The q-quantile of the latency of reads that started between `start` and `end` (monotonic)."""
        with self._lock:
            return quantile([r.elapsed for r in self.reads if start <= r.started <= end], q)

    def write_latency(self, start: float, end: float, q: float) -> float:
        """The q-quantile of the latency of acknowledged writes that started between `start` and `end`."""
        with self._lock:
            return quantile([elapsed for started, elapsed in self.writes if start <= started <= end], q)

    def newest_versions(self) -> dict[str, int]:
        with self._lock:
            return {key: max(v for v, _ in acks) for key, acks in self.acks.items()}

    def report(self, allowance: float = 0.05, since: float = 0.0) -> Report:
        """Judge the reads that started at or after `since` (monotonic time), allowing `allowance` s of lag."""
        with self._lock:
            reads = [r for r in self.reads if r.started >= since]
            writes = sum(len(a) for a in self.acks.values())
        behind = self.stale(0.0, since)
        return Report(
            reads=len(reads),
            writes=writes,
            read_errors=self.read_errors,
            write_errors=self.write_errors,
            stale_reads=sum(s.staleness > allowance for s in behind),
            max_staleness=max((s.staleness for s in behind), default=0.0),
            tiers=dict(Counter(r.tier for r in reads)),
        )

    def stale(self, allowance: float = 0.05, since: float = 0.0) -> list[StaleRead]:
        """The reads that started at or after `since` more than `allowance` s after a newer version's ack."""
        with self._lock:
            reads = [r for r in self.reads if r.started >= since]
            acks = {key: sorted(a, key=lambda va: va[1]) for key, a in self.acks.items()}
            acked_via = dict(self.acked_via)
        found = []
        for read in reads:
            key_acks = acks[read.key]
            # The acknowledgements of versions newer than what this read returned, before it began.
            cut = bisect_left([t for _, t in key_acks], read.started)
            newer = [(v, t) for v, t in key_acks[:cut] if v > read.version]
            if newer and read.started - min(t for _, t in newer) > allowance:
                newest = max(v for v, _ in newer)
                first = min(t for _, t in newer)
                found.append(StaleRead(read, newest, first, acked_via.get((read.key, newest), "?")))
        return found


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def read_everywhere(bases: list[str], keys: dict[str, int], rounds: int = 8) -> list[str]:
    """Read every key `rounds` times through every instance; return what disagrees with `keys`."""
    wrong = []
    for base in bases:
        for key, version in keys.items():
            for _ in range(rounds):
                status, _, body = request(base, "GET", f"/items/{key}")
                got = json.loads(body).get("version") if status == 200 else status
                if got != version:
                    wrong.append(f"{base}/items/{key}: {got} != {version}")
    return wrong
