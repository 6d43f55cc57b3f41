"""memcached's ASCII authentication (`-Y FILE`), sans I/O: the credential file and the gate.

Theory of operation: a server started with an auth file answers nothing on a new
connection until the client sends a `set <key> <flags> <exptime> <bytes>` whose data is
`<user> <password>` for an entry of the file; the key, flags and exptime are ignored
(doc/protocol.txt "Authentication"). `AuthenticatingParser` wraps the connection's
`RequestParser` and stands in front of it until then: every other line is answered
`CLIENT_ERROR unauthenticated`, a failed check `CLIENT_ERROR authentication failure`, and
the connection stays open either way; the accepted set is the `Authenticated` event
(answered STORED) and from there on the request parser sees every byte that followed it.
`Credentials` is the file parsed as memcached's authfile.c parses it, checked in constant
time; an `Authenticator` holds the table a server checks against (swapped whole when the
file is reloaded) and memcached's `auth_cmds`/`auth_errors` counters.

Each rule below names proto_text.c's try_read_command_asciiauth or authfile.c (1.6.18, the
differential oracle; tests/compat/test_ascii_auth.py pins the replies). Where 1.6.18 reads
past its buffer (a data length near 2**32 wraps) or buffers without bound, memring takes the
fix memcached made later (a data length above 16384: `CLIENT_ERROR auth token too long`).
The data is read as 1.6.18 to 1.6.39 read it (split into tokens, the first two used);
1.6.40 (778cfd6e, a refactor) takes everything after the first space as the password.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from memring.protocol.numeric import parse_u32_flags
from memring.protocol.receive_buffer import ReceiveBuffer
from memring.protocol.request_parser import MAX_UNTERMINATED_LINE, RequestParser
from memring.protocol.requests import Authenticated, ProtocolError, Request
from memring.protocol.sentinels import NEED_DATA, NeedData

UNAUTHENTICATED = b"CLIENT_ERROR unauthenticated\r\n"
AUTHENTICATION_FAILURE = b"CLIENT_ERROR authentication failure\r\n"
BAD_TOKEN_FORMAT = b"CLIENT_ERROR bad authentication token format\r\n"
BAD_TERMINATION = b"CLIENT_ERROR bad command line termination\r\n"
TOKEN_TOO_LONG = b"CLIENT_ERROR auth token too long\r\n"
# What only a connection that has not authenticated yet is answered (a client reading one
# knows its requests were not run: the proxy fails such a backend connection).
GATE_REPLIES = frozenset({UNAUTHENTICATED, AUTHENTICATION_FAILURE, BAD_TOKEN_FORMAT,
                          BAD_TERMINATION, TOKEN_TOO_LONG})

# authfile.c: at most 8 entries are read (the rest is silently ignored), and a line is read
# with fgets into 256 bytes, so a line of 255 bytes or more ends the file there.
MAX_ENTRIES = 8
MAX_ENTRY_LEN = 256
# proto_text.c MAX_AUTH_REQ_LEN (memcached 1.6.42+, 9981d748; 1.6.18 waits for any length).
MAX_TOKEN_LENGTH = 16384


Login = tuple[bytes, bytes]  # a user and password a client authenticates with


class AuthFileError(ValueError):
    """The auth file is not what memcached would load (memcached refuses to start)."""


@dataclass(frozen=True)
class Credentials:
    """The users of an auth file, in file order; `ignored`: lines past MAX_ENTRIES."""

    entries: tuple[tuple[bytes, bytes], ...]
    ignored: int = 0

    @classmethod
    def parse(cls, data: bytes) -> Credentials:
        """authfile_load: `user:password` lines (the first ':' splits them; the password ends
        at '\\r', '\\n' or NUL); a line without ':' (a blank line, a comment) makes the whole
        file malformed; an empty file has no users."""
        entries: list[tuple[bytes, bytes]] = []
        start = 0
        while start < len(data):
            # fgets: through the newline, at most MAX_ENTRY_LEN - 1 bytes
            end = data.find(b"\n", start, start + MAX_ENTRY_LEN - 1)
            line = data[start: end + 1] if end >= 0 else data[start: start + MAX_ENTRY_LEN - 1]
            start += len(line)
            user, colon, rest = line.partition(b":")
            if not colon or b"\x00" in user:
                raise AuthFileError(f"entry {len(entries) + 1} is not 'user:password'")
            stop = min((i for i in map(rest.find, (b"\r", b"\n", b"\x00")) if i >= 0),
                       default=len(rest))
            entries.append((user, rest[:stop]))
            if len(entries) == MAX_ENTRIES:
                break
            if stop == len(rest) or rest[stop] == 0:
                break  # a NUL, or the end of what fgets read, ends the file for authfile.c
        ignored = len(data[start:].splitlines()) if len(entries) == MAX_ENTRIES else 0
        return cls(tuple(entries), ignored)

    def check(self, user: bytes, password: bytes) -> bool:
        """Whether `user` and `password` match an entry; every entry is compared, each in
        constant time, so the time taken says nothing about which part differed."""
        found = False
        for known_user, known_password in self.entries:
            # both compared whatever the first says (no short cut on a wrong user)
            same_user = hmac.compare_digest(user, known_user)
            same_password = hmac.compare_digest(password, known_password)
            found |= same_user & same_password
        return found

    def first(self) -> Login | None:
        """The file's first user and password: what a client of these servers sends."""
        return self.entries[0] if self.entries else None


def auth_request(user: bytes, password: bytes, key: bytes = b"auth") -> bytes:
    """The bytes a client sends to authenticate (doc/protocol.txt: any key)."""
    token = user + b" " + password
    return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(token), token)


class Authenticator:
    """The credentials a server checks clients against, and memcached's counters."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials  # replaced whole on reload (SIGHUP)
        self.auth_cmds = 0    # checks made, success or failure (memcached's stats)
        self.auth_errors = 0  # checks failed

    def verify(self, user: bytes, password: bytes) -> bool:
        self.auth_cmds += 1
        if self.credentials.check(user, password):
            return True
        self.auth_errors += 1
        return False

    def reject(self) -> None:
        """A failed attempt that checked no password (binary SASL: not PLAIN, a step)."""
        self.auth_cmds += 1
        self.auth_errors += 1

    def reset(self) -> None:
        """`stats reset` clears them, as memcached's thread stats."""
        self.auth_cmds = self.auth_errors = 0


class AuthenticatingParser:
    """A connection's `RequestParser` behind memcached's ASCII authentication: the same
    `receive_data`/`next_event`/`buffered`, so servers drive either alike."""

    __slots__ = ("_auth", "_authenticated", "_buf", "_closed", "_parser", "_size")

    def __init__(self, parser: RequestParser, auth: Authenticator) -> None:
        self._parser = parser
        self._auth = auth
        self._buf = ReceiveBuffer()
        self._size = -1  # the auth set's data length once its line is read
        self._authenticated = False
        self._closed = False

    @property
    def authenticated(self) -> bool:
        return self._authenticated

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._parser.buffered

    @property
    def in_data_block(self) -> bool:
        # The auth set's own data block is read as a line would be (try_read_command_asciiauth
        # waits in conn_parse_cmd, which flushes): only the requests' parser holds replies.
        return self._parser.in_data_block

    @property
    def swallowing(self) -> bool:
        return self._parser.swallowing

    @property
    def swallow_left(self) -> int:
        return self._parser.swallow_left

    def receive_data(self, data: bytes) -> None:
        if self._authenticated:
            self._parser.receive_data(data)
        elif not self._closed:
            self._buf += data

    def next_event(self) -> Request | NeedData:
        if self._authenticated:
            return self._parser.next_event()
        if self._closed:
            return NEED_DATA
        if self._size < 0:
            if len(self._buf) < 2:
                return NEED_DATA  # "impossible for the auth command to be this short"
            line = self._buf.take_line()
            if line is None:
                if len(self._buf) > MAX_UNTERMINATED_LINE:
                    # "If no newline after 1k, getting junk data, close out."
                    self._closed = True
                    self._buf.clear()
                    return ProtocolError(b"", close=True)
                return NEED_DATA
            return self._auth_line(line)
        block = self._buf.take_block(self._size)
        if block is None:
            return NEED_DATA
        self._size = -1
        data, terminated = block
        if not terminated:
            # consumed exactly <bytes>+2 whatever they held, as for any data block
            return ProtocolError(BAD_TERMINATION)
        # The data is tokenized as a command line: up to a NUL, split on runs of ' ';
        # the first two tokens are the user and the password, the rest is ignored.
        tokens = [t for t in data.split(b"\x00", 1)[0].split(b" ") if t]
        if len(tokens) < 2:
            return ProtocolError(BAD_TOKEN_FORMAT)
        if not self._auth.verify(tokens[0], tokens[1]):
            return ProtocolError(AUTHENTICATION_FAILURE)
        self._authenticated = True
        rest = self._buf.take(len(self._buf))
        self._buf = ReceiveBuffer()
        if rest:
            self._parser.receive_data(rest)
        return Authenticated(tokens[0])

    def _auth_line(self, line: bytes) -> Request | NeedData:
        # tokenize_command on the line up to '\n' (a '\r' stays in the last token, where
        # strtoul stops at it); at least 5 tokens, the first exactly "set".
        tokens = [t for t in line.split(b"\x00", 1)[0].split(b" ") if t]
        if len(tokens) < 5 or tokens[0] != b"set":
            return ProtocolError(UNAUTHENTICATED)
        size = parse_u32_flags(tokens[4])  # safe_strtoul; memring refuses > 2**32-1
        if size is None:
            return ProtocolError(UNAUTHENTICATED)
        if size > MAX_TOKEN_LENGTH:
            return ProtocolError(TOKEN_TOO_LONG)  # its data is read as commands next
        self._size = size
        return self.next_event()
