"""A gthread worker whose threads never wait for a slow client (gunicorn.conf.py `worker_class`).

Why: gunicorn's gthread worker gives a new or kept-alive connection to a thread, which then blocks in
recv() until the request has arrived. A client that sends half a request and stops (slowloris) holds that
thread; ten of them stopped a 2-worker x 4-thread service.

Here the worker's main loop (the poller, which already waits on every idle connection) reads each request
without blocking, into a buffer of its connection: its head and its body, Content-Length or chunked, of at
most MAX_ITEM_BYTES. request_framing.py judges where the request ends (RFC 9112, strictly) and what is
refused at once, with a JSON answer: a bare LF, malformed chunk framing, a body over the cap, an unknown
transfer coding or expectation. `Expect: 100-continue` is answered here. Only a request that has arrived
whole is given to a thread, whose parser reads nothing but the buffer: no thread ever waits on a client.
A request that has not arrived within CLIENT_TIMEOUT of its connection's first chance to send it is
answered 408 (closed silently if it never began). A connection refused or not kept alive is closed
gracefully by the poller: its write side at once, its read side after at most LINGER_SECONDS or
LINGER_BYTES more from the client (so the last answer is not lost to a reset; gthread would wait for that
in its main loop). A stalled connection costs a file descriptor and its buffer, never a thread.

gunicorn's accounting is kept: every connection counts in `nr_conns` until closed, so at most
`worker_connections` per worker (stalled ones included); keep-alive, pipelining and graceful shutdown
are gthread's own. Plain HTTP/1.1 only: TLS ends at the router in front of the service.
"""

from __future__ import annotations

import contextlib
import errno
import selectors
import socket
import time
from concurrent.futures import Future
from functools import partial
from typing import Any

from gunicorn import util
from gunicorn.workers.gthread import TConn, ThreadWorker

from config import load_config
from request_framing import CONTINUE, Limits, Progress, Refusal, RequestFraming, timed_out

RECV_BYTES = 64 * 1024
LINGER_SECONDS = 2.0  # gunicorn's close_graceful waits as long
LINGER_BYTES = 64 * 1024


def write_json_error(sock: socket.socket, status: int, reason: str, message: str) -> None:
    """gunicorn's answer to what its own parser refuses (a request line or header too long, a bad method,
    version or header): in JSON, like every other refusal, rather than gunicorn's HTML page."""
    error = reason.lower().replace(" ", "_")
    util.write_nonblock(sock, Refusal(status, reason, error, message or reason).response())


util.write_error = write_json_error  # gunicorn's handle_error looks it up there on every call


def accept_connection(listener: socket.socket) -> tuple[socket.socket, Any] | None:
    """listener.accept(), or None when there was none after all (another worker took it: gthread's rule)."""
    try:
        return listener.accept()
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
            raise
        return None


class BufferOnly:
    """The socket as the thread's parser reads it: the poller has put the whole request in the parser's
    buffer, so a read past it would wait on the client; it fails at once instead (and the connection closes)."""

    def recv(self, size: int) -> bytes:
        raise TimeoutError("the thread read past the request the poller received")


class BufferedConn(TConn):
    """A connection whose request bytes the poller reads; the thread's parser gets them, and only them."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any, timeout: float) -> None:
        super().__init__(cfg, sock, client, server)
        self.received = bytearray()  # read by the poller, not yet given to the parser
        self.framing: RequestFraming | None = None  # the request being received
        self.deadline = 0.0  # when the poller gives up on it
        self.drained = 0  # bytes read and discarded after a refusal
        self.socket_timeout = timeout
        self.data_ready = True  # gthread's own wait for a first byte is the poller's job here

    def init(self) -> None:
        """In the thread, before each request: the buffered request is all its parser reads; the response's
        writes wait at most CLIENT_TIMEOUT."""
        super().init()  # the parser is made once; the socket is made blocking (no timeout) every time
        self.sock.settimeout(self.socket_timeout)
        self.parser.unreader.sock = BufferOnly()
        self.parser.unreader.unread(bytes(self.received))
        self.received.clear()


class BufferingWorker(ThreadWorker):
    """gthread whose poller reads requests; see the module docstring."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        config = load_config(default_port=8000)  # checked by the master already (gunicorn.conf.py)
        self.client_timeout = config.client_timeout
        self.limits = Limits(body_bytes=config.max_item_bytes, line_bytes=self.cfg.limit_request_field_size or 8190)
        # Oldest deadline first (insertion order; one timeout each): requests arriving, refused connections.
        self.reading: dict[BufferedConn, None] = {}
        self.lingering: dict[BufferedConn, None] = {}

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        super().check_config(cfg, log)
        if cfg.is_ssl:  # the poller reads raw bytes: it would read TLS records as a request
            raise RuntimeError("BufferingWorker serves plain HTTP: end TLS at the router, or use gthread")

    def accept(self, listener: socket.socket) -> None:
        accepted = accept_connection(listener)
        if accepted is None:
            return
        sock, client = accepted
        self.nr_conns += 1
        self.start_reading(BufferedConn(self.cfg, sock, client, listener.getsockname(), self.client_timeout))

    def on_client_socket_readable(self, conn: BufferedConn, client: socket.socket) -> None:
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
        """Wait in the poller, at most CLIENT_TIMEOUT, for the connection's next request to arrive whole."""
        conn.sock.setblocking(False)
        conn.framing = RequestFraming(self.limits)
        verdict = self.judge(conn)
        if verdict is not Progress.PARTIAL:
            self.settle(conn, verdict)
            return
        conn.deadline = time.monotonic() + self.client_timeout
        self.reading[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_request_bytes, conn))

    def on_request_bytes(self, conn: BufferedConn, sock: socket.socket) -> None:
        if not self.receive(conn):
            self.stop_reading(conn)
            self.drop(conn)
            return
        verdict = self.judge(conn)
        if verdict is not Progress.PARTIAL:
            self.stop_reading(conn)
            self.settle(conn, verdict)

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

    @staticmethod
    def judge(conn: BufferedConn) -> Progress | Refusal:
        """How far the request has arrived; a client waiting for `100 Continue` gets it (once) here."""
        assert conn.framing is not None
        verdict = conn.framing.judge(conn.received)
        if verdict is Progress.CONTINUE:
            with contextlib.suppress(OSError):  # a full send buffer: the client sends its body anyway, or times out
                conn.sock.send(CONTINUE)
            return Progress.PARTIAL
        return verdict

    def settle(self, conn: BufferedConn, verdict: Progress | Refusal) -> None:
        """A thread serves a request that has arrived whole; a refused one is answered here."""
        if isinstance(verdict, Refusal):
            self.refuse(conn, verdict)
        else:
            self.enqueue_req(conn)

    def handle_request(self, req: Any, conn: BufferedConn) -> Any:
        """gthread's, less its `100 Continue`: the poller has sent it already, and the body has arrived."""
        req._expected_100_continue = False
        return super().handle_request(req, conn)

    def refuse(self, conn: BufferedConn, refusal: Refusal) -> None:
        with contextlib.suppress(OSError):
            conn.sock.send(refusal.response())
        self.close_gracefully(conn)

    def close_gracefully(self, conn: BufferedConn) -> None:
        """Close the write side; read and discard what the client still sends (at most LINGER_BYTES,
        LINGER_SECONDS), then close: closing with unread bytes would reset the last answer away. In the
        poller, not in gunicorn's close_graceful, which waits (blocking the poller) for the client to close."""
        try:
            conn.sock.setblocking(False)
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.drop(conn)
            return
        conn.received.clear()
        conn.deadline = time.monotonic() + LINGER_SECONDS
        self.lingering[conn] = None
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self.on_lingering_bytes, conn))

    def on_lingering_bytes(self, conn: BufferedConn, sock: socket.socket) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained > LINGER_BYTES:
            self.stop_lingering(conn)

    def drop(self, conn: BufferedConn) -> None:
        """Close a connection no thread has: it stops counting towards worker_connections."""
        self.nr_conns -= 1
        conn.close()

    def stop_reading(self, conn: BufferedConn) -> None:
        del self.reading[conn]
        self.poller.unregister(conn.sock)

    def stop_lingering(self, conn: BufferedConn) -> None:
        del self.lingering[conn]
        self.poller.unregister(conn.sock)
        self.drop(conn)

    def finish_request(self, conn: BufferedConn, fs: Future[bool]) -> None:
        """Pipelined bytes the parser read past the request go back to the poller with the connection
        (gthread would give them to a thread); a connection not kept alive is closed gracefully."""
        keep = not fs.cancelled() and fs.exception() is None and fs.result() is True
        if keep and conn.parser.unreader.buf.getvalue():
            conn.received += conn.parser.unreader.take_buffered()
            self.read_request(conn)
        elif keep:
            super().finish_request(conn, fs)
        else:
            self.close_gracefully(conn)

    def murder_pending(self) -> None:
        """Also end, by their deadline (checked every second), requests that have not arrived (408, or closed
        if nothing of one came) and refused connections still lingering."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading and (conn := next(iter(self.reading))).deadline <= now:
            self.stop_reading(conn)
            if conn.received:
                self.refuse(conn, timed_out(self.client_timeout))
            else:
                self.drop(conn)
        while self.lingering and (conn := next(iter(self.lingering))).deadline <= now:
            self.stop_lingering(conn)
