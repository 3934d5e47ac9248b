"""What a Heroku-style deploy hands the service: rediss:// with a self-signed certificate, postgres:// URLs,
and the Procfile's own release and web commands."""

from __future__ import annotations

import json
import shlex
import subprocess

from tests.support import ROOT, Gunicorn, RedisServer, postgres_schema_url

JSON_HEADERS = {"Content-Type": "application/json"}


def procfile() -> dict[str, str]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


def test_rediss_with_a_self_signed_certificate(tmp_path):
    with RedisServer(tls=True) as redis_server:
        env = {
            "REDIS_URL": redis_server.url,
            "REDIS_TLS_VERIFY": "false",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'items.sqlite3'}",
        }
        with Gunicorn(env, workers=2) as server:
            assert server.request("PUT", "/items/tls", b"{}", JSON_HEADERS)[0] == 201
            tiers = {server.get("/items/tls")[1]["X-Cache"] for _ in range(6)}
            assert tiers <= {"lru", "redis"}
            assert json.loads(server.get("/health/ready")[2])["status"] == "ok"
        verifying = {**env, "REDIS_TLS_VERIFY": "true"}  # the default: a self-signed certificate is refused
        with Gunicorn(verifying, workers=1) as server:
            ready = json.loads(server.get("/health/ready")[2])
            assert ready["status"] == "degraded" and ready["checks"]["redis"] == "unavailable"
            assert server.get("/items/tls")[0] == 200  # served from the database all the same


def test_procfile_release_then_web_on_postgres_url(request):
    """`postgres://` (what Heroku hands out) works, `release:` creates the schema, `web:` serves."""
    with RedisServer() as redis_server, postgres_schema_url(request.getfixturevalue("postgres_url")) as db_url:
        env = {"REDIS_URL": redis_server.url, "DATABASE_URL": db_url.replace("postgresql://", "postgres://", 1)}
        commands = procfile()
        release = subprocess.run(
            shlex.split(commands["release"]),
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**Gunicorn(env).env},
            timeout=120,
        )
        assert release.returncode == 0 and "schema ready" in release.stdout, release.stderr[-2000:]
        assert shlex.split(commands["web"]) == ["gunicorn", "app:app"]
        with Gunicorn(env, workers=2) as server:  # the same command, run as `python -m gunicorn app:app`
            assert server.request("PUT", "/items/deployed", b'{"ok": true}', JSON_HEADERS)[0] == 201
            assert json.loads(server.get("/items/deployed")[2])["ok"] is True
