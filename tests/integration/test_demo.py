"""`python -m demo`: every scene passes against a real redis-server, the embedded Redis is used (and the
Redis scene skipped, saying why) without one, and nothing it started outlives it, even when interrupted."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from demo.__main__ import SCENES
from tests.support import ROOT, redis_server_available, wait_until


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "PROMETHEUS_MULTIPROC_DIR")}
    return {**env, **extra}


def run_demo(*args: str, **env: str) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "demo", *args],
        cwd=ROOT,
        env=demo_env(**env),
        capture_output=True,
        text=True,
        timeout=240,
    )
    return done.returncode, done.stdout + done.stderr


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def started(output: str) -> tuple[Path, list[int]]:
    """The demo's temporary directory and every port it served on (instances and Redis), from its output."""
    directory = Path(re.search(r"database sqlite:///(\S+)/items\.sqlite3", output).group(1))
    ports = [int(p) for p in re.findall(r"localhost:(\d+)", output)]
    ports += [int(p) for p in re.findall(r"redis://127\.0\.0\.1:(\d+)", output)]
    return directory, sorted(set(ports))


def assert_nothing_left(output: str) -> None:
    directory, ports = started(output)
    assert ports and not directory.exists()
    assert [port for port in ports if listening(port)] == []


def test_every_scene_passes_and_everything_started_is_stopped():
    if not redis_server_available():
        pytest.skip("the redis-down scene needs redis-server on PATH")
    began = time.monotonic()
    status, output = run_demo()
    verdicts = re.findall(r"^(?:PASS|FAIL|SKIP) .*$", output, re.M)
    assert status == 0, "\n".join(verdicts) + "\n" + output[-3000:]
    for name in SCENES:
        assert re.search(rf"^PASS {name}: ", output, re.M), f"{name} did not pass:\n{output[-4000:]}"
    assert f"{len(SCENES)}/{len(SCENES)} scenes passed" in output
    assert_nothing_left(output)
    print(f"python -m demo took {time.monotonic() - began:.1f} s")


def test_without_redis_server_the_embedded_redis_is_shared_and_the_redis_scene_says_why_it_is_skipped():
    no_redis_server = os.path.dirname(sys.executable)  # python and gunicorn, nothing else
    status, output = run_demo("--scene", "tiers", "--scene", "redis-down", PATH=no_redis_server)
    assert status == 0, output[-4000:]
    assert "embedded Redis at unix://" in output and re.search(r"^PASS tiers: db -> ", output, re.M)
    assert re.search(r"^SKIP redis-down: skipped: needs a real redis-server", output, re.M)
    assert_nothing_left(output)  # the <db>.redis file sat in the removed directory


def test_a_failing_scene_makes_the_exit_status_non_zero():
    """A scene whose check fails: the stampede with protection off in the environment, which the demo's
    "protected" instances inherit (so they load many times). Stands in for any failed outcome check."""
    status, output = run_demo("--scene", "stampede", CACHE_STAMPEDE_PROTECTION="false")
    assert status == 1 and re.search(r"^FAIL stampede: ", output, re.M), output[-4000:]
    assert_nothing_left(output)


def test_interrupted_it_stops_everything_it_started(tmp_path):
    log = tmp_path / "demo.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "demo", "--scene", "warming"], cwd=ROOT, env=demo_env(), stdout=out, stderr=out
        )
    try:
        wait_until(lambda: "warming: " in log.read_text() or proc.poll() is not None, timeout=60)
        proc.send_signal(signal.SIGINT)  # Ctrl-C, to the demo alone: its children must be stopped by it
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_nothing_left(log.read_text())


def test_an_instance_that_does_not_start_is_named_and_its_log_tail_printed():
    """A bad setting stops instance A at start: the demo says which instance, and prints the end of its log
    (read before the log is deleted), instead of a wait's timeout."""
    status, output = run_demo("--scene", "tiers", CACHE_TTL="soon")
    assert status == 1, output[-3000:]
    assert re.search(r"^FAIL setup: instance A \(gunicorn app:app, port \d+\) exited with status 1", output, re.M)
    assert "CACHE_TTL must be a whole number, got 'soon'" in output
    assert "condition not met" not in output and "Traceback" not in output


def test_the_stampede_says_what_ran_and_its_db_answers_add_up():
    status, output = run_demo("--scene", "stampede")
    assert status == 0, output[-4000:]
    assert "200 reads sent together; the two instances serve at most 16 at a time" in output
    assert "(2 instances x 2 workers x 4 threads)" in output
    assert "200 concurrent" not in output
    protected = output.split("-- stampede protection on")[1].split("-- stampede protection off")[0]
    answers = re.search(r"200 reads: (\{.*\}); database loads: (\d+)", protected)
    said_db = int(re.search(r"'200 db': (\d+)", answers.group(1)).group(1))
    loads = int(answers.group(2))
    if said_db > loads:  # the other db answers were handed the load's answer: the scene says so, with the numbers
        assert f"{said_db} answers say db for {loads} database load(s): the other {said_db - loads} were" in protected
