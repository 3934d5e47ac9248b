"""Fixtures: the two stacks every contract test runs on, real servers when they exist, and the CI rule
that a test which would skip fails instead.

- "embedded": fakeredis + SQLite, always available.
- "real": the Redis at REDIS_URL (or a redis-server this session starts) + PostgreSQL at TEST_DATABASE_URL.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from app import create_app
from cache import service as cache_service
from db import open_store
from tests.support import RedisClusterServers, RedisServer, postgres_schema_url, redis_server_available

IN_CI = bool(os.environ.get("CI"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {report.longrepr}"


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real Redis: REDIS_URL when set (CI points it at a database tests may flush), else our own."""
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    if not redis_server_available():
        pytest.skip("no real Redis: set REDIS_URL or install redis-server")
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A real Redis Cluster (3 primaries, 3 replicas) of this session's own."""
    if not redis_server_available():
        pytest.skip("no redis-server to form a Redis Cluster with")
    with RedisClusterServers() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL")
    if not url:
        pytest.skip("no PostgreSQL: set TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)")
    return url


@pytest.fixture
def key_prefix() -> str:
    """A namespace per test, so tests sharing one Redis never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
def redis_client(request, key_prefix) -> Iterator[redis.Redis]:
    if request.param == "fakeredis":
        yield fakeredis.FakeRedis(server=fakeredis.FakeServer(), protocol=2)
        return
    if request.param == "cluster":
        client = redis.RedisCluster.from_url(request.getfixturevalue("redis_cluster_url"), protocol=2)
    else:
        client = redis.Redis.from_url(request.getfixturevalue("redis_url"), protocol=2)
    yield client
    for key in client.scan_iter(match=f"{key_prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'items.sqlite3'}"
        return
    with postgres_schema_url(request.getfixturevalue("postgres_url")) as url:
        yield url


@pytest.fixture
def store(database_url):
    store = open_store(database_url)
    store.init_schema()
    yield store
    store.close()


@pytest.fixture(params=["embedded", "real", "cluster"])
def stack(request, tmp_path, key_prefix) -> Iterator[dict[str, str]]:
    """The environment overrides for one full stack: fakeredis + SQLite, Redis + PostgreSQL, or a Redis
    Cluster + SQLite."""
    sqlite_url = f"sqlite:///{tmp_path / 'items.sqlite3'}"
    if request.param == "embedded":
        yield {"REDIS_URL": "", "DATABASE_URL": sqlite_url, "CACHE_KEY_PREFIX": key_prefix}
        return
    if request.param == "cluster":
        cluster_url = request.getfixturevalue("redis_cluster_url")
        yield {
            "REDIS_URL": cluster_url,
            "REDIS_CLUSTER": "true",
            "DATABASE_URL": sqlite_url,
            "CACHE_KEY_PREFIX": key_prefix,
        }
        client = redis.RedisCluster.from_url(cluster_url)
        for key in client.scan_iter(match=f"{key_prefix}*", count=1000):
            client.delete(key)
        return
    redis_url = request.getfixturevalue("redis_url")
    with postgres_schema_url(request.getfixturevalue("postgres_url")) as db_url:
        yield {"REDIS_URL": redis_url, "DATABASE_URL": db_url, "CACHE_KEY_PREFIX": key_prefix}
    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{key_prefix}*", count=1000):
        client.delete(key)


@pytest.fixture
def make_app(stack):
    """Build the app on this stack with extra settings; only one per test (the cache is per process)."""
    built = []

    def make(**env: str):
        built.append(create_app({**stack, **env}))
        return built[-1]

    yield make
    for application in built:
        application.extensions["item_store"].close()
    cache_service.reset()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()
