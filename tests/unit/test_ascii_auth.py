"""memcached's ASCII authentication, sans I/O: the auth file as authfile.c reads it, and the
gate fed each case whole, one byte at a time, and followed by the request after it."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memring.cluster.auth_file import load_credentials, reload_credentials
from memring.protocol import NEED_DATA, RequestParser
from memring.protocol.ascii_auth import (
    AUTHENTICATION_FAILURE,
    BAD_TERMINATION,
    BAD_TOKEN_FORMAT,
    MAX_ENTRIES,
    TOKEN_TOO_LONG,
    UNAUTHENTICATED,
    AuthenticatingParser,
    Authenticator,
    AuthFileError,
    Credentials,
    auth_request,
)
from memring.protocol.requests import Authenticated, Get, MetaNoop, ProtocolError
from memring.protocol.response_parser import ResponseParser, Unauthenticated

pytestmark = pytest.mark.unit

USERS = Credentials.parse(b"alice:secret\nbob:pa ss\n")


def refused(reply: bytes) -> ProtocolError:
    return ProtocolError(reply)


def events_of(data: bytes, step: int | None = None) -> tuple[list[object], Authenticator]:
    auth = Authenticator(USERS)
    parser = AuthenticatingParser(RequestParser(), auth)
    events: list[object] = []
    chunks = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
    return events, auth


def check(data: bytes, expected: list[object]) -> None:
    """Whole, byte by byte, and followed by `mn`: unauthenticated, or a request once in."""
    assert events_of(data)[0] == expected
    assert events_of(data, step=1)[0] == expected
    if not any(isinstance(e, ProtocolError) and e.close for e in expected):
        after = MetaNoop() if any(isinstance(e, Authenticated) for e in expected) \
            else refused(UNAUTHENTICATED)
        assert events_of(data + b"mn\r\n")[0] == [*expected, after]


# -- the auth file (authfile.c; each case checked against memcached 1.6.18 -Y) --------------

@pytest.mark.parametrize(("data", "entries"), [
    (b"", ()),  # no users: every attempt fails
    (b"a:b\n", ((b"a", b"b"),)),
    (b"a:b", ((b"a", b"b"),)),  # 1.6.18 chops the 'b' (fixed in 1.6.32, 8203c934): we don't
    (b"a:b\r\nc:d\r\n", ((b"a", b"b"), (b"c", b"d"))),
    (b"a:b:c\n", ((b"a", b"b:c"),)),  # the first ':' splits
    (b":x\nu:\n", ((b"", b"x"), (b"u", b""))),
    (b"#c:x\na:b\n", ((b"#c", b"x"), (b"a", b"b"))),  # no comments: a user named "#c"
    (b" a:b \n", ((b" a", b"b "),)),  # spaces are part of the names
    (b"a:b\x00c\nd:e\n", ((b"a", b"b"),)),  # a NUL in a password ends the file
    (b"u:" + b"x" * 252 + b"\nv:w\n", ((b"u", b"x" * 252), (b"v", b"w"))),
    # a line fgets cannot hold in 255 bytes ends the file there
    (b"u:" + b"x" * 253 + b"\nv:w\n", ((b"u", b"x" * 253),)),
])
def test_auth_file_entries(data: bytes, entries: tuple[tuple[bytes, bytes], ...]) -> None:
    assert Credentials.parse(data).entries == entries


@pytest.mark.parametrize("data", [b"\n", b"a:b\n\n", b"#comment\na:b\n", b"nocolon\n",
                                  b"a\x00:b\n"])
def test_a_line_without_colon_makes_the_file_malformed(data: bytes) -> None:
    with pytest.raises(AuthFileError):
        Credentials.parse(data)


def test_only_the_first_eight_users_are_read() -> None:
    users = Credentials.parse(b"".join(b"u%d:p\n" % i for i in range(10)))
    assert len(users.entries) == MAX_ENTRIES
    assert users.ignored == 2
    assert users.check(b"u7", b"p") and not users.check(b"u8", b"p")


def test_check_needs_user_and_password_of_one_entry() -> None:
    assert USERS.check(b"alice", b"secret")
    assert USERS.check(b"bob", b"pa ss")
    assert not USERS.check(b"alice", b"pa ss")
    assert not USERS.check(b"alice", b"secre")
    assert not USERS.check(b"", b"")
    assert Credentials.parse(b"").first() is None
    assert USERS.first() == (b"alice", b"secret")


# -- the gate (proto_text.c try_read_command_asciiauth) ---------------------------------------

def test_every_command_before_authentication_is_refused() -> None:
    for line in (b"version", b"quit", b"get a", b"mn", b"mg a v", b"stats", b"", b"add k 0 0 1"):
        check(line + b"\r\n", [refused(UNAUTHENTICATED)])


def test_the_auth_set_then_requests() -> None:
    check(auth_request(b"alice", b"secret"), [Authenticated(b"alice")])
    check(b"set k 0 0 12 noreply\r\nalice secret\r\nget k\r\n",  # noreply is ignored
          [Authenticated(b"alice"), Get(b"get", [b"k"])])
    check(b"set k 0 0 12\nalice secret\r\n", [Authenticated(b"alice")])  # bare LF line
    check(b"set k 0 0 +12 \r\nalice secret\r\n", [Authenticated(b"alice")])  # strtoul


def test_the_data_is_tokenized_as_1_6_18_does() -> None:
    # runs of spaces, leading spaces and tokens past the second are ignored; a NUL ends it
    for data in (b"alice  secret", b" alice secret", b"alice secret extra", b"alice secret\0x"):
        check(b"set k 0 0 %d\r\n%s\r\n" % (len(data), data), [Authenticated(b"alice")])
    # so a password with a space never matches (1.6.40 splits at the first space only)
    check(b"set k 0 0 9\r\nbob pa ss\r\n", [refused(AUTHENTICATION_FAILURE)])


def test_failures_keep_the_connection_open() -> None:
    check(b"set k 0 0 11\r\nalice wrong\r\n", [refused(AUTHENTICATION_FAILURE)])
    check(b"set k 0 0 5\r\nalice\r\n", [refused(BAD_TOKEN_FORMAT)])
    check(b"set k 0 0 0\r\n\r\n", [refused(BAD_TOKEN_FORMAT)])
    check(b"set k 0 0 12\r\nalice\rsecret\r\n", [refused(BAD_TOKEN_FORMAT)])
    # <bytes>+2 consumed whatever they hold, then the tail checked
    check(b"set k 0 0 10\r\nalice secrXY", [refused(BAD_TERMINATION)])
    check(b"set k 0 0 11\r\nalice wrong\r\nset k 0 0 12\r\nalice secret\r\n",
          [refused(AUTHENTICATION_FAILURE), Authenticated(b"alice")])


def test_a_bad_auth_line_is_unauthenticated_and_its_data_read_as_a_command() -> None:
    for line in (b"set k 0 12", b"set k 0 0 x", b"set k 0 0 -1", b"setx k 0 0 12",
                 b"set\tk 0 0 12", b"set k 0 0 4294967296"):
        check(line + b"\r\n", [refused(UNAUTHENTICATED)])
    check(b"set k 0 0 12abc\r\nalice secret\r\n",
          [refused(UNAUTHENTICATED), refused(UNAUTHENTICATED)])


def test_a_long_token_is_refused_without_reading_it() -> None:
    # memcached 1.6.42's MAX_AUTH_REQ_LEN; 1.6.18 waits for any length (or wraps past 2**32)
    check(b"set k 0 0 16385\r\n", [refused(TOKEN_TOO_LONG)])
    assert events_of(b"set k 0 0 16384\r\n")[0] == []  # waits for its data


def test_an_unterminated_line_past_2048_bytes_closes() -> None:
    check(b"x" * 2049, [ProtocolError(b"", close=True)])
    check(b"x" * 2048, [])


def test_a_lone_byte_waits_as_1_6_18_does() -> None:
    assert events_of(b"\n")[0] == []
    assert events_of(b"\n\n")[0] == [refused(UNAUTHENTICATED)]  # and the second waits
    check(b"\r\n\r\n", [refused(UNAUTHENTICATED), refused(UNAUTHENTICATED)])


def test_counters() -> None:
    _, auth = events_of(b"set k 0 0 11\r\nalice wrong\r\nset k 0 0 5\r\nalice\r\nget k\r\n"
                        b"set k 0 0 12\r\nalice secret\r\n")
    assert (auth.auth_cmds, auth.auth_errors) == (2, 1)  # token format errors are not checks
    auth.reset()
    assert (auth.auth_cmds, auth.auth_errors) == (0, 0)


def test_a_reload_applies_to_the_next_attempt() -> None:
    auth = Authenticator(USERS)
    parser = AuthenticatingParser(RequestParser(), auth)
    auth.credentials = Credentials.parse(b"carol:new\n")
    parser.receive_data(auth_request(b"alice", b"secret") + auth_request(b"carol", b"new"))
    assert parser.next_event() == refused(AUTHENTICATION_FAILURE)
    assert parser.next_event() == Authenticated(b"carol")
    assert parser.authenticated and parser.buffered == 0


def test_the_client_side_knows_a_refusal_from_a_reply() -> None:
    for reply in (UNAUTHENTICATED, AUTHENTICATION_FAILURE, BAD_TOKEN_FORMAT, BAD_TERMINATION,
                  TOKEN_TOO_LONG):
        parser = ResponseParser()
        parser.receive_data(reply)
        with pytest.raises(Unauthenticated):
            parser.next_event()


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_the_gate_yields_events_or_refusals_and_nothing_else(chunks: list[bytes]) -> None:
    parser = AuthenticatingParser(RequestParser(), Authenticator(USERS))
    for chunk in chunks:
        parser.receive_data(chunk)
        for _ in range(100):
            event = parser.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, (ProtocolError, Authenticated)) or parser.authenticated


def test_reload_keeps_the_table_when_the_file_is_bad(tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "users"
    path.write_bytes(b"alice:secret\n")
    auth = Authenticator(load_credentials(str(path)))
    path.write_bytes(b"carol:new\n")
    assert reload_credentials(auth, str(path))
    assert auth.credentials.check(b"carol", b"new") and not auth.credentials.check(b"alice",
                                                                                  b"secret")
    path.write_bytes(b"carol:new\n\n")
    assert not reload_credentials(auth, str(path))
    assert auth.credentials.check(b"carol", b"new")
    assert "keeping the 1 user(s) loaded before" in caplog.text
    path.unlink()
    assert not reload_credentials(auth, str(path))
    with pytest.raises(AuthFileError, match="cannot read auth file"):
        load_credentials(str(path))
