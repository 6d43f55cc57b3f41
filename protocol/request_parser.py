"""The request side of the memcached text and meta protocols, sans I/O.

Theory of operation: the caller feeds bytes with `receive_data` and pulls events with
`next_event` until it returns NEED_DATA. The parser is in one of three states: reading
a command line, reading the data block a storage command announced, or swallowing a
data block memcached would discard after an error. Lines end at "\\n" (a "\\r" before
it is dropped) and tokens are split on " " only, as memcached's tokenize_command does.

Bad input never raises: it becomes a ProtocolError event carrying the exact reply
memcached gives and whether the connection closes. Memory is bounded: a line without a
newline may grow to 2048 bytes (memcached closes past that) unless it is a get/gets,
which may grow to `max_line` (then "SERVER_ERROR request too long" and close, as
memcached's own proxy answers); a data block is buffered only when its item fits
`max_item_size`, else it is swallowed as it streams by.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Final

from memring.protocol.meta_flags import (
    BAD_FORMAT,
    MAX_META_TOKENS,
    MAX_OPAQUE_LENGTH,
    MetaFlagError,
    decode_key,
    parse_meta_flags,
)
from memring.protocol.numeric import I32_MAX, parse_i32, parse_u32_flags, parse_u64
from memring.protocol.receive_buffer import ReceiveBuffer
from memring.protocol.requests import (
    Arithmetic,
    CacheMemlimit,
    Delete,
    FlushAll,
    Get,
    Lru,
    LruCrawler,
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaFlags,
    MetaGet,
    MetaNoop,
    MetaSet,
    ProtocolError,
    Quit,
    RefreshCerts,
    Request,
    Shutdown,
    Slabs,
    Stats,
    Store,
    Touch,
    Verbosity,
    Version,
    Watch,
)
from memring.protocol.sentinels import NEED_DATA, NeedData
from memring.protocol.sizes import KEY_MAX_LENGTH, item_size

__all__ = ["NEED_DATA", "RequestParser"]

# memcached closes a connection whose unterminated line passes 2048 bytes (memcached.c).
MAX_UNTERMINATED_LINE: Final = 2048
DEFAULT_MAX_LINE: Final = 1 << 20
DEFAULT_MAX_ITEM_SIZE: Final = 1 << 20

ERROR: Final = b"ERROR\r\n"
_BAD_FORMAT: Final = BAD_FORMAT + b"\r\n"
_TOO_LARGE: Final = b"SERVER_ERROR object too large for cache\r\n"
_BAD_CHUNK: Final = b"CLIENT_ERROR bad data chunk\r\n"
_TOO_LONG: Final = b"SERVER_ERROR request too long\r\n"
_NOREPLY: Final = b"noreply"
_OPAQUE_TOO_LONG: Final = b"CLIENT_ERROR opaque token too long\r\n"

# First letters memcached dispatches on before its generic branch; an unknown command
# starting with one of them answers ERROR even when its last token is "HTTP/..."
# (proto_text.c process_command_ascii).
_DISPATCHED_FIRST: Final = frozenset(b"gsacidt")


def _error(reply: bytes, noreply: bool = False) -> ProtocolError | None:
    # noreply hides every reply of a text command, errors included (live 1.6.18).
    return None if noreply else ProtocolError(reply + b"\r\n")


# The M tokens `ma` and `ms` take: none (0) or one of these letters (tuples spelled out, not
# starred literals, which mypyc cannot compile).
_META_ARITHMETIC_MODES = (0, ord("I"), ord("+"), ord("D"), ord("-"))
_META_SET_MODES = (0, ord("E"), ord("A"), ord("P"), ord("R"), ord("S"))


class RequestParser:
    """Turns a client's byte stream into request events (the server role)."""

    def __init__(self, *, max_line: int = DEFAULT_MAX_LINE,
                 max_item_size: int = DEFAULT_MAX_ITEM_SIZE) -> None:
        self.max_line = max_line
        self.max_item_size = max_item_size
        self._buf = ReceiveBuffer()
        # A storage command waiting for its data block: a builder and the block's size.
        self._pending: Callable[[bytes | None], Request | None] | None = None
        self._pending_size = 0
        self._swallow = 0
        self._closed = False
        self._first_byte_seen = False

    # -- feeding -------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        if self._closed:
            return  # the connection is closing: whatever follows is dropped
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def in_data_block(self) -> bool:
        """Waiting for the rest of a data block (to store or to swallow): memcached sends
        no reply while it waits there (memcached.c conn_nread, conn_swallow)."""
        return self._pending is not None or self._swallow > 0

    @property
    def swallowing(self) -> bool:
        """In a data block memcached discards (after an error)."""
        return self._swallow > 0

    @property
    def swallow_left(self) -> int:
        """Bytes of that block still to discard."""
        return self._swallow

    def __iter__(self) -> Iterator[Request]:
        while True:
            event = self.next_event()
            if event is NEED_DATA:
                return
            yield event

    def next_event(self) -> Request | NeedData:
        if not self._first_byte_seen and self._buf:
            self._first_byte_seen = True
            if self._buf.peek(1) == b"\x80":
                # memcached negotiates the binary protocol on a connection's first byte;
                # memring speaks only text and meta, so it closes.
                return self._close(b"")
        while not self._closed:
            if self._swallow:
                if not self._consume_swallow():
                    return NEED_DATA
                continue
            if self._pending is not None:
                block = self._buf.take_block(self._pending_size - 2)
                if block is None:
                    return NEED_DATA
                build = self._pending
                self._pending = None
                # memcached consumes exactly <bytes>+2 and checks the tail (no resync).
                data, terminated = block
                event: Request | None = build(data if terminated else None)
                if not terminated and type(event) is ProtocolError:
                    event.block = len(data)  # a bad data chunk: where it ends matters
                if event is not None:
                    return event
                continue
            buf = self._buf
            line = buf.take_line(drop_cr=True)  # (its "\r" dropped in the same copy)
            if line is None:
                return self._unterminated()
            if len(line) + (1 if buf.cr_dropped else 0) > self.max_line:
                return self._close(_TOO_LONG)
            event = self._line(line)
            if event is not None:
                return event
        return NEED_DATA

    # -- framing -------------------------------------------------------------------

    def _consume_swallow(self) -> bool:
        self._swallow -= self._buf.skip(self._swallow)
        return self._swallow == 0

    def _unterminated(self) -> Request | NeedData:
        pending = len(self._buf)
        if pending <= MAX_UNTERMINATED_LINE:
            return NEED_DATA
        head = self._buf.peek(110)
        stripped = head.lstrip(b" ")
        if len(head) - len(stripped) > 100 or not (
                stripped.startswith(b"get ") or stripped.startswith(b"gets ")):
            return self._close(b"")  # memcached closes silently
        if pending > self.max_line:
            return self._close(_TOO_LONG)
        return NEED_DATA

    def _close(self, reply: bytes) -> ProtocolError:
        self._closed = True
        self._buf.clear()
        return ProtocolError(reply, close=True)

    def _line(self, line: bytes) -> Request | None:
        nul = line.find(b"\x00")
        if nul >= 0:
            line = line[:nul]  # memcached tokenizes a line up to its first NUL (strlen)
        tokens = line.split(b" ")
        if b"" in tokens:
            tokens = [t for t in tokens if t]
            if not tokens:
                return ProtocolError(ERROR)
        command = tokens[0]
        # get and set, most requests by far: native calls, not the table's Python-level call
        if command == b"get":
            return self._retrieval(tokens)
        if command == b"set":
            return self._storage(tokens)
        handler = _DISPATCH.get(command)
        if handler is not None:
            return handler(self, tokens)
        # No command is shorter than 2 bytes: ERROR before any other check (process_command_ascii).
        if len(command) < 2 or command[0] in _DISPATCHED_FIRST or (
                command[0] == 0x6D and len(command) == 2):
            return ProtocolError(ERROR)
        if tokens[-1].startswith(b"HTTP/"):
            return self._close(b"")  # t/malicious-commands.t: close silently
        return ProtocolError(ERROR)

    def _expect_data(self, size: int, build: Callable[[bytes | None], Request | None]) -> None:
        self._pending = build
        self._pending_size = size

    def _swallow_data(self, size: int) -> None:
        self._swallow = size

    # -- text commands ---------------------------------------------------------------

    def _retrieval(self, tokens: list[bytes]) -> Request | None:
        command = tokens[0]
        exptime = 0
        if command in (b"gat", b"gats"):
            if len(tokens) < 2:
                return ProtocolError(ERROR)
            parsed = parse_i32(tokens[1])
            if parsed is None:
                return ProtocolError(b"CLIENT_ERROR invalid exptime argument\r\n")
            exptime = parsed
            keys = tokens[2:]
        else:
            if len(tokens) < 2:
                return ProtocolError(ERROR)
            del tokens[0]  # the keys, in the split's own list (no second list per get)
            keys = tokens
        for key in keys:
            if len(key) > KEY_MAX_LENGTH:
                # The whole reply is the error: values already found are dropped.
                return ProtocolError(_BAD_FORMAT)
        return Get(command, keys, exptime)

    def _storage(self, tokens: list[bytes]) -> Request | None:
        command = tokens[0]
        is_cas = command == b"cas"
        n = len(tokens)
        if (n not in (6, 7)) if is_cas else (n not in (5, 6)):
            return ProtocolError(ERROR)
        noreply = tokens[-1] == _NOREPLY
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return _error(BAD_FORMAT, noreply)
        flags = parse_u32_flags(tokens[2])
        exptime = parse_i32(tokens[3])
        length = parse_i32(tokens[4])
        if flags is None or exptime is None or length is None:
            return _error(BAD_FORMAT, noreply)
        cas_unique = 0
        if is_cas:
            parsed_cas = parse_u64(tokens[5])
            if parsed_cas is None:
                return _error(BAD_FORMAT, noreply)
            cas_unique = parsed_cas
        if length < 0 or length > I32_MAX - 2:
            return _error(BAD_FORMAT, noreply)
        if item_size(len(key), length, flags) > self.max_item_size:
            self._swallow_data(length + 2)
            if noreply:
                return ProtocolError(b"", drop_key=key) if command == b"set" else None
            return ProtocolError(_TOO_LARGE, drop_key=key if command == b"set" else None)
        self._expect_data(length + 2, partial(
            _store_with_data, command, key, flags, exptime, cas_unique, noreply))
        return None

    def _delete(self, tokens: list[bytes]) -> Request | None:
        n = len(tokens)
        if n < 2 or n > 4:
            return ProtocolError(ERROR)
        # memcached looks for noreply only past the key (`delete noreply` deletes the key
        # "noreply" and answers; proto_text.c process_delete_command, ntokens > 3).
        noreply = n > 2 and tokens[-1] == _NOREPLY
        if n > 2:
            hold_is_zero = tokens[2] == b"0"
            valid = (n == 3 and (hold_is_zero or noreply)) or (n == 4 and hold_is_zero and noreply)
            if not valid:
                return _error(b"CLIENT_ERROR bad command line format.  "
                              b"Usage: delete <key> [noreply]", noreply)
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return _error(BAD_FORMAT, noreply)
        return Delete(tokens[1], noreply)

    def _arithmetic(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) not in (3, 4):
            return ProtocolError(ERROR)
        noreply = tokens[-1] == _NOREPLY
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return _error(BAD_FORMAT, noreply)
        delta = parse_u64(tokens[2])
        if delta is None:
            return _error(b"CLIENT_ERROR invalid numeric delta argument", noreply)
        return Arithmetic(tokens[0], tokens[1], delta, noreply)

    def _touch(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) not in (3, 4):
            return ProtocolError(ERROR)
        noreply = tokens[-1] == _NOREPLY
        if len(tokens[1]) > KEY_MAX_LENGTH:
            return _error(BAD_FORMAT, noreply)
        exptime = parse_i32(tokens[2])
        if exptime is None:
            return _error(b"CLIENT_ERROR invalid exptime argument", noreply)
        return Touch(tokens[1], exptime, noreply)

    def _flush_all(self, tokens: list[bytes]) -> Request | None:
        n = len(tokens)
        if n > 3:
            return ProtocolError(ERROR)
        noreply = tokens[-1] == _NOREPLY
        delay = 0
        if n != (2 if noreply else 1):
            parsed = parse_i32(tokens[1])
            if parsed is None:
                return _error(b"CLIENT_ERROR invalid exptime argument", noreply)
            delay = parsed
        return FlushAll(delay, noreply)

    def _stats(self, tokens: list[bytes]) -> Request | None:
        return Stats(tokens[1:])

    def _verbosity(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) not in (2, 3):
            return ProtocolError(ERROR)
        noreply = tokens[-1] == _NOREPLY
        level = parse_u32_flags(tokens[1])
        if level is None:
            return _error(BAD_FORMAT, noreply)
        return Verbosity(level, noreply)

    def _cache_memlimit(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) not in (2, 3):
            return ProtocolError(ERROR)
        noreply = tokens[-1] == _NOREPLY
        megabytes = parse_u32_flags(tokens[1])
        if megabytes is None:
            return _error(b"ERROR", noreply)
        return CacheMemlimit(megabytes, noreply)

    # -- meta commands -------------------------------------------------------------

    def _meta_key(self, tokens: list[bytes], generic_errors: bool
                  ) -> tuple[bytes, MetaFlags] | ProtocolError:
        """Key length, token count and flags, checked in memcached's order."""
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return ProtocolError(_BAD_FORMAT)
        if len(tokens) > MAX_META_TOKENS:
            return ProtocolError(b"CLIENT_ERROR options flags are too long\r\n"
                                 if tokens[0] == b"mg" else
                                 b"CLIENT_ERROR options flags too long\r\n")
        start = 3 if tokens[0] == b"ms" else 2
        try:
            flags, key, error = parse_meta_flags(tokens, start, allow_x=tokens[0] == b"md")
        except MetaFlagError as exc:
            error = exc.message
            flags = MetaFlags()
        if error is not None:
            if generic_errors:
                error = b"CLIENT_ERROR invalid or duplicate flag"
            return ProtocolError(error + b"\r\n")
        if len(flags.opaque) > MAX_OPAQUE_LENGTH and tokens[0] not in (b"ms", b"ma"):
            return ProtocolError(_OPAQUE_TOO_LONG)
        return key, flags

    def _meta_get(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) < 2:
            return ProtocolError(ERROR)
        parsed = self._meta_key(tokens, generic_errors=False)
        if isinstance(parsed, ProtocolError):
            return parsed
        return MetaGet(*parsed)

    def _meta_delete(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) < 2:
            return ProtocolError(ERROR)
        parsed = self._meta_key(tokens, generic_errors=True)
        if isinstance(parsed, ProtocolError):
            return parsed
        return MetaDelete(*parsed)

    def _meta_arithmetic(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) < 2:
            return ProtocolError(ERROR)
        parsed = self._meta_key(tokens, generic_errors=True)
        if isinstance(parsed, ProtocolError):
            return parsed
        if parsed[1].mode not in _META_ARITHMETIC_MODES:  # 1.6.18: no lowercase (fuzzer, `ma k Mi`)
            return ProtocolError(b"CLIENT_ERROR invalid mode for ma M token\r\n")
        if len(parsed[1].opaque) > MAX_OPAQUE_LENGTH:  # after the mode, as for ms
            return ProtocolError(_OPAQUE_TOO_LONG)
        return MetaArithmetic(*parsed)

    def _meta_set(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) < 2:
            return ProtocolError(ERROR)
        if len(tokens[1]) > KEY_MAX_LENGTH or len(tokens) == 2:
            return ProtocolError(_BAD_FORMAT)
        if len(tokens) > MAX_META_TOKENS:
            return ProtocolError(b"CLIENT_ERROR options flags too long\r\n")
        length = parse_i32(tokens[2])
        if length is None or length < 0 or length > I32_MAX - 2:
            return ProtocolError(_BAD_FORMAT)
        # From here on an error swallows the data block (proto_text.c process_mset_command).
        parsed = self._meta_key(tokens, generic_errors=False)
        if isinstance(parsed, ProtocolError):
            self._swallow_data(length + 2)
            return parsed
        key, flags = parsed
        if flags.mode not in _META_SET_MODES:
            self._swallow_data(length + 2)
            return ProtocolError(b"CLIENT_ERROR invalid mode for ms M token\r\n")
        # 1.6.18 notes a long opaque, then reports a bad mode first (process_mset_command)
        if len(flags.opaque) > MAX_OPAQUE_LENGTH:
            self._swallow_data(length + 2)
            return ProtocolError(_OPAQUE_TOO_LONG)
        if item_size(len(key), length, flags.client_flags) > self.max_item_size:
            self._swallow_data(length + 2)
            return ProtocolError(_TOO_LARGE, drop_key=key)
        self._expect_data(length + 2, partial(_meta_set_with_data, key, flags))
        return None

    def _meta_debug(self, tokens: list[bytes]) -> Request | None:
        if len(tokens) < 2:
            return ProtocolError(_BAD_FORMAT)
        key = tokens[1]
        if len(key) > KEY_MAX_LENGTH:
            return ProtocolError(_BAD_FORMAT)
        base64 = len(tokens) > 2 and tokens[2] == b"b"
        if base64:
            decoded = decode_key(key)
            if decoded is None:
                return ProtocolError(_BAD_FORMAT)
            key = decoded
        return MetaDebug(key, base64)


# By command, the method that reads its tokens. At class level: a table of bound methods in
# each parser would make every parser a reference cycle, whose buffer (up to a 1 MiB
# half-sent line) only the cyclic GC could free after its connection closed.
# A data block's builders, bound with functools.partial rather than closures: a closure
# compiled by mypyc is a reference cycle (its environment holds it), left to the cyclic GC.
def _store_with_data(command: bytes, key: bytes, flags: int, exptime: int, cas_unique: int,
                     noreply: bool, value: bytes | None) -> Request:
    if value is None:
        # noreply hides the error, but its block still ends where memcached writes what it
        # holds (protocol.write_points): an error with nothing to send marks that point
        return ProtocolError(b"" if noreply else _BAD_CHUNK)
    return Store(command, key, flags, exptime, value, cas_unique, noreply)


def _meta_set_with_data(key: bytes, flags: MetaFlags, value: bytes | None) -> Request | None:
    if value is None:
        return ProtocolError(_BAD_CHUNK)  # meta mode always reports errors
    return MetaSet(key, flags, value)


_DISPATCH: Final[dict[bytes, Callable[[RequestParser, list[bytes]], Request | None]]] = {
    b"get": RequestParser._retrieval, b"gets": RequestParser._retrieval,
    b"gat": RequestParser._retrieval, b"gats": RequestParser._retrieval,
    b"set": RequestParser._storage, b"add": RequestParser._storage,
    b"replace": RequestParser._storage, b"append": RequestParser._storage,
    b"prepend": RequestParser._storage, b"cas": RequestParser._storage,
    b"delete": RequestParser._delete, b"incr": RequestParser._arithmetic,
    b"decr": RequestParser._arithmetic, b"touch": RequestParser._touch,
    b"flush_all": RequestParser._flush_all, b"stats": RequestParser._stats,
    b"version": lambda parser, tokens: Version(), b"quit": lambda parser, tokens: Quit(),
    b"verbosity": RequestParser._verbosity, b"cache_memlimit": RequestParser._cache_memlimit,
    b"shutdown": lambda parser, tokens: Shutdown(tokens[1:]),
    # memcached's set_noreply_maybe: the last token, whatever comes before it
    b"refresh_certs": lambda parser, tokens: RefreshCerts(tokens[-1] == _NOREPLY),
    b"mg": RequestParser._meta_get, b"ms": RequestParser._meta_set,
    b"md": RequestParser._meta_delete, b"ma": RequestParser._meta_arithmetic,
    b"mn": lambda parser, tokens: MetaNoop(), b"me": RequestParser._meta_debug,
    # the administration commands: their replies depend on the server's state
    b"lru_crawler": lambda parser, tokens: LruCrawler(tokens[1:]),
    b"lru": lambda parser, tokens: Lru(tokens[1:]) if len(tokens) > 1 else ProtocolError(ERROR),
    b"slabs": lambda parser, tokens: Slabs(tokens[1:]),
    b"watch": lambda parser, tokens: Watch(tokens[1:]),
}
