"""Bad settings stop `gunicorn app:app`, `python app.py` and `flask --app app` at start-up with one line
naming the variable, exit status 1 and no traceback; nothing is forked, served or deleted first."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support import ROOT, free_port

COMMANDS = {
    "gunicorn": [sys.executable, "-m", "gunicorn", "app:app"],
    "python app.py": [sys.executable, "app.py"],
    "flask init-db": [sys.executable, "-m", "flask", "--app", "app", "init-db"],
}
BAD_SETTINGS = [
    ("DATABASE_POOL_SIZE", "abc"),
    ("DATABASE_POOL_SIZE", "0"),
    ("WEB_CONCURRENCY", "0"),
    ("GUNICORN_THREADS", "0"),
    ("PROMETHEUS_MULTIPROC_DIR", ""),
    ("CACHE_TTL", "soon"),
    ("PORT", "eighty"),
]


def start(command: str, tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    base.update(REDIS_URL="", DATABASE_URL=f"sqlite:///{tmp_path / 'items.sqlite3'}", PORT=str(free_port()))
    return subprocess.run(COMMANDS[command], cwd=ROOT, env={**base, **env}, capture_output=True, text=True, timeout=60)


def assert_refused(run: subprocess.CompletedProcess[str], name: str) -> None:
    output = (run.stdout + run.stderr).strip()
    assert run.returncode == 1, output
    assert output.splitlines() == [output.splitlines()[0]] and output.startswith(f"configuration error: {name}")
    assert "Traceback" not in output


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("name, value", BAD_SETTINGS)
def test_bad_setting_is_one_line_naming_it_and_exit_1(command, name, value, tmp_path):
    assert_refused(start(command, tmp_path, **{name: value}), name)


@pytest.mark.parametrize("command", ["gunicorn", "python app.py"])
def test_metrics_dir_holding_a_users_file_is_refused_and_the_file_survives(command, tmp_path):
    users = tmp_path / "mine"
    users.mkdir()
    (users / "important.txt").write_text("do not delete")
    run = start(command, tmp_path, PROMETHEUS_MULTIPROC_DIR=str(users))
    assert_refused(run, "PROMETHEUS_MULTIPROC_DIR")
    assert "important.txt" in run.stderr
    assert (users / "important.txt").read_text() == "do not delete" and os.listdir(users) == ["important.txt"]


@pytest.mark.xfail(
    strict=True,
    reason="gunicorn's own settings read WEB_CONCURRENCY with int() when gunicorn is imported, before any "
    "file of ours runs; `python app.py` and flask report it (above). Fails loudly once gunicorn stops doing so.",
)
def test_non_number_web_concurrency_under_gunicorn(tmp_path):
    assert_refused(start("gunicorn", tmp_path, WEB_CONCURRENCY="two"), "WEB_CONCURRENCY")


@pytest.mark.parametrize("command", ["python app.py", "flask init-db"])
def test_non_number_web_concurrency_elsewhere(command, tmp_path):
    assert_refused(start(command, tmp_path, WEB_CONCURRENCY="two"), "WEB_CONCURRENCY")


@pytest.mark.parametrize("command", COMMANDS)
def test_empty_metrics_dir_writes_no_metric_file_in_the_working_directory(command, tmp_path):
    """prometheus_client takes a set-but-empty PROMETHEUS_MULTIPROC_DIR as the working directory."""
    before = set(ROOT.glob("*.db"))
    assert_refused(start(command, tmp_path, PROMETHEUS_MULTIPROC_DIR=""), "PROMETHEUS_MULTIPROC_DIR")
    assert set(ROOT.glob("*.db")) == before


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL", "API_TOKEN"])
def test_a_dyno_without_an_add_on_or_token_does_not_start(name, tmp_path):
    """On a platform (DYNO set) SQLite on the dyno's disk, a per-dyno Redis and open writes are refused."""
    platform = {"DYNO": "web.1", "REDIS_URL": "redis://127.0.0.1:1/0", "API_TOKEN": "t", name: ""}
    run = start("gunicorn", tmp_path, **platform)
    assert_refused(run, name)
    assert f"ALLOW_UNSET={name}" in run.stderr


def test_a_dyno_without_a_database_does_not_start_from_python_app_py(tmp_path):
    run = start("python app.py", tmp_path, DYNO="web.1", DATABASE_URL="", REDIS_URL="redis://127.0.0.1:1/0")
    assert_refused(run, "DATABASE_URL")
