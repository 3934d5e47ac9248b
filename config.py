"""Configuration from the environment (12-factor): read once, converted, validated at start-up."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import metrics_dir

INSTANCE_DIR = Path(__file__).resolve().parent / "instance"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the variable."""


@dataclass(frozen=True)
class Config:
    port: int
    database_url: str
    redis_url: str | None  # None: the embedded in-memory Redis
    redis_embedded: bool  # True when REDIS_URL points at the embedded server gunicorn started
    redis_cluster: bool
    redis_socket_timeout: float
    cache_ttl: int
    cache_long_ttl: int
    l1_max_items: int
    l1_max_bytes: int  # what L1's entries may hold in memory in all, per worker
    l1_ttl: float
    negative_ttl: int
    key_prefix: str
    api_token: str | None
    metrics_token: str | None  # required as a Bearer token by /metrics and the dashboard's data; None: open
    max_item_bytes: int
    log_level: str
    log_format: str  # json, text, or auto (text on a terminal, json elsewhere)
    access_log: bool  # one line per request (logger "access"), in the same format as every other line
    lock_ttl: float  # seconds a fleet-wide load lock lives: longer than any database load
    lock_wait: float  # seconds a reader waits for another's load before loading itself
    stampede_protection: bool  # single-flight + fleet lock; off only to measure what they save
    bloom: bool
    ttl_jitter: float
    xfetch_beta: float
    warm_on_start: bool
    breaker_threshold: int  # Redis failures in a row that open the circuit
    breaker_cooldown: float  # seconds the circuit stays open before one probe call
    database_timeout: float  # seconds a request waits for a database connection
    compress_min_bytes: int  # bodies at least this large are stored zlib-compressed in Redis (0: never)
    redis_tls_verify: bool  # verify a rediss:// server's certificate (Heroku Redis: self-signed, so false)
    cache_enabled: bool  # false: every read goes to the database (to measure what the cache buys)
    request_metrics: bool  # per-endpoint request counts and latencies (prometheus-flask-exporter)
    database_max_connections: int  # PostgreSQL connections this instance opens, at most, in all
    database_pool_size: int  # ... of which each worker's pool (database_pool_size())
    web_concurrency: int  # gunicorn worker processes
    gunicorn_threads: int  # threads per gunicorn worker
    client_timeout: float  # seconds a client may take to send a request before its connection is closed
    metrics_dir: str | None  # PROMETHEUS_MULTIPROC_DIR as given; None: gunicorn makes a private one
    http_max_age: int  # Cache-Control max-age of an item (s) a CDN or browser may serve it unasked; 0: revalidate
    http_stale_while_revalidate: int  # ...and how long past that it may serve it while it revalidates (s)
    cors_origins: tuple[str, ...]  # browser origins allowed to call the API (CORS); empty: none
    request_timeout: float  # seconds a request may wait in all (database, locks, other loads) before it gives up
    idempotency_keys_max: int  # Idempotency-Key records kept, at most (the oldest claimed go first)
    fast_path: bool  # answer an L1 hit of a plain GET /items/<id> and a plain PUT before Flask (routes/fast_path.py)

    @property
    def fakeredis(self) -> bool:
        """Redis is the embedded in-memory one (gunicorn's shared server, or in-process): no INFO."""
        return self.redis_embedded or not self.redis_url


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0, maximum: int = 2**31) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be from {minimum} to {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, high: float = 3600.0, zero_ok: bool = False) -> float:
    """A number above 0 (or 0 itself, with `zero_ok`) and at most `high`; seconds unless said otherwise."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not (0 <= value if zero_ok else 0 < value) or value > high:
        lowest = "at least 0" if zero_ok else "more than 0"
        raise ConfigError(f"{name} must be {lowest} and at most {high:g}, got {raw!r}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool = False) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _database_url(env: Mapping[str, str]) -> str:
    url = env.get("DATABASE_URL", "").strip()
    if not url:
        return f"sqlite:///{INSTANCE_DIR / 'items.sqlite3'}"
    if url.startswith(("postgres://", "postgresql://", "sqlite:///")):
        return url
    raise ConfigError(
        "DATABASE_URL must start with postgres://, postgresql:// or sqlite:///, "
        f"got a URL starting {url.split(':', 1)[0]!r}"
    )


# Each worker opens at most DATABASE_MAX_CONNECTIONS // WEB_CONCURRENCY connections: one for the change
# follower's LISTEN, the rest its pool (requests, the follower's reads, the inspector, warming). The master
# and the embedded Redis open none. 8: two dynos (16) and a one-off or release dyno fit a 20-connection plan.
LISTEN_CONNECTIONS = 1


def database_pool_size(max_connections: int, workers: int) -> int:
    """Each worker's pool: its share of the instance's connections, less its LISTEN connection."""
    return max_connections // workers - LISTEN_CONNECTIONS


def _database_max_connections(env: Mapping[str, str], workers: int) -> int:
    if env.get("DATABASE_POOL_SIZE", "").strip():
        raise ConfigError("DATABASE_POOL_SIZE is replaced by DATABASE_MAX_CONNECTIONS (per instance, all workers)")
    value = _int(env, "DATABASE_MAX_CONNECTIONS", 8, minimum=2, maximum=10_000)
    least = (LISTEN_CONNECTIONS + 1) * workers
    if value < least:
        raise ConfigError(
            f"DATABASE_MAX_CONNECTIONS must be at least {least} for WEB_CONCURRENCY={workers} "
            f"(each worker needs {LISTEN_CONNECTIONS + 1}: its LISTEN connection and a pool of one), got {value}"
        )
    return value


def _redis_url(env: Mapping[str, str]) -> str | None:
    url = env.get("REDIS_URL", "").strip()
    if not url:
        return None
    if url.startswith(("redis://", "rediss://", "unix://")):
        return url
    raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, got {url.split(':', 1)[0]!r}")


def _metrics_token(env: Mapping[str, str]) -> str | None:
    """METRICS_TOKEN, sent as `Authorization: Bearer <token>`: at least 16 visible ASCII characters."""
    token = env.get("METRICS_TOKEN", "")
    if not token:
        return None
    if len(token) < 16 or not all(33 <= ord(char) <= 126 for char in token):
        raise ConfigError("METRICS_TOKEN must be at least 16 visible ASCII characters (no spaces), or unset")
    return token


def _metrics_dir(env: Mapping[str, str]) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR, checked: the service deletes its own stale files there at start, so a
    directory holding anything else is refused rather than risk a file it did not write."""
    name = "PROMETHEUS_MULTIPROC_DIR"
    if name not in env:
        return None
    path = env[name]  # as given: prometheus_client uses the raw value
    if not path.strip():
        raise ConfigError(f"{name} is set but empty: unset it (gunicorn then makes a private one) or name a directory")
    if not os.path.exists(path):
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
            raise ConfigError(f"{name}={path} does not exist and cannot be created in {parent}")
        return path
    if not os.path.isdir(path) or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={path} is not a directory this service can write to")
    strangers = metrics_dir.unrecognised(path)
    if strangers:
        shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
        raise ConfigError(
            f"{name}={path} holds files this service did not write ({shown}); name an empty or a new directory"
        )
    return path


# What a platform (DYNO set: Heroku) must be given, and what each one's absence would cost there.
PLATFORM_NEEDS = {
    "DATABASE_URL": "items would go to SQLite on the dyno's ephemeral disk, lost at every restart",
    "REDIS_URL": "each dyno would run its own embedded Redis, blind to the other dynos' writes",
    "API_TOKEN": "anyone who can reach the service could write items",
}


def _platform_check(env: Mapping[str, str]) -> None:
    """On a platform (DYNO set), each of PLATFORM_NEEDS must be set, or named in ALLOW_UNSET."""
    if not env.get("DYNO", "").strip():
        return  # a laptop: the defaults (SQLite, embedded Redis, open writes) are the quickstart
    allowed = {name.strip() for name in env.get("ALLOW_UNSET", "").split(",") if name.strip()}
    unknown = allowed - PLATFORM_NEEDS.keys()
    if unknown:
        raise ConfigError(f"ALLOW_UNSET may name {', '.join(PLATFORM_NEEDS)}, got {', '.join(sorted(unknown))}")
    for name, cost in PLATFORM_NEEDS.items():
        if not env.get(name, "").strip() and name not in allowed:
            raise ConfigError(f"{name} is unset on a platform (DYNO is set): {cost}; set it, or ALLOW_UNSET={name}")


def load_config_or_exit(environ: Mapping[str, str] | None = None, *, default_port: int = 5000) -> Config:
    """load_config, or exit 1 with the one line `configuration error: <VAR> ...` on stderr (no traceback)."""
    try:
        return load_config(environ, default_port=default_port)
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None


ORIGIN = re.compile(r"^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _origins(env: Mapping[str, str]) -> tuple[str, ...]:
    """CORS_ORIGINS: comma-separated origins like https://app.example.com (scheme, host, port; no path)."""
    origins = tuple(o.strip() for o in env.get("CORS_ORIGINS", "").split(",") if o.strip())
    for origin in origins:
        if origin != "*" and not ORIGIN.match(origin):
            raise ConfigError(f"CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com or *")
    return origins


def load_config(environ: Mapping[str, str] | None = None, *, default_port: int = 5000) -> Config:
    """Read every setting from `environ` (default: os.environ); raise ConfigError naming a bad variable.
    `default_port`: PORT when unset (5000 for `python app.py`, 8000 for gunicorn)."""
    env = os.environ if environ is None else environ
    _platform_check(env)
    log_level = env.get("LOG_LEVEL", "INFO").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {log_level!r}")
    prefix = env.get("CACHE_KEY_PREFIX", "").strip()
    if len(prefix) > 64 or any(c.isspace() or c in "{}" for c in prefix):
        raise ConfigError("CACHE_KEY_PREFIX must be at most 64 characters with no spaces or braces")
    cache_ttl = _int(env, "CACHE_TTL", 300, minimum=1)
    web_concurrency = _int(env, "WEB_CONCURRENCY", 2, minimum=1, maximum=256)
    max_connections = _database_max_connections(env, web_concurrency)
    lock_ttl = _float(env, "CACHE_LOCK_TTL", 5.0, high=300)
    return Config(
        port=_int(env, "PORT", default_port, minimum=1, maximum=65535),
        database_url=_database_url(env),
        redis_url=_redis_url(env),
        redis_embedded=_bool(env, "REDIS_EMBEDDED"),
        redis_cluster=_bool(env, "REDIS_CLUSTER"),
        redis_socket_timeout=_float(env, "REDIS_SOCKET_TIMEOUT", 0.25),
        cache_ttl=cache_ttl,
        cache_long_ttl=max(cache_ttl, _int(env, "CACHE_LONG_TTL", 3600, minimum=1)),
        l1_max_items=_int(env, "CACHE_L1_MAX_ITEMS", 10000),
        # 64 MiB: the default 2 workers' full L1s (with the allocator's share, about 160 MiB) beside the master
        # and the workers at rest (about 115 MiB) come to about 280 MiB of a 512 MB dyno (BENCHMARKS.md "L1 memory").
        l1_max_bytes=_int(env, "CACHE_L1_MAX_BYTES", 64 * 1024 * 1024, maximum=2**40),
        l1_ttl=_float(env, "CACHE_L1_TTL", 30.0),
        negative_ttl=_int(env, "CACHE_NEGATIVE_TTL", 30, minimum=1),
        key_prefix=prefix,
        api_token=env.get("API_TOKEN") or None,
        metrics_token=_metrics_token(env),
        max_item_bytes=_int(env, "MAX_ITEM_BYTES", 65536, minimum=64),
        log_level=log_level,
        log_format=_choice(env, "LOG_FORMAT", "auto", ("auto", "json", "text")),
        access_log=_bool(env, "ACCESS_LOG", default=True),
        lock_ttl=lock_ttl,
        lock_wait=_float(env, "CACHE_LOCK_WAIT", lock_ttl + 1.0, high=600),
        stampede_protection=_bool(env, "CACHE_STAMPEDE_PROTECTION", default=True),
        bloom=_bool(env, "CACHE_BLOOM", default=True),
        ttl_jitter=_float(env, "CACHE_TTL_JITTER", 0.1, high=0.5, zero_ok=True),
        xfetch_beta=_float(env, "CACHE_XFETCH_BETA", 1.0, high=100, zero_ok=True),
        warm_on_start=_bool(env, "CACHE_WARM_ON_START"),
        breaker_threshold=_int(env, "REDIS_BREAKER_FAILURES", 5, minimum=1),
        breaker_cooldown=_float(env, "REDIS_BREAKER_COOLDOWN", 1.0, high=300),
        database_timeout=_float(env, "DATABASE_TIMEOUT", 3.0, high=60),
        compress_min_bytes=_int(env, "CACHE_COMPRESS_MIN_BYTES", 1024),
        redis_tls_verify=_bool(env, "REDIS_TLS_VERIFY", default=True),
        cache_enabled=_bool(env, "CACHE_ENABLED", default=True),
        request_metrics=_bool(env, "REQUEST_METRICS", default=True),
        database_max_connections=max_connections,
        database_pool_size=database_pool_size(max_connections, web_concurrency),
        web_concurrency=web_concurrency,
        gunicorn_threads=_int(env, "GUNICORN_THREADS", 4, minimum=1, maximum=256),
        # A stalled client costs the poller a socket, not a thread, so this bounds how long it holds one
        # of worker_connections. 10 s: a head is one packet and a whole MAX_ITEM_BYTES body arrives in
        # 10 s at 64 kbit/s, while a Heroku-style router (30 s) sends a request at LAN speed.
        client_timeout=_float(env, "CLIENT_TIMEOUT", 10.0, high=300),
        metrics_dir=_metrics_dir(env),
        http_max_age=_int(env, "HTTP_MAX_AGE", 0, maximum=31_536_000),
        http_stale_while_revalidate=_int(env, "HTTP_STALE_WHILE_REVALIDATE", 0, maximum=31_536_000),
        cors_origins=_origins(env),
        # Under the 30 s a Heroku-style router waits, with room for the client's retry to be answered too.
        request_timeout=_float(env, "REQUEST_TIMEOUT", 10.0, high=29),
        idempotency_keys_max=_int(env, "IDEMPOTENCY_KEYS_MAX", 100_000, minimum=1, maximum=100_000_000),
        fast_path=_bool(env, "FAST_PATH", default=True),
    )
