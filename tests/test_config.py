from __future__ import annotations

import pytest

from config import ConfigError, load_config

MULTIPROC = "PROMETHEUS_MULTIPROC_DIR"


def test_defaults():
    config = load_config({})
    assert config.port == 5000
    assert config.database_url.startswith("sqlite:///") and config.database_url.endswith("instance/items.sqlite3")
    assert config.redis_url is None
    assert (config.cache_ttl, config.cache_long_ttl, config.l1_max_items, config.l1_ttl) == (300, 3600, 10000, 30.0)
    assert (config.negative_ttl, config.max_item_bytes, config.api_token) == (30, 65536, None)
    assert (config.web_concurrency, config.gunicorn_threads, config.database_pool_size) == (2, 4, 3)
    assert config.database_max_connections == 8
    assert config.client_timeout == 10.0
    assert config.l1_max_bytes == 64 * 2**20
    assert config.metrics_dir is None and load_config({}, default_port=8000).port == 8000


def test_values_are_converted():
    config = load_config(
        {
            "PORT": "8080",
            "CACHE_TTL": "60",
            "CACHE_L1_MAX_ITEMS": "0",
            "CACHE_L1_TTL": "2.5",
            "DATABASE_URL": "postgres://u@h/db",
            "REDIS_URL": "rediss://h:6380/0",
            "REDIS_CLUSTER": "true",
            "LOG_LEVEL": "debug",
            "CACHE_KEY_PREFIX": "svc1:",
        }
    )
    assert (config.port, config.cache_ttl, config.l1_max_items, config.l1_ttl) == (8080, 60, 0, 2.5)
    assert config.database_url == "postgres://u@h/db" and config.redis_url == "rediss://h:6380/0"
    assert config.redis_cluster and config.log_level == "DEBUG" and config.key_prefix == "svc1:"


@pytest.mark.parametrize(
    "name, value",
    [
        ("PORT", "eighty"),
        ("PORT", "0"),
        ("PORT", "70000"),
        ("CACHE_TTL", "-1"),
        ("CACHE_L1_MAX_ITEMS", "1e3"),
        ("CACHE_L1_TTL", "soon"),
        ("CACHE_L1_TTL", "0"),
        ("CLIENT_TIMEOUT", "0"),
        ("CLIENT_TIMEOUT", "soon"),
        ("REDIS_CLUSTER", "maybe"),
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://x"),
        ("LOG_LEVEL", "LOUD"),
        ("MAX_ITEM_BYTES", "10"),
        ("CACHE_KEY_PREFIX", "has space"),
        ("CACHE_KEY_PREFIX", "{tag}"),
        ("CACHE_TTL_JITTER", "-0.1"),
        ("CACHE_TTL_JITTER", "0.9"),
        ("CACHE_XFETCH_BETA", "-1"),
        ("CACHE_LOCK_TTL", "0"),
        ("CACHE_BLOOM", "sometimes"),
        ("DATABASE_POOL_SIZE", "abc"),
        ("DATABASE_POOL_SIZE", "0"),
        ("DATABASE_POOL_SIZE", "8"),  # replaced by DATABASE_MAX_CONNECTIONS
        ("DATABASE_MAX_CONNECTIONS", "3"),  # fewer than 2 a worker
        ("DATABASE_MAX_CONNECTIONS", "many"),
        ("WEB_CONCURRENCY", "two"),
        ("WEB_CONCURRENCY", "0"),
        ("GUNICORN_THREADS", "0"),
        ("GUNICORN_THREADS", "four"),
        (MULTIPROC, ""),
        (MULTIPROC, "  "),
        (MULTIPROC, "/nonexistent-parent/metrics"),
        ("METRICS_TOKEN", "short"),
        ("METRICS_TOKEN", "has a space in it 0123456789"),
    ],
)
def test_bad_values_fail_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})


def test_gunicorn_and_pool_settings_are_converted():
    config = load_config({"WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "8", "DATABASE_MAX_CONNECTIONS": "20"})
    # 20 // 3 workers = 6 each: 1 LISTEN connection and a pool of 5; 3 x 6 = 18 <= 20
    assert (config.web_concurrency, config.gunicorn_threads, config.database_pool_size) == (3, 8, 5)
    with pytest.raises(ConfigError, match="DATABASE_MAX_CONNECTIONS must be at least 6 for WEB_CONCURRENCY=3"):
        load_config({"WEB_CONCURRENCY": "3", "DATABASE_MAX_CONNECTIONS": "5"})


def test_metrics_dir_new_empty_or_holding_only_metric_files_is_accepted(tmp_path):
    assert load_config({MULTIPROC: str(tmp_path / "new")}).metrics_dir == str(tmp_path / "new")
    assert load_config({MULTIPROC: str(tmp_path)}).metrics_dir == str(tmp_path)
    for name in ("counter_12.db", "gauge_livesum_12.db", "gauge_max_7.db", "histogram_3.db"):
        (tmp_path / name).write_bytes(b"")
    assert load_config({MULTIPROC: str(tmp_path)}).metrics_dir == str(tmp_path)


@pytest.mark.parametrize("name", ["important.txt", "counter.db", "counter_12.db.bak", "notes"])
def test_metrics_dir_holding_anything_else_is_refused_and_left_alone(tmp_path, name):
    (tmp_path / name).write_text("keep me")
    with pytest.raises(ConfigError, match=f"{MULTIPROC}=.*did not write \\({name}\\)"):
        load_config({MULTIPROC: str(tmp_path)})
    assert (tmp_path / name).read_text() == "keep me"


def test_metrics_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match=f"{MULTIPROC}=.* is not a directory"):
        load_config({MULTIPROC: str(tmp_path / "file")})


PLATFORM = {"DYNO": "web.1", "DATABASE_URL": "postgres://u@h/db", "REDIS_URL": "rediss://h:6380/0", "API_TOKEN": "t"}


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL", "API_TOKEN"])
def test_platform_refuses_each_unset_default_naming_it_and_the_way_to_allow_it(name):
    env = {k: v for k, v in PLATFORM.items() if k != name}
    with pytest.raises(ConfigError) as refused:
        load_config(env)
    message = str(refused.value)
    assert message.startswith(f"{name} is unset on a platform (DYNO is set)") and "\n" not in message
    assert message.endswith(f"ALLOW_UNSET={name}")
    assert load_config({**env, "ALLOW_UNSET": name}).port == 5000  # allowed by one who means it
    with pytest.raises(ConfigError, match=f"^{name} is unset"):
        load_config({**env, name: "  "})  # blank is unset


def test_platform_allow_unset_names_several_and_refuses_others():
    config = load_config({"DYNO": "web.1", "ALLOW_UNSET": "DATABASE_URL, REDIS_URL,API_TOKEN"})
    assert config.redis_url is None and config.api_token is None and config.database_url.startswith("sqlite:///")
    with pytest.raises(ConfigError, match="ALLOW_UNSET may name DATABASE_URL, REDIS_URL, API_TOKEN, got PORT"):
        load_config({**PLATFORM, "ALLOW_UNSET": "PORT"})


def test_laptop_defaults_need_nothing():
    """No DYNO: the quickstart's `gunicorn app:app` runs on SQLite, the embedded Redis and open writes."""
    config = load_config({"DYNO": ""})
    assert config.redis_url is None and config.api_token is None and config.database_url.startswith("sqlite:///")
