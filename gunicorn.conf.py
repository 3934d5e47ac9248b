"""gunicorn settings for the item service: each with the reason it is set (read by `gunicorn app:app`)."""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

# The hooks import the project's modules (config, cache) from beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gunicorn import glogging  # noqa: E402

import logs  # noqa: E402  (needs the path above)
import metrics_dir  # noqa: E402
from config import load_config_or_exit  # noqa: E402

if TYPE_CHECKING:
    from gunicorn.arbiter import Arbiter
    from gunicorn.workers.base import Worker

# Every setting, gunicorn's too, is read and checked in one place; a bad one stops start-up here with one
# line naming it (exit 1), before a worker is forked.
_config = load_config_or_exit(default_port=8000)

# The platform (Heroku, a container) says where to listen; 8000 locally.
bind = f"0.0.0.0:{_config.port}"

# Processes: Heroku sets WEB_CONCURRENCY from the dyno's memory; 2 fits a 2-core machine.
workers = _config.web_concurrency

# gthread: a request can wait (a Redis or database round trip, a lock held by another loader for up to
# CACHE_LOCK_WAIT, a database timeout); threads keep such a wait from holding the whole worker. They also
# share one L1 and one invalidation listener per process: fewer, fuller L1s. Not gevent: an L1 hit is
# pure CPU, and a CPU-bound greenlet stalls the others of its worker. Not sync: one slow request blocks it.
# Costs: threads contend for the GIL on CPU-bound routes, and a keep-alive connection stays with the
# worker that accepted it, so a client with few long-lived connections can load workers unevenly
# (BENCHMARKS.md "Issue 7's targets").
# Slow clients: gthread's threads block in recv() until a request has arrived, so clients that send half
# a request and stop hold every thread. buffering_worker.BufferingWorker is gthread whose poller reads
# each request whole (head and a body up to MAX_ITEM_BYTES) before a thread sees it, and closes a
# connection whose request has not arrived within CLIENT_TIMEOUT; stalled clients then cost a socket
# each, at most worker_connections per worker (BENCHMARKS.md "Slow clients", `python -m bench.slow_clients`).
# 4 threads: fewer lose to a slow database, more lose beside stalled clients; GUNICORN_THREADS=8 is the
# setting for a slow database, not the default (BENCHMARKS.md "Serving", `python -m bench.serving`).
worker_class = "buffering_worker.BufferingWorker"
threads = _config.gunicorn_threads
# Open connections per worker, stalled ones included; beyond it new ones wait in the listen backlog until
# a stalled one is closed (CLIENT_TIMEOUT). gunicorn's default, said here because it is now the limit.
worker_connections = 1000

# Heroku's router gives up after 30 s; give up on a stuck request before it does.
timeout = 30
graceful_timeout = 20
# Idle keep-alive connections are cheap for a router in front of us and save a handshake per request
# (BENCHMARKS.md "Serving").
keepalive = 5

# Logs to stderr, 12-factor: the platform collects them. The app writes the access log itself (logger
# "access", ACCESS_LOG), so that a request's line has the format of every other line (LOG_FORMAT) and says
# which tier answered and how long it took; gunicorn's own access log would be a second format. It is
# the largest part of the cheapest request's own cost (BENCHMARKS.md "One L1 hit inside the process");
# ACCESS_LOG=false where the router logs requests already.
accesslog = None
errorlog = "-"
# gunicorn's own lines ("Starting gunicorn", "Booting worker") in the same format, from its first line on:
# its logging defaults with their one formatter replaced by ours, and every line once, on stderr (its
# defaults gave gunicorn.error a handler of its own and the root one too: each of its lines came twice).
logconfig_dict = {
    "formatters": {"generic": {"()": "logs.formatter", "log_format": _config.log_format}},
    "root": {"level": "INFO", "handlers": ["error_console"]},
    "loggers": {"gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True}},
}


class GunicornLogger(glogging.Logger):
    """... and gunicorn's own access log off: given a logconfig_dict it turns it on (two more lines per
    request); the app writes that line itself (ACCESS_LOG). Here, not in logs.py: only gunicorn needs it."""

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        return


logger_class = GunicornLogger

# gunicorn's control socket sits at one fixed path per user, so a second instance on the same machine
# (tests, benchmarks, two services) would take it over; we manage processes by signal instead.
control_socket_disable = True

# The app is imported in each worker after the fork (no preload): no Redis or database connection,
# thread or PubSub is ever created in the master and shared by accident.
preload_app = False

# prometheus_client picks its multiprocess storage when it is first imported, so the directory must be in
# the environment before any worker imports the app: on_starting (in the master, before the first fork)
# sets it. Only what this service wrote there is ever removed (metrics_dir.py).
_metrics_dir = None
_embedded_redis = None
logger = logging.getLogger("gunicorn.error")


def on_starting(server: Arbiter) -> None:
    """In the master, before any fork: log format, the metrics directory (stale files removed), embedded Redis."""
    global _metrics_dir
    logs.configure(_config.log_level, _config.log_format)
    _metrics_dir = metrics_dir.prepare(_config.metrics_dir)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir.path
    if _config.redis_url is None:
        _start_embedded_redis()


def _start_embedded_redis() -> None:
    """One fakeredis server for all workers, and for every other default instance on this database (found
    through a file beside it), so they never disagree; its URL reaches the workers via REDIS_URL."""
    global _embedded_redis
    from cache.embedded.server import WARNING
    from cache.embedded.share import use_shared

    _embedded_redis = use_shared(_config.database_url)
    # Importing cache.embedded made the cache's metrics in this master too; its live gauges (0) would
    # count as a process that never subscribes. The master serves nothing: forget its files.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(os.getpid())
    how = "started by this instance" if _embedded_redis.started_here else "shared with another instance"
    logger.warning(
        "%s (embedded server pid %d at %s, %s; named in %s)",
        WARNING,
        _embedded_redis.pid,
        _embedded_redis.url,
        how,
        _embedded_redis.path,
    )


def post_fork(server: Arbiter, worker: Worker) -> None:
    """In the new worker: ask for an invalidation listener thread. It starts when the app builds the cache
    (or right now if the app was preloaded); a PubSub or thread made in the master would be shared or lost."""
    from cache import service

    _large_allocations_mapped()
    service.enable_listener()


def _large_allocations_mapped() -> None:
    """glibc serves an allocation under its mmap threshold (128 KiB, rising to 32 MiB as large blocks are
    freed) from a heap arena, one per thread that allocates, and keeps what is freed there for reuse: L1's
    large bodies, evicted under CACHE_L1_MAX_BYTES and refilled by other threads, left the worker's RSS
    anywhere from the bound to three times it. Allocations of 32 KiB and more are mapped on their own and
    returned when freed, so RSS follows what L1 counts. MALLOC_MMAP_THRESHOLD_ in the environment wins; on
    a libc without mallopt nothing is done."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    m_mmap_threshold = -3  # M_MMAP_THRESHOLD, glibc's malloc.h
    mallopt(m_mmap_threshold, 32 * 1024)


def child_exit(server: Arbiter, worker: Worker) -> None:
    """A dead worker's live gauges must stop counting (prometheus_client multiprocess mode)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server: Arbiter) -> None:
    """Leave the embedded Redis (stopped if no other instance uses it); remove the metric files (and the
    directory, if this master made it)."""
    if _embedded_redis is not None:
        from cache.embedded.share import leave

        leave(_embedded_redis)
    if _metrics_dir is not None:
        metrics_dir.clean_up(_metrics_dir)
