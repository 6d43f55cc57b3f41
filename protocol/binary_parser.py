"""The memcached binary protocol on a receive buffer, sans I/O: requests (server role) and
responses (client role).

Theory of operation: `receive_data(bytes)`, then `next_event()` until NEED_DATA, as for the
text parser. A request is taken in two steps, as memcached's try_read_command_binary and
dispatch_bin_command do: once the header, extras and key are here the frame is checked (a
magic other than 0x80 closes silently; lengths that do not add up, a key over 250 bytes or
extras the opcode does not take answer an error and close; an unknown opcode answers
"Unknown command" and swallows the body), then the value is read only if its item fits
`max_item_size`, else it streams by, swallowed, and "Too large." is answered. So memory is
bounded by a header, 255 bytes of extras, a 64 KiB key and one item.

Bad input becomes a `ProtocolError` event carrying the encoded binary reply (what
memcached writes), whether the connection closes, and the key a failed `set` removes;
SASL (when the server checks credentials) is answered here too, as a `BinaryReply`, since
whether a connection is authenticated is the connection's own state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from memring.protocol.ascii_auth import Authenticator
from memring.protocol.binary_frames import (
    HEADER,
    HEADER_SIZE,
    MAGIC_REQUEST,
    MAGIC_RESPONSE,
    QUIET_TWIN,
    BinaryRequest,
    BinaryResponse,
    Opcode,
    Status,
    encode_response,
    error_response,
    parse_storage_extras,
)
from memring.protocol.receive_buffer import ReceiveBuffer
from memring.protocol.requests import ProtocolError
from memring.protocol.sentinels import NEED_DATA, NeedData
from memring.protocol.sizes import KEY_MAX_LENGTH, item_size

__all__ = ["NEED_DATA", "BinaryReply", "BinaryRequestParser", "BinaryResponseError",
           "BinaryResponseParser"]

DEFAULT_MAX_ITEM_SIZE = 1 << 20
MAX_SASL_MECH_LENGTH = 32  # memcached's MAX_SASL_MECH_LEN
SASL_MECHANISMS = b"PLAIN"

# Commands allowed before SASL authentication (proto_bin.c authenticated()).
_BEFORE_AUTH = frozenset({Opcode.SASL_LIST_MECHS, Opcode.SASL_AUTH, Opcode.SASL_STEP,
                          Opcode.VERSION})
_STORAGE = frozenset({Opcode.SET, Opcode.ADD, Opcode.REPLACE})
_CONCAT = frozenset({Opcode.APPEND, Opcode.PREPEND})
_SASL = frozenset({Opcode.SASL_AUTH, Opcode.SASL_STEP})


@dataclass(slots=True)
class BinaryReply:
    """A request the codec answered itself (SASL): the encoded reply to send."""

    reply: bytes


def _bare(extlen: int, keylen: int, bodylen: int) -> bool:
    return extlen == 0 and keylen == 0 and bodylen == 0


def _get(extlen: int, keylen: int, bodylen: int) -> bool:
    return extlen == 0 and keylen > 0 and bodylen == keylen


def _storage(extlen: int, keylen: int, bodylen: int) -> bool:
    return extlen == 8 and keylen != 0 and bodylen >= keylen + 8


def _arithmetic(extlen: int, keylen: int, bodylen: int) -> bool:
    return keylen > 0 and extlen == 20 and bodylen == keylen + 20


def _concat(extlen: int, keylen: int, bodylen: int) -> bool:
    return keylen > 0 and extlen == 0


def _flush(extlen: int, keylen: int, bodylen: int) -> bool:
    return keylen == 0 and bodylen == extlen and extlen in (0, 4)


def _stat(extlen: int, keylen: int, bodylen: int) -> bool:
    return extlen == 0


def _sasl_auth(extlen: int, keylen: int, bodylen: int) -> bool:
    return extlen == 0 and keylen != 0


def _touch(extlen: int, keylen: int, bodylen: int) -> bool:
    return extlen == 4 and keylen != 0


# The (extras, key, body) lengths dispatch_bin_command accepts, by loud opcode; an opcode
# missing here is unknown to 1.6.18 (verbosity among them).
_LENGTH_RULES: dict[int, Callable[[int, int, int], bool]] = {
    Opcode.NOOP: _bare, Opcode.VERSION: _bare, Opcode.QUIT: _bare,
    Opcode.SASL_LIST_MECHS: _bare, Opcode.GET: _get, Opcode.GETK: _get,
    Opcode.DELETE: _get, Opcode.SET: _storage, Opcode.ADD: _storage,
    Opcode.REPLACE: _storage, Opcode.INCREMENT: _arithmetic, Opcode.DECREMENT: _arithmetic,
    Opcode.APPEND: _concat, Opcode.PREPEND: _concat, Opcode.FLUSH: _flush,
    Opcode.STAT: _stat, Opcode.SASL_AUTH: _sasl_auth, Opcode.SASL_STEP: _sasl_auth,
    Opcode.TOUCH: _touch, Opcode.GAT: _touch, Opcode.GATK: _touch}


class BinaryRequestParser:
    """Turns a binary client's byte stream into `BinaryRequest` events (the server role).
    With `auth`, SASL PLAIN is checked against it and nothing else is served before."""

    def __init__(self, *, max_item_size: int = DEFAULT_MAX_ITEM_SIZE,
                 auth: Authenticator | None = None) -> None:
        self.max_item_size = max_item_size
        self._auth = auth
        self.authenticated = auth is None
        self._buf = ReceiveBuffer()
        self._pending: BinaryRequest | None = None  # waiting for its value
        self._pending_size = 0
        self._swallow = 0
        self._closed = False

    def receive_data(self, data: bytes) -> None:
        if not self._closed:
            self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def __iter__(self) -> Iterator[BinaryRequest | BinaryReply | ProtocolError]:
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event

    def next_event(self) -> BinaryRequest | BinaryReply | ProtocolError | NeedData:
        while not self._closed:
            if self._swallow:
                self._swallow -= self._buf.skip(self._swallow)
                if self._swallow:
                    return NEED_DATA
                continue
            if self._pending is not None:
                value = self._buf.take(self._pending_size)
                if value is None:
                    return NEED_DATA
                request = self._pending
                self._pending = None
                request.value = value
                if request.opcode in _SASL:
                    return self._sasl(request)
                return request
            event = self._frame()
            if event is not None:
                return event
            if self._pending is None and not self._swallow:
                return NEED_DATA
        return NEED_DATA

    def _close(self, reply: bytes) -> ProtocolError:
        self._closed = True
        self._buf.clear()
        return ProtocolError(reply, close=True)

    def _frame(self) -> BinaryRequest | BinaryReply | ProtocolError | None:
        """The next frame's header, extras and key, checked; None: wait for more (or its
        value is now pending, or its body is being swallowed)."""
        header = self._buf.peek(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return None
        magic, opcode, keylen, extlen, datatype, vbucket, bodylen, opaque, cas = \
            HEADER.unpack(header)
        if magic != MAGIC_REQUEST:
            return self._close(b"")  # "Invalid magic": closed without a reply
        head = self._buf.take(HEADER_SIZE + extlen + keylen)
        if head is None:
            return None  # memcached, too, waits for extras and key before looking further
        extras = head[HEADER_SIZE: HEADER_SIZE + extlen]
        key = head[HEADER_SIZE + extlen:]
        if keylen + extlen > bodylen:
            return self._close(error_response(opcode, Status.UNKNOWN_COMMAND, opaque))
        if not self.authenticated and opcode not in _BEFORE_AUTH:
            return self._close(error_response(opcode, Status.AUTH_ERROR, opaque))
        if keylen > KEY_MAX_LENGTH:  # binprot has 16-bit keys, memcached 250-byte ones
            return self._close(error_response(opcode, Status.EINVAL, opaque))
        command = QUIET_TWIN.get(opcode, opcode)
        valid = _LENGTH_RULES.get(command)
        if valid is None:
            # the body's length is swallowed although extras and key were read already
            # (proto_bin.c: write_bin_error(..., bodylen)), eating into the next frame
            self._swallow = bodylen
            return ProtocolError(error_response(opcode, Status.UNKNOWN_COMMAND, opaque))
        if not valid(extlen, keylen, bodylen):
            return self._close(error_response(opcode, Status.EINVAL, opaque))
        request = BinaryRequest(opcode, key, extras, b"", opaque, cas, vbucket, datatype)
        value_size = bodylen - keylen - extlen
        if command in _STORAGE or command in _CONCAT:
            flags = parse_storage_extras(extras)[0] if command in _STORAGE else 0
            if item_size(keylen, value_size, flags) > self.max_item_size:
                self._swallow = value_size
                # a failed set removes the old item, so no stale value outlives it
                drop = key if command == Opcode.SET else None
                return ProtocolError(error_response(opcode, Status.E2BIG, opaque),
                                     drop_key=drop)
            return self._expect_value(request, value_size)
        if command == Opcode.SASL_LIST_MECHS or command in _SASL:
            if self._auth is None:
                self._swallow = bodylen - keylen  # SASL off: as memcached without -S
                return ProtocolError(error_response(opcode, Status.UNKNOWN_COMMAND, opaque))
            if command == Opcode.SASL_LIST_MECHS:
                return BinaryReply(encode_response(BinaryResponse(
                    opcode, value=SASL_MECHANISMS, opaque=opaque)))
            if keylen > MAX_SASL_MECH_LENGTH:
                self._swallow = value_size
                return ProtocolError(error_response(opcode, Status.EINVAL, opaque))
            if item_size(keylen, value_size, 0) > self.max_item_size:
                self._swallow = value_size  # memcached reads it into an item
                return ProtocolError(error_response(opcode, Status.ENOMEM, opaque))
            return self._expect_value(request, value_size)
        # Every other opcode is whole now; the bytes a stat or touch frame declares past
        # its key are not read as part of it (they are parsed as the next frame).
        return request

    def _expect_value(self, request: BinaryRequest, size: int
                      ) -> BinaryRequest | BinaryReply | ProtocolError | None:
        if size == 0:
            return self._sasl(request) if request.opcode in _SASL else request
        self._pending = request
        self._pending_size = size
        return None

    def _sasl(self, request: BinaryRequest) -> BinaryReply | ProtocolError:
        """SASL PLAIN (RFC 4616: authzid NUL user NUL password) against the auth file."""
        auth = self._auth
        assert auth is not None
        fields = request.value.split(b"\x00")
        if (request.opcode == Opcode.SASL_AUTH and request.key == b"PLAIN"
                and len(fields) == 3 and auth.verify(fields[1], fields[2])):
            self.authenticated = True
            return BinaryReply(encode_response(BinaryResponse(
                request.opcode, value=b"Authenticated", opaque=request.opaque)))
        if not (request.opcode == Opcode.SASL_AUTH and request.key == b"PLAIN"
                and len(fields) == 3):
            auth.reject()  # not PLAIN, or a step without a start: counted as a failure
        return ProtocolError(error_response(request.opcode, Status.AUTH_ERROR,
                                            request.opaque))


class BinaryResponseError(Exception):
    """A backend's reply that is not a binary response frame, or one past the size limit."""


class BinaryResponseParser:
    """Turns a server's byte stream into `BinaryResponse` events (the client role)."""

    def __init__(self, *, max_body: int = DEFAULT_MAX_ITEM_SIZE + 4096) -> None:
        self.max_body = max_body
        self._buf = ReceiveBuffer()

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def __iter__(self) -> Iterator[BinaryResponse]:
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event

    def next_event(self) -> BinaryResponse | NeedData:
        header = self._buf.peek(HEADER_SIZE)
        if len(header) < HEADER_SIZE:
            return NEED_DATA
        magic, opcode, keylen, extlen, datatype, status, bodylen, opaque, cas = \
            HEADER.unpack(header)
        if magic != MAGIC_RESPONSE:
            raise BinaryResponseError(f"bad magic 0x{magic:02x}")
        if keylen + extlen > bodylen or bodylen > self.max_body:
            raise BinaryResponseError(f"bad body length {bodylen} (key {keylen}, "
                                      f"extras {extlen})")
        if len(self._buf) < HEADER_SIZE + bodylen:
            return NEED_DATA
        self._buf.skip(HEADER_SIZE)
        body = self._buf.take(bodylen) or b""
        return BinaryResponse(opcode, status, body[extlen: extlen + keylen], body[:extlen],
                              body[extlen + keylen:], opaque, cas, datatype)
