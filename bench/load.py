"""Load generation and measurement: wrk when installed (a Lua script for mixed workloads), a small
Python generator otherwise; server CPU seconds per request from /proc."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

LUA = Path(__file__).resolve().parent / "lua"
# After split_cpus: where wrk runs (every CPU but the servers' one).
_load_cpus: set[int] | None = None


def split_cpus() -> str | None:
    """Give this process, and every server it starts from now on, one CPU, and wrk the others: wrk then
    takes no CPU from the servers, and whichever worker holds most of wrk's connections has the servers'
    whole CPU. Shared, a round's rate moved by up to 3x with where wrk ran and with a worker that wrk's
    connections happened to favour saturating one CPU while the other idled. Every server shares that CPU
    with the idle ones (their timers and background threads, about 1% of it each): the same share in every
    measurement, so ratios measured in one run do not move with it. A description for the report, or None
    on a one-CPU machine, without wrk (the Python load generator runs in this process) or without taskset."""
    global _load_cpus
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or not shutil.which("wrk") or not shutil.which("taskset"):
        return None
    os.sched_setaffinity(0, {cpus[0]})
    _load_cpus = set(cpus[1:])
    return f"the servers (and Redis) on CPU {cpus[0]}, wrk on CPU {','.join(map(str, cpus[1:]))}"


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    cpu_us_per_request: float = 0.0


class Measured(Protocol):
    name: str
    results: list[Result]
    ratios: list[float]


M = TypeVar("M", bound=Measured)


def run_round(number: int, plan: Sequence[M], load: Callable[[M], Result]) -> None:
    """One round: each scenario loaded in turn, its rate also kept as a ratio to the first one's (the
    baseline) in this same round, and printed as it ends."""
    baseline = None
    for scenario in plan:
        result = load(scenario)
        scenario.results.append(result)
        baseline = baseline or result.rps
        scenario.ratios.append(result.rps / baseline)
        print(
            f"round {number} {scenario.name}: {result.rps:.0f} req/s, p99 {result.p99_ms:.2f} ms, "
            f"{result.cpu_us_per_request:.0f} us CPU/req, errors {result.errors}",
            flush=True,
        )


def median_cells(results: list[Result], ratios: list[float]) -> str:
    """Medians over rounds as table cells: req/s | ratio to the baseline | p50 ms | p99 ms | server CPU us/req."""

    def med(attr: str) -> float:
        return statistics.median(getattr(r, attr) for r in results)

    return (
        f"{med('rps'):,.0f} | {statistics.median(ratios):.2f} | {med('p50_ms'):.2f} | {med('p99_ms'):.2f} | "
        f"{med('cpu_us_per_request'):.0f}"
    )


def _ms(text: str) -> float:
    """wrk's "812.00us", "3.10ms", "1.02s", "2.00m" in milliseconds."""
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def wrk(
    url: str, seconds: float, connections: int, script: str | None = None, env: dict | None = None, threads: int = 1
) -> Result:
    args = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency", url]
    if script:
        args += ["-s", str(LUA / script)]
    if _load_cpus:
        args = ["taskset", "-c", ",".join(map(str, sorted(_load_cpus))), *args]
    out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 30, env={**os.environ, **(env or {})})
    text = out.stdout
    if "Latency Distribution" not in text:
        raise RuntimeError(f"wrk failed: {out.stdout[-500:]} {out.stderr[-500:]}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    failed = int(errors.group(1)) if errors else 0
    failed += sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    return Result(rps, p50, p99, total, failed)


def python_load(url: str, seconds: float, connections: int, method: str = "GET", body: bytes | None = None) -> Result:
    """Keep-alive requests (GETs, or `method` with `body`) from `connections` threads: a fallback when wrk is
    missing (it measures less)."""
    host, port_path = url.removeprefix("http://").split(":", 1)
    port, path = port_path.split("/", 1)
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        mine = []
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                conn.request(method, "/" + path, body, {"Content-Type": "application/json"} if body else {})
                response = conn.getresponse()
                response.read()
                ok = response.status < 400
            except OSError:
                conn = http.client.HTTPConnection(host, int(port), timeout=10)
                ok = False
            mine.append(time.perf_counter() - started)
            if not ok:
                with lock:
                    errors[0] += 1
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    n = len(latencies)
    return Result(n / seconds, latencies[n // 2] * 1000, latencies[int(n * 0.99)] * 1000, n, errors[0])


@dataclass(frozen=True)
class Write:
    """A request with a body, for the Python fallback; wrk sends the same from `script`."""

    method: str
    body: bytes


def measure(
    url: str,
    seconds: float,
    connections: int = 16,
    script: str | None = None,
    pids: list[int] = (),
    threads: int = 1,
    write: Write | None = None,
) -> Result:
    """Load `url` for `seconds` (wrk with `threads` threads); with `pids`, also the server CPU they used per
    request."""
    before = cpu_seconds(pids)
    if shutil.which("wrk"):
        result = wrk(url, seconds, connections, script, threads=threads)
    else:
        if script and write is None:
            raise SystemExit("mixed workloads need wrk (apt-get install wrk)")
        result = python_load(url, seconds, connections, *((write.method, write.body) if write else ()))
    used = cpu_seconds(pids) - before
    result.cpu_us_per_request = used / max(result.requests, 1) * 1e6
    return result


def idle_rate(pids: list[int], seconds: float = 1.0) -> float:
    """The CPUs these processes use between requests (timers, background threads), over `seconds`."""
    before = cpu_seconds(pids)
    time.sleep(seconds)
    return (cpu_seconds(pids) - before) / seconds


def settle(pids: list[int], idle: float, timeout: float = 15.0) -> None:
    """Wait until these processes use no more CPU than `idle` (their idle_rate) and 3% of one, for at most
    `timeout` seconds: a write round leaves work behind (the change follower applying thousands of changes),
    and on a shared CPU the next measurement would pay for it."""
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2:  # two quiet samples in a row: one 0.25 s sample is only 0.04 CPU fine (10 ms ticks)
        if time.monotonic() >= deadline:
            print(f"servers still busy after {timeout:g} s: measuring anyway", flush=True)
            return
        quiet = quiet + 1 if idle_rate(pids, 0.25) <= idle + 0.03 else 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (and of their reaped children), from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += sum(int(v) for v in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (gunicorn's master and workers)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return [pid, *children]
