"""The cache's Prometheus metrics. In gunicorn they live in PROMETHEUS_MULTIPROC_DIR, one file set per
worker, and /metrics aggregates them (gunicorn.conf.py sets the directory before anything imports this)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from db import CommitOutcomeUnknown, DeadlineExceeded, Deleted, NotFound, PreconditionFailed, WriteResult

T = TypeVar("T")

disable_created_metrics()  # *_created series double the output and no dashboard here reads them

REQUESTS = Counter("cache_requests", "Item reads answered, by the tier that answered", ["tier"])
DB_LOADS = Counter("cache_db_loads", "Item reads that reached the database")
COMPRESSION_SAVED = Counter("cache_compression_saved_bytes", "Bytes of Redis values saved by compression")
DECODE_ERRORS = Counter("cache_decode_errors", "Redis values that failed to decode (treated as a miss, deleted)")
REFRESH_FAILURES = Counter("cache_refresh_failures", "Early refreshes that failed (the cached copy was served)")
STAMPEDE_WAITS = Counter("cache_stampede_waits", "Readers that waited for another loader instead of reading the DB")
REDIS_ERRORS = Counter("cache_redis_errors", "Redis calls that failed and were absorbed", ["op"])
REDIS_REFUSALS = Counter(
    "cache_redis_refusals", "Redis calls Redis answered with an error (OOM at maxmemory, READONLY, ...)", ["op"]
)
INVALIDATIONS = Counter(
    "cache_invalidations", "Pub/sub invalidations handled: applied, own (from this process), stale", ["result"]
)
INVALIDATION_LAG = Histogram(
    "cache_invalidation_lag_seconds",
    "Publish (in the writing process) to applied (in this one)",
    buckets=(0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.1, 0.5, 2.5),
)
L1_FLUSHES = Counter(
    "cache_l1_flushes", "Whole-L1 flushes: subscribe, watchdog, admin, catch_up, bulk_change", ["reason"]
)
LISTENER_SUBSCRIBED = Gauge(
    "cache_listener_subscribed", "1 while every worker's listener is subscribed", multiprocess_mode="livemin"
)
CIRCUIT_OPEN = Gauge("cache_circuit_open", "1 while the Redis circuit breaker is open", multiprocess_mode="max")
REDIS_CATCHING_UP = Gauge(
    "cache_redis_catching_up",
    "1 while a worker reads through to the database until Redis has the change log applied (after a doubt)",
    multiprocess_mode="livemax",
)
REDIS_CATCH_UPS = Counter(
    "cache_redis_catch_ups",
    "Doubts about Redis ended: applied (the log reached Redis), gave_up (no follower announced it)",
    ["outcome"],
)
CHANGELOG_APPLIED = Counter("cache_changelog_applied", "Database changes (any writer's) applied to the cache")
CHANGELOG_GAPS = Counter("cache_changelog_gaps", "Times the change log was purged past the follower: cache flushed")
CHANGELOG_LAG = Gauge(
    "cache_changelog_lag_seconds",
    "Seconds since the change follower was last caught up with the database (0 while it is)",
    multiprocess_mode="max",
)
INSPECTOR_CHECKED = Counter("cache_inspector_checked", "Cached entries compared with the database", ["tier"])
INSPECTOR_STALE = Counter(
    "cache_inspector_stale", "Cached entries still older than the database a full bound after first seen", ["tier"]
)
WRITE_OUTCOMES = Counter(
    "cache_write_outcomes",
    "Item writes by outcome: written, precondition_failed (412), deadline_exceeded (503, rolled back), "
    "outcome_unknown (503, the connection failed after COMMIT was sent), replayed",
    ["outcome"],
)
L1_ENTRIES = Gauge("cache_l1_entries", "Entries in the in-process LRU", multiprocess_mode="livesum")

TIERS = ("lru", "redis", "db", "negative", "bloom")
# Resolved once: .labels() per request is a dict lookup plus a lock we need not pay on the hot path.
REQUESTS_BY_TIER = {tier: REQUESTS.labels(tier) for tier in TIERS}
WRITE_OUTCOME_NAMES = ("written", "precondition_failed", "deadline_exceeded", "outcome_unknown", "replayed")
WRITES_BY_OUTCOME = {outcome: WRITE_OUTCOMES.labels(outcome) for outcome in WRITE_OUTCOME_NAMES}


def counted_write(write: Callable[[], T]) -> T:
    """Run a database write, counting its outcome in cache_write_outcomes_total (None: not counted)."""
    try:
        result = write()
    except DeadlineExceeded:
        WRITES_BY_OUTCOME["deadline_exceeded"].inc()
        raise
    except CommitOutcomeUnknown:
        WRITES_BY_OUTCOME["outcome_unknown"].inc()  # the change follower brings the cache to what committed
        raise
    if isinstance(result, PreconditionFailed):
        WRITES_BY_OUTCOME["precondition_failed"].inc()
    elif isinstance(result, WriteResult | Deleted | NotFound):
        WRITES_BY_OUTCOME["written"].inc()
    return result
