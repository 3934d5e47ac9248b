"""Where the poller judges a request to end (request_framing.py): whole requests only, malformed framing and
bodies over the cap refused at once, and the same verdict however the bytes are split."""

from __future__ import annotations

import json

import pytest

from request_framing import HEAD_BYTES, Limits, Progress, Refusal, RequestFraming

LIMITS = Limits(body_bytes=100, line_bytes=64)
GET = b"GET /items/a HTTP/1.1\r\nHost: t\r\n\r\n"
PUT = b"PUT /items/a HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n"
CHUNKED = b"PUT /items/a HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
EXPECT = b"PUT /items/a HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
WHOLE, PARTIAL = Progress.WHOLE, Progress.PARTIAL


def judged(received: bytes, bytewise: bool = False) -> Progress | int:
    """The verdict on `received` (fed a byte at a time if `bytewise`); a refusal as its status."""
    framing = RequestFraming(LIMITS)
    verdict: Progress | Refusal = PARTIAL
    for end in range(1, len(received) + 1) if bytewise else [len(received)]:
        verdict = framing.judge(received[:end])
        if isinstance(verdict, Refusal):
            return verdict.status
        if verdict is WHOLE:  # the worker judges no further
            return verdict
    return verdict


@pytest.mark.parametrize(
    "received, expected",
    [
        (b"", PARTIAL),
        (b"GET /items/a HT", PARTIAL),
        (GET[:-2], PARTIAL),
        (GET, WHOLE),
        (b"\r\n" + GET, WHOLE),  # one empty line before the request line is allowed
        (GET + b"GET /items/b", WHOLE),  # pipelined: the first one is whole
        (PUT, PARTIAL),
        (PUT + b"12345", PARTIAL),
        (PUT + b"1234567890", WHOLE),
        (PUT.replace(b"Content-Length", b"content-LENGTH") + b"12345", PARTIAL),
        (PUT.replace(b"10", b"101"), 413),  # over the cap: refused before a byte of it is read
        (PUT.replace(b"10", b"ten"), 400),
        (PUT.replace(b"10", b"1" * 19), 400),
        (PUT.replace(b"Host: t", b"Content-Length: 10"), 400),  # two lengths
        (PUT.replace(b"Host: t", b"Transfer-Encoding: chunked"), 400),  # a length and chunked
        (PUT.replace(b"Host: t", b"X: a\r\n b"), 400),  # obsolete line folding
        (CHUNKED, PARTIAL),
        (CHUNKED + b"3\r\nabc\r\n", PARTIAL),
        (CHUNKED + b"3\r\nabc\r\n0\r\n", PARTIAL),
        (CHUNKED + b"3\r\nabc\r\n0\r\n\r\n", WHOLE),
        (CHUNKED + b'3;a=b;c="d"\r\nabc\r\nA\r\n0123456789\r\n0\r\n\r\nGET /', WHOLE),
        (CHUNKED + b"65\r\n", 413),  # 101 bytes announced
        (CHUNKED + b"32\r\n" + b"a" * 50 + b"\r\n33\r\n", 413),  # 50 + 51
        (CHUNKED.replace(b"chunked", b"gzip, chunked"), 501),
        (CHUNKED.replace(b"chunked", b"chunked, chunked"), 400),
        (CHUNKED.replace(b"HTTP/1.1", b"HTTP/1.0"), 400),
        (CHUNKED + b"7" * 65, 400),  # a chunk-size line over line_bytes
        (b"GET / HTTP/1.1\r\nX: " + b"a" * HEAD_BYTES, 431),
        (b"GET / HTTP/1.1\nHost: t\n\n", 400),  # bare LF: refused, not waited on
        (b"GET / HTTP/1.1\r\nHost: t\n", 400),
        (EXPECT, Progress.CONTINUE),
        (EXPECT + b"{}", WHOLE),  # it did not wait: no 100 due
        (EXPECT.replace(b"Content-Length: 2", b"Content-Length: 101"), 413),  # no 100 for a body refused anyway
        (EXPECT.replace(b"100-continue", b"200-ok"), 417),
        (EXPECT.replace(b"HTTP/1.1", b"HTTP/1.0"), PARTIAL),  # ignored in HTTP/1.0 (RFC 9110 10.1.1)
    ],
    ids=lambda value: repr(value)[:60],
)
def test_verdict(received, expected):
    assert judged(received) == expected
    assert judged(received, bytewise=True) == expected  # byte by byte: the same verdict, resumed not restarted


@pytest.mark.parametrize(
    "body",
    [
        b"-1\r\n",  # a negative size
        b"0x2\r\nab\r\n0\r\n\r\n",  # a 0x prefix
        b"2 \r\nab\r\n0\r\n\r\n",  # whitespace after the size, no extension
        b"2;a\nb\r\nab\r\n0\r\n\r\n",  # a bare LF in an extension
        b"2;a\rb\r\nab\r\n0\r\n\r\n",  # a bare CR in an extension
        b"2\r\nabc\r\n0\r\n\r\n",  # data longer than its size: no CRLF after it
        b"2\r\nab0\r\n\r\n",  # the CRLF after the data missing
        b"\r\n",  # no size at all
        b"0\r\nContent-Length: 5\r\n\r\nhello",  # a trailer (framing in it, here)
        b"0\r\nX-Checksum: 1\r\n\r\n",  # any trailer: the service reads none
    ],
)
def test_malformed_chunked_bodies_are_refused_400(body):
    assert judged(CHUNKED + body) == 400
    assert judged(CHUNKED + body, bytewise=True) == 400


def test_a_refusal_is_a_json_answer_that_closes_the_connection():
    refusal = RequestFraming(LIMITS).judge(CHUNKED + b"0x2\r\n")
    assert isinstance(refusal, Refusal)
    head, _, body = refusal.response().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head and json.loads(body)["error"] == "bad_request"


def test_continue_is_asked_for_once():
    framing = RequestFraming(LIMITS)
    assert framing.judge(EXPECT) is Progress.CONTINUE
    assert framing.judge(EXPECT) is PARTIAL
    assert framing.judge(EXPECT + b"{}") is WHOLE
