"""Default instances share one embedded Redis through a file beside the database (cache/embedded_share.py)."""

from __future__ import annotations

import fcntl
import json
import os

import pytest
import redis

from cache.embedded import start_server
from cache.embedded_share import SERVICE, EmbeddedConflict, _running, file_for, join_or_start, leave
from tests.support import free_port, wait_until


def answers(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
    except redis.RedisError:
        return False


def test_the_file_sits_beside_a_sqlite_database_and_is_per_url_otherwise(tmp_path):
    assert file_for(f"sqlite:///{tmp_path}/items.sqlite3", tmp_path) == tmp_path / "items.sqlite3.redis"
    one, other = file_for("postgresql://a/db1", tmp_path), file_for("postgresql://a/db2", tmp_path)
    assert one.parent == tmp_path and one != other


def test_second_user_joins_the_first_ones_server_which_outlives_its_starter_until_the_last_leaves(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    first = join_or_start(path, start_server)
    second = join_or_start(path, start_server)
    assert (first.started_here, second.started_here) == (True, False)
    assert second.url == first.url and second.pid == first.pid
    redis.Redis.from_url(first.url).set("k", "v")
    leave(first)  # the starter goes; the other still uses the server
    assert redis.Redis.from_url(second.url).get("k") == b"v" and path.exists()
    leave(second)  # the last user: file removed, server stopped
    assert not path.exists() and not answers(first.url) and not _running(first.pid)
    assert os.listdir(tmp_path) == []


def test_a_server_whose_users_died_without_leaving_removes_its_file_and_stops(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    server = join_or_start(path, start_server)
    os.close(server.lock_fd)  # what the kernel does when the process holding it is killed
    wait_until(lambda: not path.exists() and not _running(server.pid), timeout=10)


def test_a_stale_file_nobody_holds_is_replaced(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    stale = {"service": SERVICE, "host": "127.0.0.1", "port": free_port(), "pid": 1, "token": "gone"}
    path.write_text(json.dumps(stale))
    server = join_or_start(path, start_server)
    try:
        assert server.started_here and json.loads(path.read_text())["token"] == server.token
    finally:
        leave(server)
    assert not path.exists()


def test_a_stale_file_another_instance_still_holds_refuses_start_up_and_stays(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    stale = json.dumps({"service": SERVICE, "host": "127.0.0.1", "port": free_port(), "pid": 1, "token": "gone"})
    path.write_text(stale)
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # an instance whose server died under it
        with pytest.raises(EmbeddedConflict, match="still uses it.*REDIS_URL"):
            join_or_start(path, start_server)
    assert path.read_text() == stale


@pytest.mark.parametrize("content", ["", "6379\n", '{"service": "something else", "port": 6379}'])
def test_a_file_this_service_did_not_write_is_never_touched(tmp_path, content):
    path = tmp_path / "items.sqlite3.redis"
    path.write_text(content)
    with pytest.raises(EmbeddedConflict, match="not written by this service.*REDIS_URL"):
        join_or_start(path, start_server)
    assert path.read_text() == content and sorted(os.listdir(tmp_path)) == ["items.sqlite3.redis"]


def test_a_file_held_exclusively_too_long_is_refused_by_the_deadline_not_waited_on_forever(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    stuck = {"service": SERVICE, "host": "127.0.0.1", "port": free_port(), "pid": 1, "token": "stuck"}
    path.write_text(json.dumps(stuck))
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a last user that hangs while it stops its server
    try:
        with pytest.raises(EmbeddedConflict):
            join_or_start(path, start_server, timeout=0.5)
    finally:
        os.close(fd)
    assert json.loads(path.read_text())["token"] == "stuck"  # left to its holder
