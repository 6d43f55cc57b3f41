"""Response events: what a server answered, each able to encode itself to the wire.

The proxy reads backend replies into these with `ResponseParser` and writes them back
to clients with `encode()`; a backend builds the same bytes directly on its hot path.
Every reply line is self-describing (VALUE and VA carry their lengths), so a reply
stream can be parsed without knowing which request it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRLF = b"\r\n"


# The events a reply is parsed into per request (Value, Values, MetaReply) write their own
# `__init__` (dataclass init=False): the one `dataclass` generates is interpreted even in
# a compiled module (~230 ns a construction, a frame per reply; docs/benchmarks.md "Round
# six: proxy"); equality and repr stay generated.
@dataclass(slots=True, init=False)
class Value:
    """One `VALUE <key> <flags> <bytes> [<cas>]` block of a get/gets/gat/gats reply."""

    key: bytes
    flags: int
    value: bytes
    cas: int | None = None
    # the block as the server sent it (header line, data, CRLF): forwarded as it came, not
    # encoded again (the parser checked the header; the proxy's replies are its backends')
    wire: bytes = field(default=b"", compare=False, repr=False)

    def __init__(self, key: bytes, flags: int, value: bytes, cas: int | None = None,
                 wire: bytes = b"") -> None:
        self.key = key
        self.flags = flags
        self.value = value
        self.cas = cas
        self.wire = wire

    def encode(self) -> bytes:
        if self.wire:
            return self.wire
        if self.cas is None:
            return b"VALUE %s %d %d\r\n%s\r\n" % (self.key, self.flags, len(self.value),
                                                  self.value)
        return b"VALUE %s %d %d %d\r\n%s\r\n" % (self.key, self.flags, len(self.value),
                                                     self.cas, self.value)


@dataclass(slots=True, init=False)
class Values:
    """A run of VALUE blocks of one retrieval reply, back to back as the server sent them
    (`wire`): block `i` is the key `keys[i]`'s and ends at `ends[i]`. One event and one
    bytes object for a read's worth of values, not an object per key: the proxy forwards a
    run whole, or cuts it at block boundaries to put the keys in its client's order."""

    keys: list[bytes]
    ends: list[int]
    wire: bytes = field(repr=False)

    def __init__(self, keys: list[bytes], ends: list[int], wire: bytes) -> None:
        self.keys = keys
        self.ends = ends
        self.wire = wire

    def encode(self) -> bytes:
        return self.wire

    def block(self, index: int) -> bytes:
        """Block `index` as it came (header line, data, CRLF)."""
        return self.wire[self.ends[index - 1] if index else 0: self.ends[index]]

    def values(self) -> list[Value]:
        """The blocks as `Value`s (each header parsed again: for the rare readers that
        need the flags, the data or the CAS of a key apart from its block)."""
        out = []
        for index in range(len(self.keys)):
            block = self.block(index)
            line_end = block.find(b"\r\n")
            tokens = block[:line_end].split(b" ")
            out.append(Value(tokens[1], int(tokens[2]), block[line_end + 2:-2],
                             int(tokens[4]) if len(tokens) == 5 else None, block))
        return out


def in_key_order(keys: list[bytes], runs: list[Values]) -> list[bytes] | None:
    """The blocks of `runs` (each the values of some of `keys`, in the order of `keys`:
    a multi-get's part, answered in request order as memcached does) put in the order of
    `keys`, a stretch of consecutive blocks of one run taken as one slice; None unless every
    block of every run found its place (a run out of order: the caller sorts by key)."""
    count = len(runs)
    taken = [0] * count  # the next block of each run
    pieces: list[bytes] = []
    current = -1  # the run of the stretch being gathered, from `start` to `stop`
    start = stop = 0
    for key in keys:
        found = -1
        for index in range(count):
            run_keys = runs[index].keys
            next_block = taken[index]
            if next_block < len(run_keys) and run_keys[next_block] == key:
                found = index
                break
        if found < 0:
            continue  # a miss
        ends = runs[found].ends
        next_block = taken[found]
        taken[found] = next_block + 1
        begin = ends[next_block - 1] if next_block else 0
        if found == current and begin == stop:
            stop = ends[next_block]
            continue
        if current >= 0:
            pieces.append(runs[current].wire[start:stop])
        current = found
        start = begin
        stop = ends[next_block]
    for index in range(count):
        if taken[index] != len(runs[index].keys):
            return None
    if current >= 0:
        pieces.append(runs[current].wire[start:stop])
    return pieces


@dataclass(slots=True)
class End:
    def encode(self) -> bytes:
        return b"END\r\n"


@dataclass(slots=True)
class Status:
    """A one-word reply: STORED, NOT_STORED, EXISTS, NOT_FOUND, DELETED, TOUCHED, OK, RESET."""

    word: bytes

    def encode(self) -> bytes:
        return self.word + CRLF


@dataclass(slots=True)
class Number:
    """The new value after incr/decr."""

    value: int

    def encode(self) -> bytes:
        return b"%d\r\n" % self.value


@dataclass(slots=True)
class VersionReply:
    version: bytes

    def encode(self) -> bytes:
        return b"VERSION " + self.version + CRLF


@dataclass(slots=True)
class Stat:
    name: bytes
    value: bytes

    def encode(self) -> bytes:
        return b"STAT %s %s\r\n" % (self.name, self.value)


@dataclass(slots=True)
class ErrorReply:
    """ERROR, CLIENT_ERROR <message> or SERVER_ERROR <message>."""

    kind: bytes
    message: bytes = b""

    def encode(self) -> bytes:
        if self.message:
            return self.kind + b" " + self.message + CRLF
        return self.kind + CRLF


@dataclass(slots=True, init=False)
class MetaReply:
    """A meta reply: `code` is HD, VA, EN, NF, NS, EX, MN or ME; `value` only with VA."""

    code: bytes
    flags: list[bytes] = field(default_factory=list)
    value: bytes | None = None
    wire: bytes = field(default=b"", compare=False, repr=False)  # a VA as it came (see Value)

    def __init__(self, code: bytes, flags: list[bytes] | None = None,
                 value: bytes | None = None, wire: bytes = b"") -> None:
        self.code = code
        self.flags = [] if flags is None else flags
        self.value = value
        self.wire = wire

    def encode(self) -> bytes:
        if self.wire:
            return self.wire
        head = self.code
        if self.value is not None:
            head = b"VA %d" % len(self.value)
        line = b" ".join([head, *self.flags]) if self.flags else head
        if self.value is None:
            return line + CRLF
        return line + CRLF + self.value + CRLF


@dataclass(slots=True)
class Line:
    """Any other single line (MEMLIMIT_TOO_SMALL ..., "ERROR: shutdown not enabled")."""

    line: bytes

    def encode(self) -> bytes:
        return self.line + CRLF


Response = (Value | Values | End | Status | Number | VersionReply | Stat | ErrorReply | MetaReply
            | Line)


# refresh_certs (memcached's process_refresh_certs_command): "OK" obeys noreply; an error is
# written with write_and_free, which ignores it; without -Z the error is "Error TLS not
# enabled". Pinned by tests/compat/test_tls_memcached.py.
TLS_NOT_ENABLED = "Error TLS not enabled"


def refresh_certs_reply(error: str | None, noreply: bool) -> bytes:
    """The answer to refresh_certs: `error` is why the certificates did not reload (None:
    they did)."""
    if error is None:
        return b"" if noreply else b"OK\r\n"
    return error.encode(errors="replace") + CRLF
