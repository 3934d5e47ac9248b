"""The embedded Redis used when REDIS_URL is unset: fakeredis, for a demo or a laptop, never production.

One process (`python app.py`): an in-process fakeredis. Under gunicorn, every worker must see the SAME
data, so the master starts `python -m cache.embedded` (a fakeredis TCP server on a free loopback port)
before forking and hands its URL to the workers through REDIS_URL. It runs in a child process rather than
a thread of the master: threads in a process that forks can leave locks held in the children.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

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


def start_server() -> tuple[str, subprocess.Popen[bytes]]:
    """Start the TCP server in a child process; return its URL and the process (stop it by pid)."""
    # It has no metrics to report: without the directory it writes no metric files, whose live gauges
    # (0 for "listener subscribed") would otherwise count as a worker's.
    env = {name: value for name, value in os.environ.items() if name != "PROMETHEUS_MULTIPROC_DIR"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cache.embedded", str(os.getpid())],
        stdout=subprocess.PIPE,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()  # the child prints its port once it listens
    if not line.isdigit():
        proc.kill()
        raise RuntimeError(f"embedded Redis did not start (said {line!r})")
    url = f"redis://127.0.0.1:{line}/0"
    redis.Redis.from_url(url, socket_timeout=1).ping()  # it listens before it prints: this raises or passes
    return url, proc


def _serve(parent_pid: int) -> None:
    server = fakeredis.TcpFakeServer(("127.0.0.1", 0), server_type="redis")
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    while os.getppid() == parent_pid:  # exit with the gunicorn master, even if it was SIGKILLed
        time.sleep(1.0)
    server.shutdown()


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
