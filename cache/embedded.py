"""The embedded Redis used when REDIS_URL is unset: fakeredis, for a demo or a laptop, never production.

Under gunicorn (and `python app.py`), every worker of every default instance on this machine must see the
SAME data, so the master finds or starts `python -m cache.embedded` (a fakeredis TCP server on a free
loopback port; cache/embedded_share.py says how instances share it) before forking and hands its URL to
the workers through REDIS_URL. It runs in a process of its own rather than a thread of the master: threads
in a process that forks can leave locks held in the children. In-process (`client()`): tests and tools.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import fakeredis
import redis

logger = logging.getLogger(__name__)

WARNING = (
    "REDIS_URL is not set: using an embedded in-memory Redis (fakeredis). "
    "Fine to try the service; not for production: set REDIS_URL."
)

_server: fakeredis.FakeServer | None = None
_server_lock = threading.Lock()


def client() -> redis.Redis:
    """A client of this process's in-memory server (created on first use, shared by all callers)."""
    global _server
    with _server_lock:
        if _server is None:
            logger.warning(WARNING)
            _server = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_server, protocol=2)


def start_server(own_file: Path, shared_file: Path) -> tuple[int, str, int]:
    """Start the TCP server in a process of its own (port, token, pid). It lives while any process holds a
    shared lock on `own_file` (the file that becomes `shared_file`: cache/embedded_share.py), not with us."""
    # It has no metrics to report: without the directory it writes no metric files, whose live gauges
    # (0 for "listener subscribed") would otherwise count as a worker's.
    env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cache.embedded", str(own_file), str(shared_file)],
        stdout=subprocess.PIPE,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        start_new_session=True,  # Ctrl-C on the instance that started it must not stop it for the others
    )
    assert proc.stdout is not None
    words = proc.stdout.readline().decode().split()  # the child prints its port and token once it listens
    proc.stdout.close()
    if len(words) != 2 or not words[0].isdigit():
        proc.kill()
        raise RuntimeError(f"embedded Redis did not start (said {' '.join(words)!r})")
    return int(words[0]), words[1], proc.pid


def _serve(own_file: str, shared_file: str) -> None:
    """Serve until nobody holds a shared lock on our file (or SIGTERM); remove the file if it is still ours."""
    import fcntl  # here: the in-process client() must import on any platform

    from cache.embedded_share import MARKER_KEY, POLL_SECONDS

    fd = os.open(own_file, os.O_RDONLY)  # our own open file: its exclusive lock conflicts with every user's
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    server = fakeredis.TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    token = secrets.token_hex(16)
    redis.Redis(port=port).set(MARKER_KEY, token)
    print(port, token, flush=True)
    try:
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
        server.shutdown()


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2])
