"""The response side, sans I/O: a server's byte stream in, response events out.

Used in the client role (the proxy reading its backends). A reply stream is parsed
line by line; VALUE and VA lines announce a data block that is read whole before the
event is yielded. The VALUE blocks of a retrieval that are here whole come as one `Values`
run (one event and one copy per read's worth of values, not an object per key). A malformed reply is a ResponseError: the connection that sent it
can no longer be trusted to stay in step and must be closed by the caller.
Memory is bounded by `max_line` and `max_value`.
"""

from __future__ import annotations

from memring.protocol.ascii_auth import GATE_REPLIES
from memring.protocol.receive_buffer import ReceiveBuffer
from memring.protocol.responses import (
    End,
    ErrorReply,
    Line,
    MetaReply,
    Number,
    Response,
    Stat,
    Status,
    Values,
    VersionReply,
)
from memring.protocol.sentinels import NEED_DATA, NeedData

_STATUS_WORDS = frozenset({b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED",
                           b"TOUCHED", b"OK", b"RESET"})
_META_CODES = frozenset({b"HD", b"EN", b"NF", b"NS", b"EX", b"MN", b"ME"})
_ERROR_KINDS = frozenset({b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"})
_GATE_LINES = frozenset(reply.removesuffix(b"\r\n") for reply in GATE_REPLIES)
# Events without a payload of their own are shared, not made per reply (nothing changes them)
_END = End()
_STATUSES = {word: Status(word) for word in _STATUS_WORDS}


class ResponseError(Exception):
    """The server sent something that is not a memcached reply."""


class Unauthenticated(ResponseError):
    """The server wants memcached's ASCII authentication first (`-Y`/`--auth-file`): its
    `CLIENT_ERROR unauthenticated` (or another refusal of its auth gate, when a forwarded
    `set` was taken for an attempt) answers no request, so the stream cannot be used."""

    def __init__(self, line: bytes) -> None:
        self.line = line.decode(errors="replace")  # the refusal, without its CRLF
        super().__init__(f"the server requires authentication (it answers {self.line})")


class ResponseParser:
    def __init__(self, *, max_line: int = 65536, max_value: int = 64 << 20) -> None:
        self.max_line = max_line
        self.max_value = max_value
        self._buf = ReceiveBuffer()
        self._pending: tuple[bytes, list[bytes], int] | None = None  # line, tokens, size

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def next_event(self) -> Response | NeedData:
        if self._pending is not None:
            return self._data_block()
        buf = self._buf
        length = buf.line_length()
        if length < 0:
            if len(buf) > self.max_line:
                raise ResponseError(f"reply line longer than {self.max_line} bytes")
            return NEED_DATA
        if buf.startswith(b"VALUE "):  # most of a get's reply: see _values
            return self._values(length)
        line = buf.peek(length - 1)
        buf.skip(length)
        if line.endswith(b"\r"):
            line = line[:-1]
        return self._line(line)

    def _values(self, length: int) -> Response | NeedData:
        """The VALUE blocks here whole, from the one whose header line is `length` bytes,
        as one `Values` run: each header checked, the blocks kept as they came, one copy
        out of the buffer for the run. A block not all here yet ends the run (its header
        is parsed again once more data came)."""
        buf = self._buf
        keys: list[bytes] = []
        ends: list[int] = []
        pos = 0  # where the block being looked at starts (from the unread start)
        while True:
            if not buf.startswith(b"\r\n", pos + length - 2):
                if keys:
                    break  # the run so far first
                return self._bare_lf_value(length)
            key, size = self._header(buf.peek_at(pos, length - 2))
            end = pos + length + size + 2
            if end > len(buf):
                break
            if not buf.startswith(b"\r\n", end - 2):
                raise ResponseError("data block not terminated by \\r\\n")
            keys.append(key)
            ends.append(end)
            pos = end
            if not buf.startswith(b"VALUE ", pos):
                break
            line_end = buf.find(b"\n", pos)
            if line_end < 0:
                break
            length = line_end - pos + 1
        if not keys:
            return NEED_DATA
        wire = buf.take(pos)
        assert wire is not None
        return Values(keys, ends, wire)

    def _header(self, header: bytes) -> tuple[bytes, int]:
        """A VALUE line's key and data size, the line checked (without its line end)."""
        tokens = header.split(b" ")
        count = len(tokens)
        if (count != 4 and count != 5) or not tokens[2].isdigit() or not tokens[3].isdigit() \
                or (count == 5 and not tokens[4].isdigit()):
            raise ResponseError(f"bad VALUE line ({len(header)} bytes)")
        size = int(tokens[3])
        if size > self.max_value:
            raise ResponseError(f"value of {size} bytes is over the {self.max_value} limit")
        return tokens[1], size

    def _bare_lf_value(self, length: int) -> Response | NeedData:
        """A VALUE block whose header ends with "\\n" alone (memcached never sends one):
        forwarded with memcached's CRLF, a run of its own."""
        buf = self._buf
        header = buf.peek(length - 1)
        key, size = self._header(header)
        block = buf.take(length + size + 2)
        if block is None:
            return NEED_DATA
        if not block.endswith(b"\r\n"):
            raise ResponseError("data block not terminated by \\r\\n")
        wire = header + b"\r" + block[length - 1:]
        return Values([key], [len(wire)], wire)

    def _line(self, line: bytes) -> Response | NeedData:
        head, _, rest = line.partition(b" ")
        if head == b"VALUE":  # "VALUE" with no tokens (next_event takes "VALUE ...")
            raise ResponseError(f"bad VALUE line ({len(line)} bytes)")
        if not rest:
            if head == b"END":
                return _END
            status = _STATUSES.get(head)
            if status is not None:
                return status
        if head == b"VA":
            tokens = rest.split(b" ")
            if not tokens[0].isdigit():
                raise ResponseError(f"bad VA line ({len(line)} bytes)")
            return self._expect(line, tokens, int(tokens[0]))
        if head in _META_CODES:
            return MetaReply(head, rest.split(b" ") if rest else [])
        if head == b"STAT":
            name, _, value = rest.partition(b" ")
            return Stat(name, value)
        if head in _ERROR_KINDS:
            if line in _GATE_LINES:
                raise Unauthenticated(line)
            return ErrorReply(head, rest)
        if head == b"VERSION":
            return VersionReply(rest)
        if line.isdigit():
            return Number(int(line))
        if not line:
            raise ResponseError("empty reply line")
        return Line(line)

    def _expect(self, line: bytes, tokens: list[bytes], size: int) -> Response | NeedData:
        """`line` announced a VA data block of `size` bytes (`tokens`: the line after VA)."""
        if size > self.max_value:
            raise ResponseError(f"value of {size} bytes is over the {self.max_value} limit")
        self._pending = (line, tokens, size)
        return self._data_block()

    def _data_block(self) -> Response | NeedData:
        assert self._pending is not None
        line, tokens, size = self._pending
        block = self._buf.take(size + 2)  # the data and its CRLF
        if block is None:
            return NEED_DATA
        if not block.endswith(b"\r\n"):
            raise ResponseError("data block not terminated by \\r\\n")
        self._pending = None
        return MetaReply(b"VA", tokens[1:], block[:-2], line + b"\r\n" + block)
