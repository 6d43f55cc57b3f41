"""A small sans-I/O HTTP/1.1 client codec: requests to bytes, bytes to responses.

Theory of operation. The lease keepalive talks to etcd's JSON gateway over one persistent
connection (cluster.etcd_gateway holds the I/O); this module only turns a request into bytes
(`encode_request`) and received bytes into `Response`s (`ResponseReader`: `receive_data(chunk)`,
`b""` at end of file, then `next_response()` until it returns None, needing more data), as h11
does, for the little a client of etcd needs: a status line, headers, and a body framed by
Content-Length, by chunked transfer coding (what etcd's gateway sends for a streaming call),
or by the end of the connection. Everything is bounded: the status line and headers together
(`max_head`), a chunk-size line, the trailers, and the body (`max_body`); what exceeds a bound
or breaks the grammar is an `HttpProtocolError`, after which the connection is useless (the
caller closes it). Informational (1xx) responses are skipped.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

MAX_HEAD = 16 * 1024  # status line and headers (and, apart, the trailers)
MAX_BODY = 256 * 1024  # a keepalive's answer is ~170 bytes, an error's ~200
MAX_CHUNK_LINE = 64  # hex size and chunk extensions
_HEX_DIGITS = b"0123456789abcdefABCDEF"


class HttpProtocolError(Exception):
    """The peer's bytes are not an HTTP/1.1 response we accept: close the connection."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[bytes, bytes], ...]  # names lower-cased, in the order received
    body: bytes
    keep_alive: bool  # False: the server closes the connection after this response

    def header(self, name: bytes) -> bytes | None:
        """The first value of header `name` (lower-case), or None."""
        return next((value for key, value in self.headers if key == name), None)


def _token_ok(text: str) -> bool:
    return bool(text) and all(33 <= ord(c) <= 126 and c not in '()<>@,;:\\"/[]?={}'
                              for c in text)


def encode_request(method: str, target: str, host: str, body: bytes = b"", *,
                   headers: Sequence[tuple[str, str]] = ()) -> bytes:
    """One request with a Content-Length body. ValueError for a name or value that would
    break the framing (a CR, LF or NUL smuggled into a header)."""
    if not _token_ok(method) or not target.startswith("/") or any(
            c in target for c in " \r\n\0"):
        raise ValueError(f"bad request line: {method!r} {target!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}",
             f"Content-Length: {len(body)}"]
    for name, value in headers:
        if not _token_ok(name) or any(c in value for c in "\r\n\0"):
            raise ValueError(f"bad header {name!r}")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _State(enum.Enum):
    HEAD = enum.auto()
    LENGTH = enum.auto()  # a Content-Length body
    CHUNK_SIZE = enum.auto()
    CHUNK_DATA = enum.auto()
    CHUNK_END = enum.auto()  # the CRLF after a chunk's data
    TRAILERS = enum.auto()
    UNTIL_EOF = enum.auto()


class ResponseReader:
    """Responses parsed from the bytes of one connection, one after another."""

    def __init__(self, *, max_head: int = MAX_HEAD, max_body: int = MAX_BODY) -> None:
        self.max_head = max_head
        self.max_body = max_body
        self._buffer = bytearray()
        self._eof = False
        self._state = _State.HEAD
        self._head: tuple[int, str, tuple[tuple[bytes, bytes], ...], bool] | None = None
        self._body = bytearray()
        self._left = 0  # of the Content-Length body or of the current chunk

    def receive_data(self, data: bytes | bytearray) -> None:
        """Bytes received; b"" means the peer closed the connection."""
        if self._eof and data:
            raise HttpProtocolError("data after the end of the connection")
        if data:
            self._buffer += data
        else:
            self._eof = True

    def next_response(self) -> Response | None:
        """The next whole response, or None until more data comes. Raises HttpProtocolError
        for bad or oversized input and for a connection closed before a response ended."""
        while True:
            progressed = self._step()
            if isinstance(progressed, Response):
                return progressed
            if not progressed:
                if self._eof:
                    if self._state is _State.UNTIL_EOF:
                        return self._finish()
                    what = "before a response" if (
                        self._state is _State.HEAD and not self._buffer) else "mid-response"
                    raise HttpProtocolError(f"the connection closed {what}")
                return None

    def partial_body(self) -> tuple[int, bytes] | None:
        """While a kept-alive chunked body is being received: its status and the body so
        far (a streaming call's first message can be used before the body ends)."""
        if self._head is None or not self._head[3] or self._state not in (
                _State.CHUNK_SIZE, _State.CHUNK_DATA, _State.CHUNK_END, _State.TRAILERS):
            return None
        return self._head[0], bytes(self._body)

    def take_partial_body(self) -> tuple[int, bytes] | None:
        """`partial_body`, handing the bytes over: a stream that never ends (a watch) is read
        message by message, and `max_body` then bounds what is received but not yet taken."""
        partial = self.partial_body()
        if partial is not None:
            self._body.clear()
        return partial

    def _step(self) -> bool | Response:
        """One step of parsing: True if it consumed something, a Response when one ended."""
        state = self._state
        if state is _State.HEAD:
            return self._parse_head()
        if state is _State.LENGTH or state is _State.CHUNK_DATA:
            if self._left and not self._buffer:
                return False
            take = min(self._left, len(self._buffer))
            self._add_body(self._buffer[:take])
            del self._buffer[:take]
            self._left -= take
            if self._left:
                return True
            if state is _State.LENGTH:
                return self._finish()
            self._state = _State.CHUNK_END
            return True
        if state is _State.CHUNK_END:
            if len(self._buffer) < 2:
                return False
            if self._buffer[:2] != b"\r\n":
                raise HttpProtocolError("a chunk's data does not end with CRLF")
            del self._buffer[:2]
            self._state = _State.CHUNK_SIZE
            return True
        if state is _State.CHUNK_SIZE:
            return self._parse_chunk_size()
        if state is _State.TRAILERS:
            end = self._buffer.find(b"\r\n\r\n") if self._buffer[:2] != b"\r\n" else -2
            if end == -1:
                if len(self._buffer) > self.max_head:
                    raise HttpProtocolError(f"trailers longer than {self.max_head} bytes")
                return False
            del self._buffer[:end + 4]
            return self._finish()
        # UNTIL_EOF
        if not self._buffer:
            return False
        self._add_body(self._buffer)
        self._buffer.clear()
        return True

    def _parse_head(self) -> bool | Response:
        end = self._buffer.find(b"\r\n\r\n")
        if end == -1:
            if len(self._buffer) > self.max_head:
                raise HttpProtocolError(f"response head longer than {self.max_head} bytes")
            return False
        if end > self.max_head:
            raise HttpProtocolError(f"response head longer than {self.max_head} bytes")
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[:end + 4]
        version, _, rest = lines[0].partition(b" ")
        code, _, reason = rest.partition(b" ")
        if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
            raise HttpProtocolError(f"bad status line {lines[0][:80]!r}")
        status = int(code)
        headers = tuple(self._header(line) for line in lines[1:])
        if 100 <= status < 200:  # informational: the real response follows
            return True
        fields = {name: value for name, value in headers}
        connection = fields.get(b"connection", b"").lower()
        keep_alive = (b"close" not in connection if version == b"HTTP/1.1"
                      else b"keep-alive" in connection)
        self._head = (status, reason.decode("latin-1"), headers, keep_alive)
        self._body.clear()
        coding = fields.get(b"transfer-encoding", b"").strip().lower()
        length = fields.get(b"content-length")
        if status in (204, 304):
            return self._finish()
        if coding:
            if coding != b"chunked":
                raise HttpProtocolError(f"unsupported transfer coding {coding[:40]!r}")
            self._state = _State.CHUNK_SIZE
        elif length is not None:
            if not length.strip().isdigit() or len(length) > 12:
                raise HttpProtocolError(f"bad Content-Length {length[:40]!r}")
            self._left = int(length)
            if self._left > self.max_body:
                raise HttpProtocolError(f"a body of {self._left} bytes exceeds "
                                        f"{self.max_body}")
            self._state = _State.LENGTH
            if not self._left:
                return self._finish()
        else:
            self._state = _State.UNTIL_EOF
            self._head = (status, self._head[1], headers, False)
        return True

    @staticmethod
    def _header(line: bytes) -> tuple[bytes, bytes]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or b" " in name or b"\0" in line:
            raise HttpProtocolError(f"bad header line {line[:80]!r}")
        return name.lower(), value.strip(b" \t")

    def _parse_chunk_size(self) -> bool | Response:
        end = self._buffer.find(b"\r\n", 0, MAX_CHUNK_LINE + 2)
        if end == -1:
            if len(self._buffer) > MAX_CHUNK_LINE:
                raise HttpProtocolError("chunk-size line too long")
            return False
        size = bytes(self._buffer[:end]).partition(b";")[0].strip(b" \t")
        del self._buffer[:end + 2]
        if not size or len(size) > 16 or size.strip(_HEX_DIGITS):
            raise HttpProtocolError(f"bad chunk size {size[:20]!r}")
        self._left = int(size, 16)
        if len(self._body) + self._left > self.max_body:
            raise HttpProtocolError(f"a chunked body exceeds {self.max_body} bytes")
        self._state = _State.CHUNK_DATA if self._left else _State.TRAILERS
        return True

    def _add_body(self, data: bytes | bytearray) -> None:
        if len(self._body) + len(data) > self.max_body:
            raise HttpProtocolError(f"a body exceeds {self.max_body} bytes")
        self._body += data

    def _finish(self) -> Response:
        assert self._head is not None
        status, reason, headers, keep_alive = self._head
        response = Response(status, reason, headers, bytes(self._body), keep_alive)
        self._head = None
        self._body.clear()
        self._state = _State.HEAD
        return response
