"""A PostgreSQL-aware TcpProxy for fault injection: it can lose the answer to a COMMIT the server executed."""

from __future__ import annotations

import socket
import threading

from tests.support import TcpProxy

SSL_REQUEST, GSSENC_REQUEST = 80877103, 80877104  # start-up packets the server answers with one byte


class ClientMessages:
    """Frames what a client sends to PostgreSQL: untyped start-up packets (SSLRequest, GSSENCRequest, then
    the StartupMessage), then typed messages (1 byte type, int32 length counting itself, body)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.started = False

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The typed messages `data` completes, as (type, body)."""
        self.buffer += data
        messages: list[tuple[bytes, bytes]] = []
        while True:
            if not self.started:
                if len(self.buffer) < 8 or len(self.buffer) < (length := int.from_bytes(self.buffer[:4], "big")):
                    return messages
                code = int.from_bytes(self.buffer[4:8], "big")
                self.buffer = self.buffer[length:]
                self.started = code not in (SSL_REQUEST, GSSENC_REQUEST)
                continue
            if len(self.buffer) < 5 or len(self.buffer) < 1 + (length := int.from_bytes(self.buffer[1:5], "big")):
                return messages
            messages.append((self.buffer[:1], self.buffer[5 : 1 + length]))
            self.buffer = self.buffer[1 + length :]


def is_commit(kind: bytes, body: bytes) -> bool:
    """A simple Query ('Q') ending with COMMIT: how psycopg sends `conn.execute(b"COMMIT")`, and the store
    its batched statements (db/postgres.py's _Batched: "...; COMMIT")."""
    last = body.rstrip(b"\0").strip().rstrip(b";").rsplit(b";", 1)[-1].strip().upper()
    return kind == b"Q" and last in (b"COMMIT", b"END")


class PgProxy(TcpProxy):
    """A TcpProxy in front of PostgreSQL (cut, restore, pause as TcpProxy) that can also lose COMMIT's
    answer: after `drop_commit_reply(marker)`, the next COMMIT of a transaction that sent `marker` (say, an
    item id as a statement's parameter) is passed to the server, which commits it, and when the server's
    answer arrives the proxy closes both ends instead of passing it on: the client cannot know whether
    its transaction committed. Other connections' COMMITs (the change follower's) pass. Needs a connection
    without TLS (`sslmode=disable`): it reads the client's messages."""

    def __init__(self, upstream_port: int, delay: float = 0.0) -> None:
        self._arm_lock = threading.Lock()
        self._markers: list[bytes] = []
        self.commits_seen = 0
        self.replies_dropped = 0
        super().__init__(upstream_port, delay)

    @property
    def url(self) -> str:
        raise AttributeError("PgProxy has no redis URL: route a database URL with tests.support.with_port")

    def drop_commit_reply(self, marker: bytes) -> None:
        with self._arm_lock:
            self._markers.append(marker)

    def keep_commit_replies(self) -> None:
        """Forget the markers not yet met: every answer passes again."""
        with self._arm_lock:
            self._markers.clear()

    def _take_marker(self, sent: bytes) -> bool:
        """A COMMIT whose transaction sent `sent`: should its answer be lost (once per marker)?"""
        with self._arm_lock:
            self.commits_seen += 1
            for marker in self._markers:
                if marker in sent:
                    self._markers.remove(marker)
                    return True
            return False

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        frames = ClientMessages()
        lose_reply = threading.Event()
        transaction: list[bytes] = []  # what the client sent since its last COMMIT

        def to_server(data: bytes) -> bool:
            for kind, body in frames.feed(data):
                transaction.append(body)
                if not is_commit(kind, body):
                    continue
                if self._take_marker(b"".join(transaction)):
                    lose_reply.set()  # before the COMMIT is forwarded, so its answer finds it set
                transaction.clear()
            return True

        def to_client(data: bytes) -> bool:
            if lose_reply.is_set():
                with self._arm_lock:
                    self.replies_dropped += 1
                return False
            return True

        threading.Thread(target=self._pump, args=(client, upstream, 0.0, to_server), daemon=True).start()
        threading.Thread(target=self._pump, args=(upstream, client, self.delay, to_client), daemon=True).start()
