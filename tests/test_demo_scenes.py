"""What the demo's read scenes print matches what they ran: the shell loop (run here with a stand-in curl)
requests exactly the URLs the scene requested, the stampede says how many requests the instances serve at
once, and why more answers say db than the database was read."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from collections import Counter

import pytest

from demo.scenes import concurrent_gets, describe_threads, explain_answers, serving_threads
from demo.show import Metrics
from tests.support import Gunicorn


class RecordingServer:
    """Stands in for an instance: records every path asked of it and answers 404 bloom."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.paths: list[str] = []
        self.lock = threading.Lock()

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple:
        with self.lock:
            self.paths.append(path)
        return 404, {"X-Cache": "bloom"}, b"{}"


FAKE_CURL = """#!/bin/sh
for arg in "$@"; do
  case "$arg" in localhost:*) echo "$arg" >> "$CURL_LOG" ;; esac
done
printf '404 bloom\\n'
"""


def printed_commands(output: str) -> list[str]:
    return [line.removeprefix("   $ ") for line in output.splitlines() if line.startswith("   $ ")]


@pytest.mark.parametrize(("count", "parallel", "path"), [(41, 16, "/items/never-{}"), (20, 20, "/items/hot-1")])
def test_the_printed_shell_loop_requests_exactly_what_the_scene_requested(tmp_path, capsys, count, parallel, path):
    servers = [RecordingServer(47001), RecordingServer(47002)]
    answers = concurrent_gets(servers, count, parallel, path)  # type: ignore[arg-type]
    assert answers == Counter({"404 bloom": count})
    ran = sorted(f"localhost:{server.port}{p}" for server in servers for p in server.paths)
    (loop,) = printed_commands(capsys.readouterr().out)

    curl = tmp_path / "curl"
    curl.write_text(FAKE_CURL)
    curl.chmod(curl.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "curl.log"
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "CURL_LOG": str(log)}
    done = subprocess.run(["bash", "-c", loop], env=env, capture_output=True, text=True, timeout=60)

    assert done.returncode == 0, done.stderr
    assert sorted(log.read_text().split()) == ran
    assert re.fullmatch(rf"\s*{count} 404 bloom\s*", done.stdout)
    assert f"-P {parallel} " in loop and f"run here by {parallel} threads" in loop


def test_the_stampede_says_how_many_requests_the_instances_serve_at_once():
    pair = [Gunicorn({"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "4"}) for _ in range(2)]
    try:
        assert serving_threads(pair) == 16  # type: ignore[arg-type]
        assert describe_threads(pair) == "2 instances x 2 workers x 4 threads"  # type: ignore[arg-type]
    finally:
        for server in pair:
            server.close()


def metrics_with(changes: dict[str, float]) -> Metrics:
    metrics = Metrics([])
    metrics.changes = changes
    return metrics


def test_more_db_answers_than_database_loads_are_explained_with_the_numbers_that_ran():
    answers = Counter({"200 lru": 184, "200 redis": 12, "200 db": 4})
    lines = explain_answers(answers, metrics_with({"cache_db_loads_total": 1, "cache_stampede_waits_total": 15}))
    text = "\n".join(lines)
    assert "4 answers say db for 1 database load(s): the other 3 were readers in a loading worker" in text
    assert "12 say redis" in text and "cache_stampede_waits_total +15" in text
    assert "184 say lru" in text


def test_without_protection_every_db_answer_is_a_load_and_nothing_is_explained_away():
    answers = Counter({"200 lru": 184, "200 db": 16})
    lines = explain_answers(answers, metrics_with({"cache_db_loads_total": 16}))
    assert not any("were readers in a loading worker" in line for line in lines)
    assert any("every read in the service before the first fill loaded: 16" in line for line in lines)
