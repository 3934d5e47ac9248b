"""What `gunicorn app:app` lets others reach: its embedded Redis (no REDIS_URL) only the service's user, and
no script there runs code (cache/embedded/); metrics only with METRICS_TOKEN, when set."""

from __future__ import annotations

import json
import os
import stat

import pytest
import redis

from tests.embedded_access import NOBODY, connect_as, tcp_listeners
from tests.support import Gunicorn
from tests.test_embedded_share import hostile_scripts


def test_the_default_starts_embedded_redis_refuses_other_users_and_runs_no_hostile_script(tmp_path):
    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}"}
    shared = tmp_path / "items.sqlite3.redis"
    marker = str(tmp_path / "ran")
    with Gunicorn(env, workers=2) as server:
        info = json.loads(shared.read_text())
        assert stat.S_IMODE(shared.stat().st_mode) == 0o600
        assert f"at unix://{info['socket']}" in server.output()  # the log names a socket, no port
        assert tcp_listeners(info["pid"]) == set()
        assert connect_as(NOBODY, info["socket"]) == "denied"
        own = redis.Redis(unix_socket_path=info["socket"], socket_timeout=2)
        assert own.ping() is True  # the service's user is served
        for script in hostile_scripts(marker):
            with pytest.raises(redis.RedisError):
                redis.Redis(unix_socket_path=info["socket"], socket_timeout=2).eval(script, 0)
            assert not os.path.exists(marker), script
        body = json.dumps({"name": "still served"}).encode()
        assert server.request("PUT", "/items/s1", body, {"Content-Type": "application/json"})[0] == 201
        status, headers, answer = server.get("/items/s1")  # the service's own scripts run in the sandbox
        assert status == 200 and json.loads(answer)["name"] == "still served"


def test_with_metrics_token_set_metrics_and_the_dashboards_data_need_it(tmp_path):
    token = "metrics-" + "t" * 16
    env = {"REDIS_URL": "", "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}", "METRICS_TOKEN": token}
    with Gunicorn(env, workers=2) as server:
        for path in ("/metrics", "/metrics/cache", "/dashboard/status.json"):
            status, headers, body = server.get(path)
            assert status == 401 and json.loads(body)["error"] == "unauthorized", path
            assert server.get(path, {"Authorization": f"Bearer {token}"})[0] == 200, path
