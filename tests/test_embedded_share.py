"""Default instances share one embedded Redis through a file beside the database (cache/embedded/share.py)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import stat

import pytest
import redis

from cache.embedded.server import start_server
from cache.embedded.share import SERVICE, EmbeddedConflict, _running, file_for, join_or_start, leave
from tests.embedded_access import NOBODY, connect_as, tcp_listeners
from tests.support import wait_until


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


def write_private(path, text: str) -> None:
    """A file as this service writes it: this user's, mode 0600."""
    path.write_text(text)
    path.chmod(0o600)


def gone_socket(tmp_path) -> str:
    return str(tmp_path / "gone" / "redis.sock")


def test_a_stale_file_nobody_holds_is_replaced(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    stale = {"service": SERVICE, "socket": gone_socket(tmp_path), "pid": 1, "token": "gone"}
    write_private(path, json.dumps(stale))
    server = join_or_start(path, start_server)
    try:
        assert server.started_here and json.loads(path.read_text())["token"] == server.token
    finally:
        leave(server)
    assert not path.exists()


def test_a_stale_file_another_instance_still_holds_refuses_start_up_and_stays(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    stale = json.dumps({"service": SERVICE, "socket": gone_socket(tmp_path), "pid": 1, "token": "gone"})
    write_private(path, stale)
    with open(path) as held:
        fcntl.flock(held, fcntl.LOCK_SH)  # an instance whose server died under it
        with pytest.raises(EmbeddedConflict, match="still uses it.*REDIS_URL"):
            join_or_start(path, start_server)
    assert path.read_text() == stale


@pytest.mark.parametrize("content", ["", "6379\n", '{"service": "something else", "port": 6379}'])
def test_a_file_this_service_did_not_write_is_never_touched(tmp_path, content):
    path = tmp_path / "items.sqlite3.redis"
    write_private(path, content)
    with pytest.raises(EmbeddedConflict, match="not written by this service.*REDIS_URL"):
        join_or_start(path, start_server)
    assert path.read_text() == content and sorted(os.listdir(tmp_path)) == ["items.sqlite3.redis"]


def test_a_file_held_exclusively_too_long_is_refused_by_the_deadline_not_waited_on_forever(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    stuck = {"service": SERVICE, "socket": gone_socket(tmp_path), "pid": 1, "token": "stuck"}
    write_private(path, json.dumps(stuck))
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # a last user that hangs while it stops its server
    try:
        with pytest.raises(EmbeddedConflict):
            join_or_start(path, start_server, timeout=0.5)
    finally:
        os.close(fd)
    assert json.loads(path.read_text())["token"] == "stuck"  # left to its holder


def test_a_file_other_users_could_read_or_own_is_refused_and_left_alone(tmp_path):
    """The file names the server this cache trusts: one another user could have written is not used."""
    path = tmp_path / "items.sqlite3.redis"
    content = json.dumps({"service": SERVICE, "socket": gone_socket(tmp_path), "pid": 1, "token": "t"})
    path.write_text(content)
    path.chmod(0o644)
    with pytest.raises(EmbeddedConflict, match="not private to this user.*mode 644.*REDIS_URL"):
        join_or_start(path, start_server)
    assert path.read_text() == content and sorted(os.listdir(tmp_path)) == ["items.sqlite3.redis"]


def test_the_server_listens_only_on_a_private_unix_socket_that_other_users_cannot_connect_to(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    server = join_or_start(path, start_server)
    try:
        directory = os.path.dirname(server.socket)
        assert server.url.startswith("unix://") and stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(server.socket).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it carries the token and names the socket
        assert {os.stat(name).st_uid for name in (directory, server.socket, path)} == {os.geteuid()}
        assert tcp_listeners(server.pid) == set()
        assert connect_as(NOBODY, server.socket) == "denied"
        assert redis.Redis.from_url(server.url).ping() is True  # this user, the service's, is served
    finally:
        leave(server)
    assert not os.path.exists(directory)  # the last user left: nothing left in the temporary directory


def hostile_scripts(marker: str) -> list[str]:
    """Scripts that create `marker` when a script can reach Python or the host (they all do on a plain
    fakeredis), and one that reads a Python object's attributes (the way from there to its module)."""
    return [
        f"return python.eval(\"__import__('os').mkdir('{marker}')\")",
        f"return python.builtins.exec(\"__import__('os').mkdir('{marker}')\")",
        f"return os.execute('mkdir {marker}')",
        f"return io.open('{marker}', 'w') and 1",
        f"return loadstring('return os.execute')()('mkdir {marker}')",
        "return tostring(redis.call.__globals__)",
    ]


def test_scripts_sent_to_the_server_cannot_reach_python_or_the_host(tmp_path):
    server = join_or_start(tmp_path / "items.sqlite3.redis", start_server)
    marker = str(tmp_path / "ran")
    try:
        for script in hostile_scripts(marker):
            with pytest.raises(redis.RedisError):  # fakeredis may garble the error reply: any error will do
                redis.Redis.from_url(server.url, socket_timeout=2).eval(script, 0)
            assert not os.path.exists(marker), script
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        assert client.eval("return redis.call('set', KEYS[1], ARGV[1])", 1, "k", "v") == b"OK"
        assert client.get("k") == b"v"
    finally:
        leave(server)


def test_connections_to_the_unix_socket_keep_states_of_their_own(tmp_path):
    """fakeredis keeps one state per client address; unix peers have none, so each gets its own number."""
    server = join_or_start(tmp_path / "items.sqlite3.redis", start_server)
    try:
        first, second = (redis.Redis.from_url(server.url, single_connection_client=True) for _ in range(2))
        first.execute_command("SELECT", 1)
        first.set("only-in-db-1", "x")
        assert first.get("only-in-db-1") == b"x" and second.get("only-in-db-1") is None
        first.close()
        second.close()
    finally:
        leave(server)


def test_a_server_stopped_under_its_users_keeps_its_directory_so_nobody_else_can_take_its_name(tmp_path):
    path = tmp_path / "items.sqlite3.redis"
    server = join_or_start(path, start_server)
    directory = os.path.dirname(server.socket)
    try:
        os.kill(server.pid, signal.SIGTERM)  # an operator's kill; this instance still uses the server
        wait_until(lambda: not _running(server.pid), timeout=10)
        assert os.path.isdir(directory) and os.listdir(directory) == []
    finally:
        os.close(server.lock_fd)
        os.rmdir(directory)


def test_a_directory_every_user_may_write_to_without_the_sticky_bit_is_refused(tmp_path):
    """Anyone could remove the file there (instances would split over two servers) or swap it."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(EmbeddedConflict, match="writable by every user.*REDIS_URL"):
        join_or_start(shared / "items.sqlite3.redis", start_server)
    assert os.listdir(shared) == []
    shared.chmod(0o1777)  # like /tmp: others cannot remove or rename our files
    leave(join_or_start(shared / "items.sqlite3.redis", start_server))


def test_a_directory_it_creates_is_not_writable_by_others_even_under_umask_0(tmp_path):
    umask = os.umask(0)
    try:
        server = join_or_start(tmp_path / "instance" / "items.sqlite3.redis", start_server)
    finally:
        os.umask(umask)
    leave(server)
    assert stat.S_IMODE((tmp_path / "instance").stat().st_mode) == 0o755
