"""The cache's Prometheus metrics. In gunicorn they live in PROMETHEUS_MULTIPROC_DIR, one file set per
worker, and /metrics aggregates them (gunicorn.conf.py sets the directory before anything imports this)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, disable_created_metrics

disable_created_metrics()  # *_created series double the output and no dashboard here reads them

REQUESTS = Counter("cache_requests", "Item reads answered, by the tier that answered", ["tier"])
DB_LOADS = Counter("cache_db_loads", "Item reads that reached the database")
REDIS_ERRORS = Counter("cache_redis_errors", "Redis calls that failed and were absorbed", ["op"])
L1_ENTRIES = Gauge("cache_l1_entries", "Entries in the in-process LRU", multiprocess_mode="livesum")

TIERS = ("lru", "redis", "db", "negative", "bloom")
# Resolved once: .labels() per request is a dict lookup plus a lock we need not pay on the hot path.
REQUESTS_BY_TIER = {tier: REQUESTS.labels(tier) for tier in TIERS}
