"""A gthread worker whose threads never wait for a slow client (gunicorn.conf.py `worker_class`).

Why: gunicorn's gthread worker gives a new or kept-alive connection to a thread, which then blocks in
recv() with no timeout until the request has arrived. A client that sends half a request line and stops
(slowloris) holds that thread for good; ten of them stopped a 2-worker x 4-thread service.

Here the worker's main loop (the poller, which already waits on every idle connection) reads the request
head and a Content-Length body of at most MAX_ITEM_BYTES without blocking, into a buffer of its
connection, and gives a thread only a request that has arrived whole. A connection that has not sent
its request within CLIENT_TIMEOUT seconds of its first chance to is closed; a stalled one costs a file
descriptor and its buffer, never a thread. What the buffer does not hold (a chunked body, one over
MAX_ITEM_BYTES, one behind `Expect: 100-continue`) is read by the thread within CLIENT_TIMEOUT of its
taking the request, in all (not per read: a body trickling in a byte at a time must not hold a thread
either), so no thread waits on a client without a deadline; a head over HEAD_BYTES is refused.

gunicorn's accounting is kept: every connection counts in `nr_conns` until closed, so at most
`worker_connections` per worker (stalled ones included); keep-alive, pipelining and graceful shutdown
are gthread's own. Plain HTTP/1.1 only: TLS ends at the router in front of the service.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import json
import selectors
import socket
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import TConn, ThreadWorker

from config import load_config

HEAD_BYTES = 32 * 1024  # the largest request head (nginx's default limit too)
RECV_BYTES = 64 * 1024
_REFUSAL = json.dumps(
    {"error": "request_header_fields_too_large", "message": f"the request head is over {HEAD_BYTES} bytes"}
).encode()
HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: application/json\r\nConnection: close\r\n"
    + f"Content-Length: {len(_REFUSAL)}\r\n\r\n".encode()
    + _REFUSAL
)


def body_length(head: bytes) -> int | None:
    """The body size a request head announces, or None when the poller should not wait for the body:
    chunked, `Expect: 100-continue` (the client waits for our 100), or a Content-Length it cannot read.
    Only decides when a thread takes over; gunicorn's parser still parses (and judges) every byte."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name in (b"transfer-encoding", b"expect"):
            return None
        if name == b"content-length":
            if not value.strip().isdigit():
                return None
            length = int(value)
    return length


class Arrival(enum.Enum):
    """How far a request has arrived in the poller's buffer."""

    PARTIAL = "wait for more bytes"
    READY = "a thread may take it: the head and the body it buffers are here; the thread reads the rest"
    HEAD_TOO_LARGE = "no request head is that large: answer 431 and close"


def arrival(received: bytes | bytearray, body_bytes: int) -> Arrival:
    """Whether the request in `received` has arrived: its head and a body of at most `body_bytes`
    (a larger or chunked body, or one behind `Expect: 100-continue`, is the thread's to read)."""
    end = received.find(b"\r\n\r\n")
    if end < 0:
        return Arrival.HEAD_TOO_LARGE if len(received) > HEAD_BYTES else Arrival.PARTIAL
    length = body_length(bytes(received[:end]))
    if length is None or length > body_bytes or len(received) >= end + 4 + length:
        return Arrival.READY
    return Arrival.PARTIAL


def accept_connection(listener: socket.socket) -> tuple[socket.socket, Any] | None:
    """listener.accept(), or None when there was none after all (another worker took it: gthread's rule)."""
    try:
        return listener.accept()
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
            raise
        return None


class ReadDeadline:
    """The socket as the thread's parser reads it: every recv waits at most until one deadline, so the
    whole of what the thread reads (a chunked body, say) takes at most the client timeout."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock, self.deadline = sock, deadline

    def recv(self, size: int) -> bytes:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the client did not send its request within CLIENT_TIMEOUT")
        self.sock.settimeout(left)
        return self.sock.recv(size)


class BufferedConn(TConn):
    """A connection whose request bytes the poller reads; the thread's parser gets them first."""

    def __init__(self, cfg, sock, client, server, timeout: float) -> None:
        super().__init__(cfg, sock, client, server)
        self.received = bytearray()  # read by the poller, not yet given to the parser
        self.deadline = 0.0  # when the poller closes it if the request has not arrived
        self.socket_timeout = timeout
        self.data_ready = True  # gthread's own wait for a first byte is the poller's job here

    def init(self) -> None:
        """In the thread, before each request: blocking with a timeout, the buffered bytes unread first."""
        super().init()  # the parser is made once; the socket is made blocking (no timeout) every time
        self.sock.settimeout(self.socket_timeout)
        self.parser.unreader.sock = ReadDeadline(self.sock, time.monotonic() + self.socket_timeout)
        self.parser.unreader.unread(bytes(self.received))
        self.received.clear()


class BufferingWorker(ThreadWorker):
    """gthread whose poller reads requests; see the module docstring."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        config = load_config(default_port=8000)  # checked by the master already (gunicorn.conf.py)
        self.client_timeout = config.client_timeout
        self.body_bytes = config.max_item_bytes  # the app answers a larger body 413 without reading it
        self.reading: dict[BufferedConn, None] = {}  # oldest deadline first (insertion order)

    @classmethod
    def check_config(cls, cfg, log) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl:  # the poller reads raw bytes: it would read TLS records as a request
            raise RuntimeError("BufferingWorker serves plain HTTP: end TLS at the router, or use gthread")

    def accept(self, listener) -> None:
        accepted = accept_connection(listener)
        if accepted is None:
            return
        sock, client = accepted
        self.nr_conns += 1
        self.start_reading(BufferedConn(self.cfg, sock, client, listener.getsockname(), self.client_timeout))

    def on_client_socket_readable(self, conn: BufferedConn, client) -> None:
        """A kept-alive connection has a new request coming: the poller reads it, not a thread."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self.start_reading(conn)

    def start_reading(self, conn: BufferedConn) -> None:
        """Read what has arrived right away (usually the whole request: no second trip through the poller)."""
        if self.receive(conn):
            self.read_request(conn)
        else:
            self.drop(conn)

    def read_request(self, conn: BufferedConn) -> None:
        """Wait in the poller, at most CLIENT_TIMEOUT, for the connection's next request to arrive."""
        conn.sock.setblocking(False)
        state = arrival(conn.received, self.body_bytes)
        if state is not Arrival.PARTIAL:
            self.hand_over(conn, state)
            return
        conn.deadline = time.monotonic() + self.client_timeout
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, conn))

    def on_request_bytes(self, conn: BufferedConn, sock) -> None:
        if not self.receive(conn):
            self.stop_reading(conn)
            self.drop(conn)
            return
        state = arrival(conn.received, self.body_bytes)
        if state is not Arrival.PARTIAL:
            self.stop_reading(conn)
            self.hand_over(conn, state)

    @staticmethod
    def receive(conn: BufferedConn) -> bool:
        """Add what has arrived to the connection's buffer, without waiting; False: the client closed."""
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            return False  # reset by the client
        conn.received += data
        return bool(data)

    def hand_over(self, conn: BufferedConn, state: Arrival) -> None:
        """A thread serves an arrived request; a head too large is refused here."""
        if state is Arrival.READY:
            self.enqueue_req(conn)
            return
        with contextlib.suppress(OSError):
            conn.sock.send(HEAD_TOO_LARGE)
        self.drop(conn)

    def drop(self, conn: BufferedConn) -> None:
        """Close a connection no thread has: it stops counting towards worker_connections."""
        self.nr_conns -= 1
        conn.close()

    def stop_reading(self, conn: BufferedConn) -> None:
        del self.reading[conn]
        self.poller.unregister(conn.sock)

    def finish_request(self, conn: BufferedConn, fs) -> None:
        """Pipelined bytes the parser read past the request go back to the poller with the connection
        (gthread would give them to a thread, which would block on the rest of a partial request)."""
        keep = not fs.cancelled() and fs.exception() is None and fs.result() is True
        if keep and conn.parser.unreader.buf.getvalue():
            conn.received += conn.parser.unreader.take_buffered()
            self.read_request(conn)
            return
        super().finish_request(conn, fs)

    def murder_pending(self) -> None:
        """Also close connections whose request has not arrived by their deadline (called every second)."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading:
            conn = next(iter(self.reading))
            if conn.deadline > now:
                break
            self.stop_reading(conn)
            self.drop(conn)
