"""gunicorn settings for the item service: each with the reason it is set (read by `gunicorn app:app`)."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

# The platform (Heroku, a container) says where to listen; 8000 locally.
bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"

# Processes: Heroku sets WEB_CONCURRENCY from the dyno's memory; 2 fits a 2-core machine.
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

# gthread: a request can wait (a Redis or database round trip, a lock held by another loader for up to
# CACHE_LOCK_WAIT, a database timeout); threads keep such a wait from holding the whole worker. They also
# share one L1 and one invalidation listener per process: fewer, fuller L1s. Not gevent: an L1 hit is
# pure CPU, and a CPU-bound greenlet stalls the others of its worker. Not sync: one slow request blocks it.
# Measured costs (BENCHMARKS.md): threads contend for the GIL on CPU-bound routes (one worker served
# /health/live at ~2,000 req/s with 1 thread, ~1,300 with 4); and a keep-alive connection stays with the
# worker that accepted it, so a client with few long-lived connections can load workers unevenly.
worker_class = "gthread"
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# Heroku's router gives up after 30 s; give up on a stuck request before it does.
timeout = 30
graceful_timeout = 20
# Idle keep-alive connections are cheap for a router in front of us and save a handshake per request.
keepalive = 5

# Access log to stdout, 12-factor: the platform collects it.
accesslog = "-"
errorlog = "-"

# gunicorn's control socket sits at one fixed path per user, so a second instance on the same machine
# (tests, benchmarks, two services) would take it over; we manage processes by signal instead.
control_socket_disable = True

# The app is imported in each worker after the fork (no preload): no Redis or database connection,
# thread or PubSub is ever created in the master and shared by accident.
preload_app = False

# prometheus_client picks its multiprocess storage when it is first imported, so the directory must be
# in the environment before any worker imports the app; on_starting wipes it (stale files would be summed).
_metrics_dir_is_ours = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
os.environ.setdefault(
    "PROMETHEUS_MULTIPROC_DIR", os.path.join(tempfile.gettempdir(), f"item-cache-metrics-{os.getpid()}")
)

_embedded_redis = None
logger = logging.getLogger("gunicorn.error")


# The hooks import the project's modules (config, cache) from beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def on_starting(server):
    """In the master, before any fork: check the configuration, reset metrics, start embedded Redis."""
    from config import ConfigError, load_config

    try:
        config = load_config()
    except ConfigError as exc:
        logger.error("configuration error: %s", exc)
        sys.exit(1)
    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    shutil.rmtree(metrics_dir, ignore_errors=True)
    os.makedirs(metrics_dir, exist_ok=True)
    if config.redis_url is None:
        _start_embedded_redis()


def _start_embedded_redis():
    """One fakeredis server for all workers, so they never disagree; its URL reaches them via REDIS_URL."""
    global _embedded_redis
    from cache.embedded import WARNING, start_server

    url, _embedded_redis = start_server()
    os.environ["REDIS_URL"] = url
    os.environ["REDIS_EMBEDDED"] = "1"
    logger.warning("%s (embedded server pid %d at %s)", WARNING, _embedded_redis.pid, url)


def post_fork(server, worker):
    """In the new worker: ask for an invalidation listener thread. It starts when the app builds the cache
    (or right now if the app was preloaded); a PubSub or thread made in the master would be shared or lost."""
    import cache

    cache.enable_listener()


def child_exit(server, worker):
    """A dead worker's live gauges must stop counting (prometheus_client multiprocess mode)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    if _embedded_redis is not None:
        _embedded_redis.terminate()
        _embedded_redis.wait(timeout=5)
    if _metrics_dir_is_ours:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
