"""Slow clients for tests and bench/serving.py: connections that send part of a request and stall, and
ordinary requests timed meanwhile."""

from __future__ import annotations

import contextlib
import http.client
import resource
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

HALF_REQUEST_LINE = b"GET /health/live HT"
_PUT = b"PUT /items/stalled HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
UNFINISHED_BODIES = (  # whole heads whose bodies never finish arriving
    _PUT + b"Transfer-Encoding: chunked\r\n\r\n",  # no chunk yet
    _PUT + b'Transfer-Encoding: chunked\r\n\r\n10\r\n{"name": ',  # half a chunk
    _PUT + b"Expect: 100-continue\r\nContent-Length: 16\r\n\r\n",  # waits for 100 Continue, then sends nothing
    _PUT + b'Content-Length: 16\r\n\r\n{"name"',  # short of its Content-Length
)


def allow_open_files(needed: int) -> None:
    """Raise this process's soft limit on open files to `needed` (plus room) if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = needed + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        cap = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (cap, hard))


@contextlib.contextmanager
def stalled(
    port: int, count: int, payload: bytes | Sequence[bytes] = HALF_REQUEST_LINE
) -> Iterator[list[socket.socket]]:
    """`count` connections that each send `payload` (or the payloads in turn) and then nothing; closed by us
    on exit."""
    payloads = [payload] if isinstance(payload, bytes) else list(payload)
    allow_open_files(count * 2)
    socks = []
    try:
        for n in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(payloads[n % len(payloads)])
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def seconds_until_closed(socks: list[socket.socket], timeout: float) -> float | None:
    """Seconds until the server has closed every one of `socks` (EOF or reset), None if not all within
    `timeout`. The server may answer first (a 408 or 400): read until it closes."""
    started = time.monotonic()
    open_socks = set(socks)
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        while open_socks:
            remaining = started + timeout - time.monotonic()
            if remaining <= 0:
                return None
            for key, _ in selector.select(min(remaining, 1.0)):
                try:
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fileobj)
                    open_socks.discard(key.fileobj)  # type: ignore[arg-type]
    return time.monotonic() - started


@dataclass
class Latencies:
    seconds: list[float]  # of the requests that answered 200
    failures: int  # no 200 within the client's timeout

    def quantile(self, q: float) -> float:
        if len(self.seconds) < 2:
            return self.seconds[0] if self.seconds else float("nan")
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[round(q * 100) - 1]


def ordinary_requests(port: int, count: int, concurrency: int = 8, timeout: float = 5.0) -> Latencies:
    """`count` GET /health/live, each on a new connection, from `concurrency` threads."""
    seconds: list[float] = []
    failures = [0]
    lock = threading.Lock()
    per_thread = [count // concurrency + (1 if i < count % concurrency else 0) for i in range(concurrency)]

    def client(n: int) -> None:
        for _ in range(n):
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                conn.request("GET", "/health/live")
                ok = conn.getresponse().status == 200
            except OSError:
                ok = False
            finally:
                conn.close()
            with lock:
                if ok:
                    seconds.append(time.perf_counter() - started)
                else:
                    failures[0] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in per_thread]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return Latencies(sorted(seconds), failures[0])
