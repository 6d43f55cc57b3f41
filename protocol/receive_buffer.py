"""One connection's unread bytes, shared by the three parsers (requests, replies, replication).

Theory of operation: data is appended at the end and consumed from a read offset; the bytes
before the offset are dropped lazily (all at once when everything was read, or in one move
once more than 64 KiB were read), so taking many small requests off one large read costs
no copy per request. Lines end at "\\n"; a data block is `size` bytes and a two-byte tail
that must be "\\r\\n" (memcached consumes exactly `<bytes>+2` and checks the tail).
"""

from __future__ import annotations

from typing import Final

# Read bytes are dropped in one move past this (a bytearray delete from the front copies).
_COMPACT_AFTER: Final = 65536


class ReceiveBuffer:
    __slots__ = ("_data", "_start")

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0

    def __len__(self) -> int:
        return len(self._data) - self._start

    def __iadd__(self, data: bytes) -> ReceiveBuffer:
        if self._start and self._start == len(self._data):
            self._data.clear()
            self._start = 0
        elif self._start > _COMPACT_AFTER:
            del self._data[: self._start]
            self._start = 0
        self._data += data
        return self

    def clear(self) -> None:
        self._data.clear()
        self._start = 0

    def peek(self, size: int) -> bytes:
        """Up to `size` unread bytes, left unread."""
        return bytes(self._data[self._start: self._start + size])

    def startswith(self, prefix: bytes, offset: int = 0) -> bool:
        """Whether the unread bytes from `offset` begin with `prefix` (no copy)."""
        return self._data.startswith(prefix, self._start + offset)

    def line_length(self) -> int:
        """The length of the next line, its "\\n" included, or -1 if no whole line is here."""
        end = self._data.find(b"\n", self._start)
        return end - self._start + 1 if end >= 0 else -1

    def take_line(self) -> bytes | None:
        """The next line without its "\\n" (a "\\r" before it is kept), or None if no whole
        line is here yet."""
        end = self._data.find(b"\n", self._start)
        if end < 0:
            return None
        line = bytes(self._data[self._start: end])
        self._start = end + 1
        return line

    def take(self, size: int) -> bytes | None:
        """Exactly `size` bytes, or None (nothing consumed) if fewer are here."""
        if len(self._data) - self._start < size:
            return None
        start = self._start
        self._start = start + size
        return bytes(self._data[start: start + size])

    def take_block(self, size: int) -> tuple[bytes, bool] | None:
        """A data block of `size` bytes and its two-byte tail, consumed together: the block
        and whether the tail was "\\r\\n"; None (nothing consumed) until all of it is here."""
        start = self._start
        if len(self._data) - start < size + 2:
            return None
        self._start = start + size + 2
        terminated = self._data[start + size: start + size + 2] == b"\r\n"
        return bytes(self._data[start: start + size]), terminated

    def skip(self, size: int) -> int:
        """Drop up to `size` unread bytes; how many were dropped."""
        dropped = min(size, len(self._data) - self._start)
        self._start += dropped
        return dropped
