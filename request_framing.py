"""Where a request ends, judged from the bytes received so far (buffering_worker.py's poller): a thread is
given only a request that has arrived whole, head and body, and what will not be served is answered at once.

The rules are RFC 9112's, applied strictly; what they let through, gunicorn's parser (which parses the same
bytes again in the thread) reads to the same end, so no thread ever reads past what the poller holds:
- every line of the head and of the chunk framing ends with CRLF (a bare LF: 400), and the head is at most
  HEAD_BYTES (431);
- a body is framed by one Content-Length of digits or by `Transfer-Encoding: chunked` alone (another coding:
  501; both, two lengths, chunked twice or in HTTP/1.0, an obsolete folded line: 400);
- a body is at most MAX_ITEM_BYTES, its chunk framing at most FRAMING_BYTES (413, as soon as it is known);
- a chunk size is hex digits (then gunicorn's extension grammar), its data is followed by CRLF, and the last
  chunk by CRLF alone: trailer fields are refused (400), the service reads none;
- `Expect: 100-continue` asks the poller for `100 Continue` once the head is judged acceptable; any other
  expectation: 417.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass

from gunicorn.http.body import CHUNK_EXT_RE  # gunicorn's own grammar: what it accepts, we accept

HEAD_BYTES = 32 * 1024  # the largest request head (nginx's default limit too)
FRAMING_BYTES = 32 * 1024  # chunk-size lines and CRLFs of one body: larger chunks need little of it
HEX = re.compile(rb"[0-9A-Fa-f]+")
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Progress(enum.Enum):
    PARTIAL = "wait for more bytes"
    CONTINUE = "the client waits for `100 Continue` before it sends the body: send it, then wait"
    WHOLE = "the request has arrived whole: a thread may take it"


@dataclass(frozen=True)
class Refusal:
    """An answer given instead of serving the request; the connection then closes."""

    status: int
    reason: str
    error: str
    message: str

    def response(self) -> bytes:
        body = json.dumps({"error": self.error, "message": self.message}).encode()
        head = (
            f"HTTP/1.1 {self.status} {self.reason}\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body


Verdict = Progress | Refusal


def bad_request(message: str) -> Refusal:
    return Refusal(400, "Bad Request", "bad_request", message)


def too_large(message: str) -> Refusal:
    return Refusal(413, "Request Entity Too Large", "request_entity_too_large", message)


def timed_out(seconds: float) -> Refusal:
    message = f"the request did not arrive within CLIENT_TIMEOUT ({seconds:g} s); send it again, faster"
    return Refusal(408, "Request Timeout", "request_timeout", message)


HEAD_TOO_LARGE = Refusal(
    431,
    "Request Header Fields Too Large",
    "request_header_fields_too_large",
    f"the request head is over {HEAD_BYTES} bytes",
)
BARE_LF = bad_request("every line of a request head and of chunked framing must end with CRLF, not a bare LF")


@dataclass(frozen=True)
class Limits:
    body_bytes: int  # MAX_ITEM_BYTES
    line_bytes: int  # a chunk-size line (gunicorn's limit_request_field_size)


class RequestFraming:
    """One request, read from the start of its connection's buffer; `judge` resumes where it stopped, so a
    request that trickles in is scanned once in all."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.pos = 0  # the buffer before this is judged
        self.scanned = 0  # searched for the current line's end up to here
        self.step = self._head
        self.left = 0  # bytes of the Content-Length body, or of the current chunk, still to come
        self.body = 0  # decoded chunked body bytes so far
        self.framing = 0  # chunk framing bytes so far
        self.continue_due = False

    def judge(self, received: bytes | bytearray) -> Verdict:
        while True:
            verdict = self.step(received)
            if verdict is Progress.PARTIAL and self.continue_due:
                self.continue_due = False
                return Progress.CONTINUE
            if verdict is not None:
                return verdict

    def _head(self, buf: bytes | bytearray) -> Verdict | None:
        end = buf.find(b"\r\n\r\n", max(0, self.scanned - 3))
        if has_bare_lf(buf, self.scanned, len(buf) if end < 0 else end):
            return BARE_LF
        if end < 0:
            self.scanned = len(buf)
            return HEAD_TOO_LARGE if len(buf) > HEAD_BYTES else Progress.PARTIAL
        if end > HEAD_BYTES:
            return HEAD_TOO_LARGE
        self.pos = self.scanned = end + 4
        return self._framing(bytes(buf[:end]))

    def _framing(self, head: bytes) -> Verdict | None:
        if b"\r\n " in head or b"\r\n\t" in head:
            return bad_request("a header line starts with whitespace (obsolete line folding): unfold it")
        lowered = head.lower()  # most requests (a GET) have none of these: no need to look at each line
        if b"\r\ncontent-length:" not in lowered and b"\r\ntransfer-encoding:" not in lowered:
            if b"\r\nexpect:" not in lowered:
                return Progress.WHOLE
        lines = head.split(b"\r\n")
        if lines[0] == b"" and len(lines) > 1:
            del lines[0]  # one empty line before the request line is allowed (RFC 9112 section 2.2)
        version = lines[0].rpartition(b" ")[2]
        lengths, codings, expectations = [], [], []
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name, value = name.lower(), value.strip(b" \t")
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                codings += [coding.strip(b" \t").lower() for coding in value.split(b",")]
            elif name == b"expect":
                expectations.append(value.lower())
        if any(expectation != b"100-continue" for expectation in expectations):
            return Refusal(417, "Expectation Failed", "expectation_failed", "the only expectation met is 100-continue")
        self.continue_due = bool(expectations) and version == b"HTTP/1.1"
        if codings:
            return self._chunked(codings, lengths, version)
        if not lengths:
            return Progress.WHOLE
        if len(lengths) > 1 or not lengths[0].isdigit() or len(lengths[0]) > 18:
            return bad_request("send one Content-Length header, of at most 18 decimal digits")
        self.left = int(lengths[0])
        if self.left > self.limits.body_bytes:
            return too_large(f"the body is larger than MAX_ITEM_BYTES ({self.limits.body_bytes} bytes)")
        self.step = self._length_body
        return None

    def _chunked(self, codings: list[bytes], lengths: list[bytes], version: bytes) -> Verdict | None:
        if any(coding != b"chunked" for coding in codings):
            message = "the only transfer coding served is chunked; send the body plain, with a Content-Length"
            return Refusal(501, "Not Implemented", "not_implemented", message)
        if len(codings) > 1 or lengths or version != b"HTTP/1.1":
            return bad_request("Transfer-Encoding: chunked is sent once, without Content-Length, in HTTP/1.1")
        self.step = self._chunk_size
        return None

    def _length_body(self, buf: bytes | bytearray) -> Verdict:
        return Progress.WHOLE if len(buf) - self.pos >= self.left else Progress.PARTIAL

    def _line(self, buf: bytes | bytearray) -> bytes | Verdict:
        """The next CRLF-ended line of chunk framing, or how far it is from arriving."""
        end = buf.find(b"\r\n", max(self.pos, self.scanned - 1))
        if has_bare_lf(buf, max(self.pos, self.scanned), len(buf) if end < 0 else end, lf_before_crlf=True):
            return BARE_LF
        if end < 0:
            self.scanned = len(buf)
            if len(buf) - self.pos > self.limits.line_bytes:
                return bad_request(f"a chunk-size line is over {self.limits.line_bytes} bytes")
            return Progress.PARTIAL
        line = bytes(buf[self.pos : end])
        self.framing += end + 2 - self.pos
        self.pos = self.scanned = end + 2
        if self.framing > FRAMING_BYTES:
            return too_large(f"the chunk framing is over {FRAMING_BYTES} bytes: send fewer, larger chunks")
        return line

    def _chunk_size(self, buf: bytes | bytearray) -> Verdict | None:
        line = self._line(buf)
        if not isinstance(line, bytes):
            return line
        size, semicolon, extensions = line.partition(b";")
        if semicolon:
            size = size.rstrip(b" \t")
        if not HEX.fullmatch(size) or (semicolon and not CHUNK_EXT_RE.fullmatch(b";" + extensions)):
            return bad_request("a chunk starts with its size in hex digits (then ;extensions), then CRLF")
        self.left = int(size, 16)
        if self.body + self.left > self.limits.body_bytes:
            return too_large(f"the body is larger than MAX_ITEM_BYTES ({self.limits.body_bytes} bytes)")
        self.step = self._chunk_data if self.left else self._last_crlf
        return None

    def _chunk_data(self, buf: bytes | bytearray) -> Verdict | None:
        end = self.pos + self.left  # where the chunk's CRLF starts
        if buf[end : end + 2] not in (b"\r\n", b"\r", b""):
            return bad_request("a chunk's data must be followed by CRLF (is its size right?)")
        if len(buf) < end + 2:
            return Progress.PARTIAL
        self.body += self.left
        self.framing += 2
        self.pos = self.scanned = end + 2
        self.step = self._chunk_size
        return None

    def _last_crlf(self, buf: bytes | bytearray) -> Verdict:
        if buf[self.pos : self.pos + 2] not in (b"\r\n", b"\r", b""):
            return bad_request("trailer fields are not accepted: end a chunked body with 0 CRLF CRLF")
        return Progress.WHOLE if len(buf) >= self.pos + 2 else Progress.PARTIAL


def has_bare_lf(buf: bytes | bytearray, start: int, end: int, lf_before_crlf: bool = False) -> bool:
    """Whether buf[start:end] holds an LF that is not the end of a CRLF. With `lf_before_crlf`, `end` is the
    first CRLF at or after `start` (or the buffer's end), so any LF before it is bare."""
    if lf_before_crlf:
        return buf.find(b"\n", start, end) >= 0
    # Every LF in the range that ends a CRLF belongs to a CRLF starting at start - 1 or later.
    return buf.count(b"\n", start, end) != buf.count(b"\r\n", max(0, start - 1), end)
