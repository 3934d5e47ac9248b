"""The embedded Redis used when REDIS_URL is unset: fakeredis, for a demo or a laptop, never production.

Under gunicorn (and `python app.py`), every worker of every default instance on this machine must see the
SAME data, so the master finds or starts `python -m cache.embedded` (a fakeredis server; cache/embedded/share.py
says how instances share it) before forking and hands its URL to the workers through REDIS_URL. It runs in a
process of its own rather than a thread of the master: threads in a process that forks can leave locks held
in the children. In-process (`client()`): tests and tools.

Who may talk to it: the server listens on a unix socket (0600) in a fresh 0700 directory of its own, never
on TCP, so only processes of the service's user can connect; the kernel checks that, where a password
would rely on fakeredis, which accepts every command before AUTH. Scripts run sandboxed, in the server and
in `client()` alike (cache/embedded/lua_sandbox.py).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import fakeredis
import redis

from cache.embedded import lua_sandbox

logger = logging.getLogger(__name__)

WARNING = (
    "REDIS_URL is not set: using an embedded in-memory Redis (fakeredis). "
    "Fine to try the service; not for production: set REDIS_URL."
)

MARKER_KEY = "item-cache:embedded-server"  # the server holds its token here: "it is ours and it is alive"
POLL_SECONDS = 0.2
_server: fakeredis.FakeServer | None = None
_server_lock = threading.Lock()


def client() -> redis.Redis:
    """A client of this process's in-memory server (created on first use, shared by all callers)."""
    global _server
    with _server_lock:
        if _server is None:
            logger.warning(WARNING)
            lua_sandbox.install()
            _server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_server, protocol=2)


def start_server(own_file: Path, shared_file: Path) -> tuple[str, str, int]:
    """Start the server in a process of its own (socket path, token, pid). It lives while any process holds a
    shared lock on `own_file` (the file that becomes `shared_file`: cache/embedded/share.py), not with us."""
    # It has no metrics to report: without the directory it writes no metric files, whose live gauges
    # (0 for "listener subscribed") would otherwise count as a worker's.
    env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cache.embedded", str(own_file), str(shared_file)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=Path(__file__).resolve().parents[2],  # the project's folder: where `cache` is found
        start_new_session=True,  # Ctrl-C on the instance that started it must not stop it for the others
    )
    assert proc.stdout is not None
    words = proc.stdout.readline().decode().split()  # the child prints its socket and token once it listens
    proc.stdout.close()
    if len(words) != 2 or not words[0].startswith("/"):
        proc.kill()
        raise RuntimeError(f"embedded Redis did not start (said {' '.join(words)!r})")
    return words[0], words[1], proc.pid


class UnixFakeServer(fakeredis.TcpFakeServer):
    """fakeredis' server on a unix socket. A unix peer has no address, and fakeredis keeps one connection
    state per address: each connection gets a number of its own as its address instead."""

    address_family = socket.AF_UNIX

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.RequestHandlerClass(request, ("unix", next(self.client_ids)), self)  # type: ignore[arg-type]


def listen(directory: str) -> UnixFakeServer:
    """A sandboxed server listening on `directory`/redis.sock, readable and writable by this user only."""
    lua_sandbox.install()
    path = os.path.join(directory, "redis.sock")
    umask = os.umask(0o177)  # the socket is created 0600, never briefly open to others
    try:
        server = UnixFakeServer(path, server_type="redis")  # type: ignore[arg-type]
    finally:
        os.umask(umask)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve(own_file: str, shared_file: str) -> None:
    """Serve until nobody holds a shared lock on our file (or SIGTERM); remove the file if it is still ours."""
    import fcntl  # here: the in-process client() must import on any platform

    fd = os.open(own_file, os.O_RDONLY)  # our own open file: its exclusive lock conflicts with every user's
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    directory = tempfile.mkdtemp(prefix="item-cache-redis-")  # 0700, a new name: nobody else's
    server = None
    try:  # from here on, a SIGTERM (at any line) still removes the socket
        server = listen(directory)
        path = str(server.server_address)  # a unix server's address is its path
        token = secrets.token_hex(16)
        redis.Redis(unix_socket_path=path).set(MARKER_KEY, token)
        print(path, token, flush=True)
        while True:
            time.sleep(POLL_SECONDS)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # someone still uses us
            break
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.fstat(fd), os.stat(shared_file)):
                os.unlink(shared_file)  # our users died without leaving: the file is ours and stale
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
        _remove(directory, fd, shared_file)


def _remove(directory: str, fd: int, shared_file: str) -> None:
    """Remove the socket's directory once the shared file no longer names us. While it does (we were
    stopped under our users), the empty 0700 directory stays, so nobody else can take its name and have
    our users' reconnections reach a server of theirs."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(directory, "redis.sock"))
    try:
        named = os.path.samestat(os.fstat(fd), os.stat(shared_file))
    except FileNotFoundError:
        named = False
    if not named:
        shutil.rmtree(directory, ignore_errors=True)
