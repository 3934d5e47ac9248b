"""One embedded Redis per database on this machine: several default instances (no REDIS_URL) find it
through a small file beside the SQLite database, so they never silently disagree.

The file (`<database>.redis`, JSON: socket, pid, token; 0600) is created atomically (written under a
temporary name, then hard-linked into place: only one creator wins). Every instance that uses the server
holds a shared `flock` on the file for as long as it runs; the kernel drops it when the process dies, even
by SIGKILL. So "is anyone still using this server?" is "can an exclusive lock be taken?":
- the server outlives the instance that started it and stops when the last user is gone: a user's clean
  exit (`leave`) that finds itself last removes the file and stops the server; the server also checks
  every POLL_SECONDS and stops itself (removing its file) if its users died without saying so;
- a file whose server does not answer with its token is stale: replaced if nobody holds it, else start-up
  is refused with a message saying what to set (instances still use a server that died: never two caches);
- a file at that path that this service did not write is never touched: start-up is refused instead;
  so is one that another user owns or could read (it points at the server the cache will trust).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cache.embedded.server import MARKER_KEY, start_server

SERVICE = "item-cache embedded redis"  # the file says who wrote it; any other file at the path is left alone
StartServer = Callable[[Path, Path], tuple[str, str, int]]  # (own file, shared file) -> socket, token, pid


class EmbeddedConflict(RuntimeError):
    """The embedded Redis for this database cannot be shared safely; the message says what to set."""


@dataclass
class SharedServer:
    """The embedded server this process uses, and the open file whose shared lock says so."""

    path: Path
    socket: str
    pid: int
    token: str
    started_here: bool
    lock_fd: int

    @property
    def url(self) -> str:
        return f"unix://{self.socket}?db=0"


def file_for(database_url: str, instance_dir: Path) -> Path:
    """`<file>.redis` beside a SQLite database; for another database, one file per URL in `instance_dir`."""
    if database_url.startswith("sqlite:///"):
        return Path(database_url.removeprefix("sqlite:///") + ".redis")
    digest = hashlib.sha256(database_url.encode()).hexdigest()[:16]
    return instance_dir / f"embedded-redis-{digest}.redis"


def use_shared(database_url: str) -> SharedServer:
    """Join or start the embedded Redis for `database_url` and point this process's children at it
    (REDIS_URL, REDIS_EMBEDDED); exit with one line saying what to set when it cannot be shared safely."""
    from config import INSTANCE_DIR

    path = file_for(database_url, INSTANCE_DIR)
    try:
        server = join_or_start(path, start_server)
    except EmbeddedConflict as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    except OSError as exc:  # e.g. the database's directory is read-only
        message = f"cannot share the embedded Redis through {path} ({exc}); set REDIS_URL"
        raise SystemExit(f"configuration error: {message}") from None
    os.environ["REDIS_URL"] = server.url
    os.environ["REDIS_EMBEDDED"] = "1"
    return server


def join_or_start(path: Path, start: StartServer, timeout: float = 15.0) -> SharedServer:
    """Use the live server named in `path`, or start one with `start(tmp_path, path)` -> (socket, token, pid)
    and publish it there. Raises EmbeddedConflict when neither is safe."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)  # 0755 even under umask 0: see below
    mode = path.parent.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:  # anyone could remove or replace the file
        raise EmbeddedConflict(f"{path.parent} is writable by every user: use a private directory, or set REDIS_URL")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            server = _create(path, start)
            if server is not None:
                return server
            continue  # another instance published its server first: use that one
        if not _lock_shared(fd, deadline):  # held exclusively only while a stopping server or last user leaves
            os.close(fd)
            continue
        if not _is_current(fd, path):
            os.close(fd)
            continue  # removed or replaced while we waited for the lock: look again
        _check_private(fd, path)
        info = _read(fd)
        if info is None:
            os.close(fd)
            raise EmbeddedConflict(
                f"{path} exists and was not written by this service: remove it, or set REDIS_URL to a Redis server"
            )
        if _answers(info):
            return SharedServer(path, info["socket"], info["pid"], info["token"], False, fd)
        os.close(fd)
        _remove_stale(path, info)
    raise EmbeddedConflict(f"could not start or join the embedded Redis named in {path}; set REDIS_URL")


def _lock_shared(fd: int, deadline: float) -> bool:
    """A shared lock on `fd` before `deadline` (False if not): a stuck last user must not hang our start."""
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)


def leave(server: SharedServer) -> None:
    """This process stops using the server; if no other process uses it, remove the file and stop it."""
    os.close(server.lock_fd)
    fd = _open_if_current(server.path, server.token)
    if fd is None:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)  # another instance still uses it: it outlives us
        return
    try:
        if _is_current(fd, server.path):  # not replaced between our look and our lock
            os.unlink(server.path)
        _stop(server)
    finally:
        os.close(fd)


def _create(path: Path, start: StartServer) -> SharedServer | None:
    """Start a server and publish it at `path`; None if another instance published first (ours is stopped)."""
    # Random, not the pid: a container's pid repeats on every start, and a start killed here leaves its file.
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_SH)  # before the server starts: it must see a user from its first look
    try:
        socket, token, pid = start(tmp, path)
        info = {"service": SERVICE, "socket": socket, "pid": pid, "token": token}
        os.write(fd, json.dumps(info).encode() + b"\n")
        try:
            os.link(tmp, path)  # atomic: fails if any file is at `path` now
        except FileExistsError:
            os.close(fd)
            fd = -1
            _signal(pid)  # it has no users: it would stop by itself within POLL_SECONDS; now is sooner
            return None
        return SharedServer(path, socket, pid, token, True, fd)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _remove_stale(path: Path, info: dict[str, Any]) -> None:
    """Remove the file of a server that no longer answers, unless an instance still holds it (refuse then)."""
    fd = _open_if_current(path, info["token"])
    if fd is None:
        return  # already replaced or removed by another instance
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise EmbeddedConflict(
            f"the embedded Redis named in {path} (pid {info['pid']}, {info['socket']}) does not answer, "
            "and another instance still uses it: stop the instances using this database, or set REDIS_URL"
        ) from None
    try:
        if _is_current(fd, path):
            os.unlink(path)
    finally:
        os.close(fd)


def _open_if_current(path: Path, token: str) -> int | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    info = _read(fd)
    if not info or info.get("token") != token:
        os.close(fd)
        return None
    return fd


def _check_private(fd: int, path: Path) -> None:
    """The open file is this user's and nobody else's (else EmbeddedConflict, the file left alone)."""
    stat = os.fstat(fd)
    if stat.st_uid != os.geteuid() or stat.st_mode & 0o077:
        os.close(fd)
        raise EmbeddedConflict(
            f"{path} is not private to this user (owner uid {stat.st_uid}, mode {stat.st_mode & 0o777:o}): "
            "remove it, or set REDIS_URL"
        )


def _is_current(fd: int, path: Path) -> bool:
    """The open file is still the one at `path` (not removed or replaced since it was opened)."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict[str, Any] | None:
    """The file's fields, or None if it is not a file this service wrote (it is complete once at `path`)."""
    raw = os.pread(fd, 4096, 0)
    try:
        info = json.loads(raw)
    except ValueError:
        return None
    fields = {"socket": str, "pid": int, "token": str}
    if not isinstance(info, dict) or info.get("service") != SERVICE:
        return None
    if not all(isinstance(info.get(name), kind) for name, kind in fields.items()):
        return None
    return info


def _answers(info: dict[str, Any]) -> bool:
    """The server named in the file is up and is the one that wrote it (its token, not a stranger's port)."""
    try:
        no_retry = Retry(NoBackoff(), 0)  # a refused connection is the answer, not something to retry
        client = redis.Redis(
            unix_socket_path=info["socket"], socket_timeout=1, socket_connect_timeout=1, retry=no_retry
        )
        with contextlib.closing(client):
            return bool(client.get(MARKER_KEY) == info["token"].encode())
    except redis.RedisError:
        return False


def _stop(server: SharedServer) -> None:
    """Stop the server (only after checking it is still the one that wrote the file) and wait for it."""
    if not _answers({"socket": server.socket, "token": server.token}):
        return
    _signal(server.pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running(server.pid):
        time.sleep(0.02)


def _signal(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a child of a process that has not reaped it yet)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"
