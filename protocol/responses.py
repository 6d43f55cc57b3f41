"""Response events: what a server answered, each able to encode itself to the wire.

The proxy reads backend replies into these with `ResponseParser` and writes them back
to clients with `encode()`; a backend builds the same bytes directly on its hot path.
Every reply line is self-describing (VALUE and VA carry their lengths), so a reply
stream can be parsed without knowing which request it answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRLF = b"\r\n"


@dataclass(slots=True)
class Value:
    """One `VALUE <key> <flags> <bytes> [<cas>]` block of a get/gets/gat/gats reply."""

    key: bytes
    flags: int
    value: bytes
    cas: int | None = None
    # the block as the server sent it (header line, data, CRLF): forwarded as it came, not
    # encoded again (the parser checked the header; the proxy's replies are its backends')
    wire: bytes = field(default=b"", compare=False, repr=False)

    def encode(self) -> bytes:
        if self.wire:
            return self.wire
        if self.cas is None:
            return b"VALUE %s %d %d\r\n%s\r\n" % (self.key, self.flags, len(self.value),
                                                  self.value)
        return b"VALUE %s %d %d %d\r\n%s\r\n" % (self.key, self.flags, len(self.value),
                                                     self.cas, self.value)


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


@dataclass(slots=True)
class MetaReply:
    """A meta reply: `code` is HD, VA, EN, NF, NS, EX, MN or ME; `value` only with VA."""

    code: bytes
    flags: list[bytes] = field(default_factory=list)
    value: bytes | None = None
    wire: bytes = field(default=b"", compare=False, repr=False)  # a VA as it came (see Value)

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


Response = (Value | End | Status | Number | VersionReply | Stat | ErrorReply | MetaReply
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
