"""The test suite's TcpProxy: pause() silences a connection at once, for bytes already on their way too."""

from __future__ import annotations

import socket
import threading

from tests.support import TcpProxy


def echo_server() -> socket.socket:
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    return server


def test_bytes_sent_just_after_pause_are_held_until_resume():
    server = echo_server()
    proxy = TcpProxy(server.getsockname()[1])
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    client.sendall(b"ping")
    assert client.recv(4) == b"ping"  # relaying; each pump now waits in its recv
    for n in range(20):  # at once after pause(): a pump inside its recv must not relay them
        proxy.pause()
        client.sendall(b"x")
        client.settimeout(0.3)
        try:
            leaked = client.recv(1)
        except TimeoutError:
            leaked = b""
        assert leaked == b"", f"round {n}: relayed while paused"
        proxy.resume()
        client.settimeout(5)
        assert client.recv(1) == b"x"  # held, then delivered on resume
    client.close()
    proxy.cut()
    server.close()
