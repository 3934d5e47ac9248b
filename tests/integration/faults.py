"""A fault-injection checker for a fleet (tests/integration/test_faults.py, bench/faults.py).

Writers own their items (no two write the same id), so each item's versions are consecutive in the
database: a gap between two acknowledged versions, or a final database version above the last
acknowledged one, is a write that committed although its client was not told so. Readers GET random
items through random instances on a new connection each time (the kernel spreads them over the workers).
Everything is judged per fault window (and for the healthy time outside them), each with its own bound:

- failures: answers other than 2xx (or no answer), reads and writes apart;
- stale: a read that started more than `bound` after a newer version of its item was acknowledged;
- backwards: a read older than one the same client got for that item more than `lag` before it started
  (per client, across instances), and `backwards_any`: older than one any client got more than `lag`
  before (once any worker served N, none serves older);
- committed_5xx: writes answered with a 5xx saying nothing was written (or a 4xx) that committed;
  `unknown_committed`: writes answered `outcome_unknown` or not at all that committed (correctly answered).
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

from tests.integration.consistency import request

UNKNOWN = ("outcome_unknown", "no_answer")  # answers (prefixes) that do not claim nothing was written


@dataclass(frozen=True)
class Call:
    client: str
    key: str
    base: str
    started: float
    finished: float
    status: int  # 0: no answer (connection refused or reset)
    version: int | None  # what a 2xx answer carried
    error: str = ""
    tier: str = ""  # X-Cache of the answer

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass
class Window:
    name: str
    start: float
    end: float = float("inf")
    bound: float = 0.1  # seconds of staleness behind an acknowledged write the service promises here
    lag: float = 0.1  # seconds a version older than one already served may still be (the invalidation lag)
    # ... and for reads in the first `early` seconds of the fault: a Redis that freezes silently delivers no
    # invalidation until each listener's watchdog notices (the promise's one exception: docs/DESIGN.md)
    early: float = 0.0
    early_lag: float = 0.1

    def lag_at(self, moment: float) -> float:
        return self.early_lag if moment < self.start + self.early else self.lag


@dataclass
class Verdict:
    name: str
    reads: int = 0
    writes: int = 0
    read_failures: int = 0
    write_failures: int = 0
    stale: int = 0
    backwards: int = 0
    backwards_any: int = 0
    committed_5xx: int = 0
    unknown_committed: int = 0
    examples: list[str] = field(default_factory=list)

    def violations(self) -> int:
        return self.stale + self.backwards + self.backwards_any + self.committed_5xx

    def line(self) -> str:
        return (
            f"{self.name}: reads={self.reads} writes={self.writes} read_failures={self.read_failures} "
            f"write_failures={self.write_failures} stale={self.stale} backwards={self.backwards} "
            f"backwards_any={self.backwards_any} committed_5xx={self.committed_5xx} "
            f"unknown_committed={self.unknown_committed}"
        )


class FaultRun:
    def __init__(
        self, bases: list[str], token: str, writers: int = 3, readers: int = 4, keys_per_writer: int = 5
    ) -> None:
        self.bases, self.token = bases, token
        self.owned = {f"w{w}": [f"f{w}-{n}" for n in range(keys_per_writer)] for w in range(writers)}
        self.keys = [key for keys in self.owned.values() for key in keys]
        self.readers = [f"r{n}" for n in range(readers)]
        self.calls: list[Call] = []
        self.windows: list[Window] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.began = time.monotonic()

    def start(self) -> FaultRun:
        """Write every item once (each writer its own), then start the writers and readers."""
        for client, keys in self.owned.items():
            for key in keys:
                self._call(client, key, self.bases[0], "PUT", json.dumps({"by": client, "n": -1}).encode())
        assert all(call.ok for call in self.calls), [call for call in self.calls if not call.ok]
        for client, keys in self.owned.items():
            self._threads.append(threading.Thread(target=self._write_loop, args=(client, keys), daemon=True))
        for client in self.readers:
            self._threads.append(threading.Thread(target=self._read_loop, args=(client,), daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def window(self, name: str, bound: float, lag: float, early: float = 0.0, early_lag: float = 0.1) -> Window:
        """Open a fault window now; set its `end` when the fault and the recovery after it are over."""
        opened = Window(name, time.monotonic(), bound=bound, lag=lag, early=early, early_lag=early_lag)
        self.windows.append(opened)
        return opened

    def _call(self, client: str, key: str, base: str, method: str, body: bytes | None) -> None:
        started = time.monotonic()
        try:
            status, headers, payload = request(base, method, f"/items/{key}", body, self.token if body else None)
            answer = json.loads(payload) if payload else {}
        except (OSError, ValueError, http.client.HTTPException) as exc:  # a killed worker cuts an answer short
            status, headers, answer = 0, {}, {"error": f"no_answer ({type(exc).__name__})"}
        version = answer.get("version") if 200 <= status < 300 else None
        error = "" if version is not None else str(answer.get("error", "no_answer" if status == 0 else status))
        with self._lock:
            tier = str(headers.get("X-Cache", ""))
            self.calls.append(Call(client, key, base, started, time.monotonic(), status, version, error, tier))

    def _write_loop(self, client: str, keys: list[str]) -> None:
        rng = random.Random(client)
        for n in range(10**9):
            if self._stop.is_set():
                return
            body = json.dumps({"by": client, "n": n}).encode()
            self._call(client, rng.choice(keys), rng.choice(self.bases), "PUT", body)
            time.sleep(0.02)  # writes are the minority, as in a read-mostly cache

    def _read_loop(self, client: str) -> None:
        rng = random.Random(client)
        while not self._stop.is_set():
            self._call(client, rng.choice(self.keys), rng.choice(self.bases), "GET", None)

    def judge(self, committed: dict[str, int]) -> list[Verdict]:
        """Per window, then the healthy time: `committed` is each item's version in the database now."""
        with self._lock:
            calls = sorted(self.calls, key=lambda c: c.started)
        verdicts = {w.name: Verdict(w.name) for w in self.windows}
        healthy = Verdict("healthy")
        windows = {w.name: w for w in self.windows}

        def where(moment: float, finished: float | None = None) -> Verdict:
            """The window `moment` falls in; with `finished`: the last window the call overlapped."""
            last = moment if finished is None else finished
            inside = [w for w in self.windows if w.start <= last and moment < w.end]
            return verdicts[inside[-1].name] if inside else healthy

        def window_at(moment: float) -> Window:
            return windows.get(where(moment).name, Window("healthy", 0.0))

        writes = [c for c in calls if c.client in self.owned]
        reads = [c for c in calls if c.client not in self.owned]
        for call in calls:
            verdict = where(call.started, call.finished)  # a call in flight when a fault began counts in it
            is_write = call.client in self.owned
            verdict.writes += is_write
            verdict.reads += not is_write
            if not call.ok:
                verdict.write_failures += is_write
                verdict.read_failures += not is_write
                if len(verdict.examples) < 5:
                    offset = call.started - self.began
                    verdict.examples.append(
                        f"failed at {offset:.2f}s {call.client} {call.key} via {call.base}: {call.error}"
                    )
        _judge_commits(writes, committed, where)
        served = [c for c in calls if c.ok]  # a write's answer serves its version too
        acks = defaultdict(list)
        for call in sorted((c for c in writes if c.ok), key=lambda c: c.finished):
            acks[call.key].append(call)
        for read in reads:
            if read.ok:
                _judge_read(read, acks[read.key], window_at(read.started).bound, where(read.started))
        _judge_backwards(served, lambda moment: window_at(moment).lag_at(moment), where, self.began)
        return [*verdicts.values(), healthy]


def _judge_commits(writes: list[Call], committed: dict[str, int], where) -> None:
    """Count the unacknowledged commits of each item between its acknowledged versions."""
    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in writes:
        by_key[call.key].append(call)
    for key, calls in by_key.items():
        last, failed = None, []
        for call in [*calls, None]:
            if call is not None and not call.ok:
                failed.append(call)
                continue
            version = committed.get(key, 0) if call is None else call.version
            if last is not None and failed:
                unacked = version - last - (0 if call is None else 1)
                unknown = sum(f.error.startswith(UNKNOWN) for f in failed)
                verdict = where(failed[0].started)
                verdict.unknown_committed += min(unacked, unknown)
                if unacked > unknown:
                    verdict.committed_5xx += unacked - unknown
                    verdict.examples.append(f"{key}: {unacked} commits behind {[f.error for f in failed]}")
            last, failed = version, []


def _judge_read(read: Call, acks: list[Call], bound: float, verdict: Verdict) -> None:
    cut = bisect_left([a.finished for a in acks], read.started - bound)
    newer = [a for a in acks[:cut] if a.version > read.version]
    if newer:
        verdict.stale += 1
        if len(verdict.examples) < 5:
            first = min(newer, key=lambda a: a.finished)
            verdict.examples.append(
                f"stale {read.key} v{read.version} via {read.base} {read.started - first.finished:.2f}s "
                f"after v{first.version} was acknowledged"
            )


def _judge_backwards(served: list[Call], lag_at, where, began: float) -> None:
    """Reads older than a version served `lag` before they started: by the same client, or by anyone."""
    by_key: dict[str, list[Call]] = defaultdict(list)
    for call in served:
        by_key[call.key].append(call)
    for calls in by_key.values():
        by_finish = sorted(calls, key=lambda c: c.finished)
        finishes = [c.finished for c in by_finish]
        for call in calls:
            if call.client.startswith("w"):
                continue  # a writer's answer is judged as an acknowledgement (stale), not a read
            before = by_finish[: bisect_left(finishes, call.started - lag_at(call.started))]
            newer = [c for c in before if c.version > call.version]
            if not newer:
                continue
            verdict = where(call.started)
            verdict.backwards_any += 1
            own = [c for c in newer if c.client == call.client]
            verdict.backwards += bool(own)
            if len(verdict.examples) < 5:
                top = max(newer, key=lambda c: c.version)
                verdict.examples.append(
                    f"backwards {call.key} at {call.started - began:.2f}s: {call.client} got v{call.version} "
                    f"(X-Cache {call.tier or '?'}) via {call.base} after {top.client} got v{top.version} via "
                    f"{top.base} {call.started - top.finished:.2f}s before"
                )
