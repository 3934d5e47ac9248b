from __future__ import annotations

import pytest

from config import ConfigError, load_config


def test_defaults():
    config = load_config({})
    assert config.port == 5000
    assert config.database_url.startswith("sqlite:///") and config.database_url.endswith("instance/items.sqlite3")
    assert config.redis_url is None
    assert (config.cache_ttl, config.cache_long_ttl, config.l1_max_items, config.l1_ttl) == (300, 3600, 10000, 30.0)
    assert (config.negative_ttl, config.max_item_bytes, config.api_token) == (30, 65536, None)


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
    ],
)
def test_bad_values_fail_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({name: value})
