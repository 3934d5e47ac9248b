"""Slow clients cannot stall the service (buffering_worker.py): stalled connections cost no thread and are
closed after CLIENT_TIMEOUT, while bodies, keep-alive and pipelining are served as before."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import time

import pytest

from tests.integration.slow_clients import (
    HALF_REQUEST_LINE,
    UNFINISHED_BODIES,
    ordinary_requests,
    seconds_until_closed,
    stalled,
)
from tests.support import Gunicorn

CLIENT_TIMEOUT = 2.0
MARGIN = 8.0  # the worker looks for expired connections once a second; a busy machine is slower still


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {
        "REDIS_URL": "",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}",
        "CLIENT_TIMEOUT": str(CLIENT_TIMEOUT),
        "LOG_LEVEL": "WARNING",
        "ACCESS_LOG": "false",
    }


class _Reader:
    """Lets http.client read several responses from one buffered stream (pipelining, keep-alive)."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def makefile(self, mode: str) -> _Reader:  # what http.client.HTTPResponse calls
        return self

    def __getattr__(self, name: str):  # noqa: ANN204 - the file's readline, read, readinto, ...
        return getattr(self.file, name)

    def close(self) -> None:
        """A response read to its end closes its file; the next response needs it open."""

    def response(self) -> tuple[int, dict[str, str], bytes]:
        response = http.client.HTTPResponse(self)  # type: ignore[arg-type]
        response.begin()
        return response.status, dict(response.headers), response.read()


def connect(server: Gunicorn) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def put_request(item_id: str, body: bytes, extra: str = "") -> bytes:
    head = f"PUT /items/{item_id} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{extra}"
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


CHUNKED_PUT = (
    b"PUT /items/f HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def test_500_stalled_connections_leave_ordinary_requests_answered_and_are_closed(env):
    """The production start (2 workers x 4 threads) with 500 connections that sent half a request line, or a
    whole head and part of its body (chunked, behind `Expect: 100-continue`, short of its Content-Length)."""
    payloads = [HALF_REQUEST_LINE, *UNFINISHED_BODIES]
    with Gunicorn(env, workers=2) as server, stalled(server.port, 500, payloads) as socks:
        opened = time.monotonic()
        latencies = ordinary_requests(server.port, 200, concurrency=8, timeout=5.0)
        assert latencies.failures == 0 and len(latencies.seconds) == 200
        print(
            f"ordinary requests beside 500 stalled: p50 {latencies.quantile(0.5) * 1000:.1f} ms, "
            f"p99 {latencies.quantile(0.99) * 1000:.1f} ms"
        )
        assert latencies.quantile(0.99) < 1.0
        closed_after = seconds_until_closed(socks, timeout=CLIENT_TIMEOUT + MARGIN)
        assert closed_after is not None, "the server left stalled connections open"
        print(f"500 stalled connections closed {time.monotonic() - opened:.1f} s after they were opened")
        assert server.get("/health/live")[0] == 200
        assert server.get("/items/stalled")[0] == 404  # no part of a body was taken for a request


def test_stalled_heads_bodies_and_kept_alive_connections_hold_no_thread(env):
    """One worker with one thread: any stalled connection holding it (or the main loop) would stop every
    other request."""
    with Gunicorn({**env, "GUNICORN_THREADS": "1"}, workers=1) as server:
        kept_alive = []
        for _ in range(5):  # a whole request answered, then half of the next one
            sock = connect(server)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\n\r\n")
            assert _Reader(sock).response()[0] == 200
            sock.sendall(b"GET /health/li")
            kept_alive.append(sock)
        for _ in range(3):  # answered with Connection: close, then left open by a client that never closes
            sock = connect(server)
            sock.settimeout(1.0)  # gthread's close_graceful waited for that 2 s each, in its main loop
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            assert _Reader(sock).response()[0] == 200
            kept_alive.append(sock)
        half_body = put_request("slow", b'{"name": "slow"}')[:-6]
        with stalled(server.port, 5) as half_lines, stalled(server.port, 5, half_body) as half_bodies:
            latencies = ordinary_requests(server.port, 20, concurrency=4, timeout=5.0)
            assert latencies.failures == 0
            assert seconds_until_closed(half_lines + half_bodies + kept_alive, CLIENT_TIMEOUT + MARGIN) is not None
        assert server.get("/items/slow")[0] == 404  # the half body was never taken for a request
        with stalled(server.port, 3):  # a stopping worker does not wait its graceful_timeout (20 s) for them
            started = time.monotonic()
            server.stop()
            assert server.proc.returncode == 0 and time.monotonic() - started < CLIENT_TIMEOUT + MARGIN


def test_a_body_trickling_in_holds_no_thread_and_is_answered_408_after_the_client_timeout(env):
    """One thread; a chunked body arriving a byte every half second (gthread would give it a thread for as
    long as it lasts): other requests are served meanwhile, and at CLIENT_TIMEOUT the poller answers a JSON
    408 naming the setting and closes; nothing half-read is stored."""
    with Gunicorn({**env, "GUNICORN_THREADS": "1"}, workers=1) as server:
        sock = connect(server)
        sock.sendall(
            b"PUT /items/trickle HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        started, answered = time.monotonic(), b""
        sock.settimeout(0.5)
        while not answered and time.monotonic() - started < CLIENT_TIMEOUT + MARGIN:
            with contextlib.suppress(TimeoutError):
                answered = sock.recv(65536)
            if not answered:
                sock.sendall(b"1\r\n \r\n")  # one byte of body, then the next half a second later
                assert ordinary_requests(server.port, 1, concurrency=1, timeout=1.0).failures == 0
        assert answered.startswith(b"HTTP/1.1 408 "), answered
        assert CLIENT_TIMEOUT - 0.5 <= time.monotonic() - started < CLIENT_TIMEOUT + MARGIN
        got = json.loads(answered.partition(b"\r\n\r\n")[2])
        assert got["error"] == "request_timeout" and "CLIENT_TIMEOUT" in got["message"]
        sock.close()
        assert server.get("/items/trickle")[0] == 404


def test_closed_connections_are_counted_out_so_a_full_worker_accepts_again(env):
    """worker_connections 20: stalled connections fill the worker; once they are closed it serves again,
    twice over (a connection counted out twice, or never, would show by the second round)."""
    with Gunicorn({**env, "GUNICORN_CMD_ARGS": "--worker-connections 20"}, workers=1) as server:
        for _ in range(2):
            with stalled(server.port, 20) as socks:
                assert seconds_until_closed(socks, CLIENT_TIMEOUT + MARGIN) is not None
            latencies = ordinary_requests(server.port, 20, concurrency=4, timeout=5.0)
            assert latencies.failures == 0


def test_bodies_pipelining_and_keep_alive_are_served(env):
    with Gunicorn(env, workers=1) as server:
        sock = connect(server)
        reader = _Reader(sock)
        body = json.dumps({"name": "x" * 1000}).encode()
        sock.sendall(put_request("a", body)[:100])  # a body that arrives in two parts
        time.sleep(0.2)
        sock.sendall(put_request("a", body)[100:])
        assert reader.response()[0] == 201
        # Three requests in one write; the last one split in the middle of its head.
        pipelined = put_request("b", b'{"name": "b"}') + b"GET /items/a HTTP/1.1\r\nHost: t\r\n\r\nGET /items/b HT"
        sock.sendall(pipelined)
        assert reader.response()[0] == 201
        status, _, got = reader.response()
        assert status == 200 and json.loads(got)["name"] == "x" * 1000
        sock.sendall(b"TP/1.1\r\nHost: t\r\n\r\n")
        status, _, got = reader.response()
        assert status == 200 and json.loads(got)["name"] == "b"
        sock.close()

        chunked = connect(server)  # a chunked body in three writes, then a request pipelined behind it
        reader = _Reader(chunked)
        for part in (
            CHUNKED_PUT.replace(b"/items/f", b"/items/c") + b"7",
            b';ext=1\r\n{"name"\r\n6\r\n: "c"}\r',
            b"\n0\r\n\r\nGET /items/c HTTP/1.1\r\nHost: t\r\n\r\n",
        ):
            chunked.sendall(part)
            time.sleep(0.1)
        assert reader.response()[0] == 201
        status, _, got = reader.response()
        assert status == 200 and json.loads(got)["name"] == "c"
        chunked.close()

        expect = connect(server)  # the client waits for "100 Continue" before it sends the body
        body = b'{"name": "d"}'
        expect.sendall(put_request("d", body, extra="Expect: 100-continue\r\n")[: -len(body)])
        reader = _Reader(expect)
        assert reader.file.readline().startswith(b"HTTP/1.1 100") and reader.file.readline() == b"\r\n"
        expect.sendall(body)
        assert reader.file.readline().startswith(b"HTTP/1.1 201")  # the final answer: no second 100
        expect.close()

        huge_head = connect(server)
        huge_head.sendall(b"GET /health/live HTTP/1.1\r\nX-Big: " + b"a" * 40_000)
        status, _, got = _Reader(huge_head).response()
        assert status == 431 and json.loads(got)["error"] == "request_header_fields_too_large"
        huge_head.close()

        big = server.request("PUT", "/items/e", b"{" + b" " * 70_000 + b"}", {"Content-Type": "application/json"})
        assert big[0] == 413 and json.loads(big[2])["error"]
        assert [server.get(f"/items/{i}")[0] for i in "abcde"] == [200, 200, 200, 200, 404]


REFUSED_AT_ONCE = {  # request bytes: status, error (the poller answers; no thread or app sees them)
    "chunk size -1": (CHUNKED_PUT + b"-1\r\n", 400, "bad_request"),
    "chunk size 0x2": (CHUNKED_PUT + b"0x2\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    "chunk size '2 '": (CHUNKED_PUT + b"2 \r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    "bare LF in a chunk extension": (CHUNKED_PUT + b"2;a\nb\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    "no CRLF after chunk data": (CHUNKED_PUT + b"2\r\n{}0\r\n\r\n", 400, "bad_request"),
    "Content-Length in a trailer": (CHUNKED_PUT + b"2\r\n{}\r\n0\r\nContent-Length: 5\r\n\r\n", 400, "bad_request"),
    "bare LF line ends": (b"GET /health/live HTTP/1.1\nHost: t\n\n", 400, "bad_request"),
    "Content-Length over the cap": (put_request("f", b"")[:-5] + b"70000\r\n\r\n", 413, "request_entity_too_large"),
    "chunked body over the cap": (CHUNKED_PUT + b"10001\r\n", 413, "request_entity_too_large"),
    "100-continue, over the cap": (
        put_request("f", b"", extra="Expect: 100-continue\r\n")[:-5] + b"70000\r\n\r\n",
        413,
        "request_entity_too_large",
    ),
    "another expectation": (put_request("f", b"{}", extra="Expect: tea\r\n"), 417, "expectation_failed"),
    "gzip transfer coding": (CHUNKED_PUT.replace(b"chunked", b"gzip, chunked"), 501, "not_implemented"),
}


def test_malformed_framing_and_bodies_over_the_cap_are_answered_at_once_in_json(env):
    """Each answered well before CLIENT_TIMEOUT, without its body (a 100 Continue neither), then closed; no
    traceback logged, and the worker's only thread goes on serving."""
    with Gunicorn({**env, "GUNICORN_THREADS": "1", "LOG_LEVEL": "INFO"}, workers=1) as server:
        for name, (request, status, error) in REFUSED_AT_ONCE.items():
            sock = connect(server)
            sock.settimeout(CLIENT_TIMEOUT / 2)  # an answer only at CLIENT_TIMEOUT would be a 408 anyway
            sock.sendall(request)
            reader = _Reader(sock)
            assert reader.file.readline().startswith(f"HTTP/1.1 {status} ".encode()), name
            headers = http.client.parse_headers(reader.file)
            got = json.loads(reader.file.read(int(headers["Content-Length"])))
            assert got["error"] == error and got["message"], name
            assert headers["Connection"] == "close" and reader.file.read() == b"", name  # then closed
            sock.close()
            assert server.get("/health/live")[0] == 200, name
        assert server.get("/items/f")[0] == 404
        assert "Traceback" not in server.output() and '"status":500' not in server.output()
