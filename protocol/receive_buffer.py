"""One connection's unread bytes, shared by the three parsers (requests, replies, replication).

Theory of operation: data is appended at the end and consumed from a read offset; the bytes
before the offset are dropped lazily (all at once when everything was read, or in one move
once more than 64 KiB were read), so taking many small requests off one large read costs
no copy per request. Lines end at "\\n"; a data block is `size` bytes and a two-byte tail
that must be "\\r\\n" (memcached consumes exactly `<bytes>+2` and checks the tail).

A read that arrives when everything before it was consumed (most reads: a client sends a
request, waits for its reply) is kept as the `bytes` object it came as, not copied into the
bytearray: its lines and blocks are sliced from it, one copy each instead of two, and the
append's copy is gone (docs/benchmarks.md "Round seven: backend"). Only when a read leaves a
part of a line or block unread for the next one does that rest move into the bytearray, which
then takes what follows until it is consumed in turn.
"""

from __future__ import annotations

from typing import Final

# Read bytes are dropped in one move past this (a bytearray delete from the front copies).
_COMPACT_AFTER: Final = 65536


class ReceiveBuffer:
    __slots__ = ("_data", "_read", "_spanning", "_start", "cr_dropped")

    def __init__(self) -> None:
        self._read = b""  # the unread bytes from `_start` on, while not `_spanning`
        self._data = bytearray()  # the unread bytes from `_start` on, while `_spanning`
        self._spanning = False  # input spans reads: it is in `_data`
        self._start = 0
        self.cr_dropped = False  # the last `take_line(drop_cr=True)` dropped a "\r"

    def __len__(self) -> int:
        if self._spanning:
            return len(self._data) - self._start
        return len(self._read) - self._start

    def __iadd__(self, data: bytes) -> ReceiveBuffer:
        start = self._start
        if not self._spanning:
            read = self._read
            if start == len(read) and type(data) is bytes:  # the common case: no copy
                self._read = data
                self._start = 0
                return self
            self._data += read[start:]  # a rest: the reads span from here
            self._read = b""
            self._spanning = True
            self._start = 0
        elif start == len(self._data):
            self._data.clear()
            self._start = 0
            if type(data) is bytes:  # all consumed: whole reads again
                self._spanning = False
                self._read = data
                return self
        elif start > _COMPACT_AFTER:
            del self._data[:start]
            self._start = 0
        self._data += data
        return self

    def clear(self) -> None:
        self._data.clear()
        self._read = b""
        self._spanning = False
        self._start = 0

    def peek(self, size: int) -> bytes:
        """Up to `size` unread bytes, left unread."""
        start = self._start
        if self._spanning:
            return bytes(self._data[start: start + size])
        return self._read[start: start + size]

    def startswith(self, prefix: bytes, offset: int = 0) -> bool:
        """Whether the unread bytes from `offset` begin with `prefix` (no copy)."""
        if self._spanning:
            return self._data.startswith(prefix, self._start + offset)
        return self._read.startswith(prefix, self._start + offset)

    def line_length(self) -> int:
        """The length of the next line, its "\\n" included, or -1 if no whole line is here."""
        if self._spanning:
            end = self._data.find(b"\n", self._start)
        else:
            end = self._read.find(b"\n", self._start)
        return end - self._start + 1 if end >= 0 else -1

    def take_line(self, drop_cr: bool = False) -> bytes | None:
        """The next line without its "\n" (a "\r" before it is kept, or with `drop_cr`
        dropped, which `cr_dropped` then says: one copy of the line, not two), or None if no
        whole line is here yet."""
        start = self._start
        if self._spanning:
            data = self._data
            end = data.find(b"\n", start)
            if end < 0:
                return None
            self._start = end + 1
            if drop_cr:
                self.cr_dropped = end > start and data[end - 1] == 13
                if self.cr_dropped:
                    end -= 1
            return bytes(data[start: end])
        read = self._read
        end = read.find(b"\n", start)
        if end < 0:
            return None
        self._start = end + 1
        if drop_cr:
            self.cr_dropped = end > start and read[end - 1] == 13
            if self.cr_dropped:
                end -= 1
        return read[start: end]

    def take(self, size: int) -> bytes | None:
        """Exactly `size` bytes, or None (nothing consumed) if fewer are here."""
        start = self._start
        if len(self) < size:
            return None
        self._start = start + size
        if self._spanning:
            return bytes(self._data[start: start + size])
        return self._read[start: start + size]

    def take_block(self, size: int) -> tuple[bytes, bool] | None:
        """A data block of `size` bytes and its two-byte tail, consumed together: the block
        and whether the tail was "\\r\\n"; None (nothing consumed) until all of it is here."""
        start = self._start
        if len(self) < size + 2:
            return None
        self._start = start + size + 2
        if self._spanning:
            data = self._data
            return (bytes(data[start: start + size]),
                    data[start + size: start + size + 2] == b"\r\n")
        read = self._read
        return read[start: start + size], read[start + size: start + size + 2] == b"\r\n"

    def skip(self, size: int) -> int:
        """Drop up to `size` unread bytes; how many were dropped."""
        dropped = min(size, len(self))
        self._start += dropped
        return dropped
