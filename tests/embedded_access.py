"""What another local process can do with the embedded Redis: connect as another user, find TCP listeners."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

NOBODY = 65534


def connect_as(uid: int, path: str) -> str:
    """Try to connect to the unix socket `path` as user `uid` (in a forked child): "connected", "denied"
    or "failed"."""
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    pid = os.fork()
    if pid == 0:  # the child only switches user, connects and exits: nothing else runs after the fork
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(path)
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {0: "connected", 13: "denied"}.get(os.waitstatus_to_exitcode(status), "failed")


def tcp_listeners(pid: int) -> set[int]:
    """Inodes of the TCP sockets process `pid` listens on (IPv4 and IPv6)."""
    owned = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            owned.add(int(target[8:-1]))
    listening = set()
    for table in ("tcp", "tcp6"):
        for row in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = row.split()
            if fields[3] == "0A":  # LISTEN
                listening.add(int(fields[9]))
    return owned & listening
