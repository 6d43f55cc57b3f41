"""The response side, sans I/O: a server's byte stream in, response events out.

Used in the client role (the proxy reading its backends). A reply stream is parsed
line by line; VALUE and VA lines announce a data block that is read whole before the
event is yielded. The VALUE blocks of a retrieval that are here whole come as one `Values`
run (one event and one copy per read's worth of values, not an object per key). A malformed reply is a ResponseError: the connection that sent it
can no longer be trusted to stay in step and must be closed by the caller.
Memory is bounded by `max_line` and `max_value`.
"""

from __future__ import annotations

from typing import Final

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

_STATUS_WORDS: Final = frozenset({b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND", b"DELETED",
                           b"TOUCHED", b"OK", b"RESET"})
_META_CODES: Final = frozenset({b"HD", b"EN", b"NF", b"NS", b"EX", b"MN", b"ME"})
_ERROR_KINDS: Final = frozenset({b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR"})
_GATE_LINES: Final = frozenset(reply.removesuffix(b"\r\n") for reply in GATE_REPLIES)
# Events without a payload of their own are shared, not made per reply (nothing changes them)
_END: Final = End()
_STATUSES: Final = {word: Status(word) for word in _STATUS_WORDS}


# Final: compiled, a constant is inlined, not looked up in the module's dict at each use
# (the VALUE header loop read _SPACE once per byte of the key)
_LF: Final = 10
_CR: Final = 13
_SPACE: Final = 32
_ZERO: Final = 48
_VALUE_LINE: Final = b"VALUE "
# Past this many bytes after its first block a run ends (the next call goes on): each call
# copies at most this much of a read that may hold many clients' replies.
RUN_WINDOW: Final = 8192


def _digits_end(data: bytes, index: int, stop: int) -> int:
    """Where the run of ASCII digits from data[index] ends (at most `stop`)."""
    while index < stop and _ZERO <= data[index] <= _ZERO + 9:
        index += 1
    return index


def _starts_value_line(data: bytes, pos: int, count: int) -> bool:
    """Whether data[pos:] begins with "VALUE " (compared byte by byte: no slice)."""
    return pos + 6 <= count and all(data[pos + index] == _VALUE_LINE[index]
                                    for index in range(6))


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
        as one `Values` run: each header checked byte by byte (compiled: no object per
        token or offset), the blocks kept as they came, one copy out of the buffer. A block
        not all here yet, or past RUN_WINDOW, ends the run (its header is parsed again by the
        next call)."""
        buf = self._buf
        header = buf.peek(length)
        if header[length - 2] != _CR:
            return self._bare_lf_value(length)
        key, size = self._header(header, 0, length - 2)
        pos = length + size + 2  # where the first block ends, and the next starts
        available = len(buf)
        if pos > available:
            return NEED_DATA  # the first block is not all here: nothing copied but its header
        data = buf.peek(min(available, pos + RUN_WINDOW))
        count = len(data)
        if data[pos - 2] != _CR or data[pos - 1] != _LF:
            raise ResponseError("data block not terminated by \\r\\n")
        keys = [key]
        ends = [pos]
        while _starts_value_line(data, pos, count):  # the blocks after the first, parsed once
            line_end = pos + 6
            while line_end < count and data[line_end] != _LF:
                line_end += 1
            if line_end >= count or data[line_end - 1] != _CR:
                break  # a header not all here, or one ended by "\n" alone: the next run
            key, size = self._header(data, pos, line_end - 1)
            end = line_end + 1 + size + 2
            if end > count:
                break
            if data[end - 2] != _CR or data[end - 1] != _LF:
                raise ResponseError("data block not terminated by \\r\\n")
            keys.append(key)
            ends.append(end)
            pos = end
        buf.skip(pos)
        return Values(keys, ends, data[:pos])

    def _header(self, data: bytes, start: int, stop: int) -> tuple[bytes, int]:
        """The key and data size of the VALUE line data[start:stop] (without its CRLF),
        checked: `VALUE <key> <flags> <bytes>[ <cas>]`, the numbers all digits."""
        index = start + 6  # after "VALUE "
        while index < stop and data[index] != _SPACE:
            index += 1
        key = data[start + 6:index]
        flags_end = _digits_end(data, index + 1, stop)
        size = 0
        size_end = flags_end + 1
        while size_end < stop:
            digit = data[size_end] - _ZERO
            if digit < 0 or digit > 9:
                break
            size = size * 10 + digit
            if size > self.max_value:
                raise ResponseError(f"value of over {self.max_value} bytes, the limit")
            size_end += 1
        if not key or flags_end == index + 1 or flags_end >= stop or data[flags_end] != _SPACE \
                or size_end == flags_end + 1 or (size_end < stop and (
                    data[size_end] != _SPACE
                    or _digits_end(data, size_end + 1, stop) != stop or size_end + 1 == stop)):
            raise ResponseError(f"bad VALUE line ({stop - start} bytes)")
        return key, size

    def _bare_lf_value(self, length: int) -> Response | NeedData:
        """A VALUE block whose header ends with "\\n" alone (memcached never sends one):
        forwarded with memcached's CRLF, a run of its own."""
        buf = self._buf
        header = buf.peek(length - 1)
        key, size = self._header(header, 0, length - 1)
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
