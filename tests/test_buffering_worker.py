"""When the poller hands a request to a thread (buffering_worker.arrival): whole requests only, except what
it does not buffer."""

from __future__ import annotations

import pytest

from buffering_worker import HEAD_BYTES, Arrival, arrival

GET = b"GET /items/a HTTP/1.1\r\nHost: t\r\n\r\n"
PUT = b"PUT /items/a HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"


@pytest.mark.parametrize(
    "received, expected",
    [
        (b"", Arrival.PARTIAL),
        (b"GET /items/a HT", Arrival.PARTIAL),
        (GET[:-2], Arrival.PARTIAL),
        (GET, Arrival.READY),
        (GET + b"GET /items/b", Arrival.READY),  # pipelined: the first one is whole
        (PUT, Arrival.PARTIAL),
        (PUT + b"12345", Arrival.PARTIAL),
        (PUT + b"1234567890", Arrival.READY),
        (PUT.replace(b"Content-Length", b"content-LENGTH") + b"12345", Arrival.PARTIAL),
        (PUT.replace(b"10", b"70000"), Arrival.READY),  # over the cap: the app answers 413 without reading
        (PUT.replace(b"Content-Length: 10", b"Transfer-Encoding: chunked"), Arrival.READY),  # the thread reads it
        (PUT.replace(b"Host: t", b"Expect: 100-continue"), Arrival.READY),  # the client waits for our 100
        (PUT.replace(b"10", b"ten"), Arrival.READY),  # gunicorn's parser answers 400
        (b"GET / HTTP/1.1\r\nX: " + b"a" * HEAD_BYTES, Arrival.HEAD_TOO_LARGE),
    ],
)
def test_arrival(received, expected):
    assert arrival(received, body_bytes=65536) is expected
