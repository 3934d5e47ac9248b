"""Prometheus text at /metrics (aggregated over every gunicorn worker) and a JSON summary at /metrics/cache."""

from __future__ import annotations

import os

from flask import Blueprint, Response, current_app
from flask.typing import ResponseReturnValue
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cache.core.metrics import TIERS
from cache.core.redis_tier import info_summary
from routes.http import require_metrics_token

bp = Blueprint("metrics", __name__, url_prefix="/metrics")
bp.before_request(require_metrics_token)  # /metrics and /metrics/cache: METRICS_TOKEN when it is set
HIT_TIERS = ("lru", "redis", "negative", "bloom")  # answered without the database


def _registries() -> list[CollectorRegistry]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # reads every worker's files, live and dead
        return [registry]
    return [REGISTRY, current_app.extensions["request_metrics_registry"]]


def _totals(labels: dict[str, str | None]) -> dict[str, dict[str, float]]:
    """For each metric name in `labels`, its samples summed over all processes, keyed by that label
    ("" when None). One collection: in gunicorn it reads every worker's files."""
    totals: dict[str, dict[str, float]] = {name: {} for name in labels}
    for registry in _registries():
        for metric in registry.collect():
            if metric.name not in labels:
                continue
            label, sums = labels[metric.name], totals[metric.name]
            for sample in metric.samples:
                if sample.name in (metric.name, f"{metric.name}_total"):
                    key = sample.labels.get(label, "") if label else ""
                    sums[key] = sums.get(key, 0.0) + sample.value
    return totals


@bp.get("")
def prometheus() -> ResponseReturnValue:
    body = b"".join(generate_latest(registry) for registry in _registries())
    return Response(body, content_type=CONTENT_TYPE_LATEST)


def _ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


@bp.get("/cache")
def summary() -> ResponseReturnValue:
    item_cache = current_app.extensions["item_cache"]
    config = current_app.config["SERVICE_CONFIG"]
    totals = _totals(
        {
            "cache_requests": "tier",
            "cache_l1_entries": None,
            "cache_db_loads": None,
            "cache_changelog_applied": None,
            "cache_changelog_gaps": None,
            "cache_changelog_lag_seconds": None,
            "cache_inspector_checked": "tier",
            "cache_inspector_stale": "tier",
        }
    )
    requests = {tier: int(totals["cache_requests"].get(tier, 0)) for tier in TIERS}
    total = sum(requests.values())
    hits = sum(requests[tier] for tier in HIT_TIERS)
    return {
        "l1": {
            "entries_this_worker": len(item_cache.lru),
            "entries_all_workers": int(totals["cache_l1_entries"].get("", 0)),
            "capacity_per_worker": config.l1_max_items,
            "ttl_seconds": config.l1_ttl,
        },
        "requests": requests,
        "hit_ratio": round(hits / total, 4) if total else None,
        "hit_ratio_means": "reads answered without the database (lru, redis, negative, bloom) / all reads",
        "item_hit_ratio": _ratio(
            requests["lru"] + requests["redis"], requests["lru"] + requests["redis"] + requests["db"]
        ),
        "absent_answered_without_db": requests["negative"] + requests["bloom"],
        "db_loads": int(totals["cache_db_loads"].get("", 0)),
        "change_log": {
            "applied": int(totals["cache_changelog_applied"].get("", 0)),
            "gaps": int(totals["cache_changelog_gaps"].get("", 0)),
            "lag_seconds": totals["cache_changelog_lag_seconds"].get("", 0.0),
        },
        "inspector": {
            "checked": {tier: int(n) for tier, n in totals["cache_inspector_checked"].items()},
            "stale": {tier: int(n) for tier, n in totals["cache_inspector_stale"].items()},
        },
        "redis": info_summary(item_cache.redis, embedded=config.fakeredis),
        "worker_pid": os.getpid(),
    }
