"""The bad-input cases that run against single servers (test_bad_input.py: memcached and
the backend) and through proxies (test_proxy_bad_input.py: a proxy over memcached shards and
one over backend shards). A test module binds the cases (`test_x = bad_input_cases.test_x`)
and the `kept`/`kept_backend` fixtures, and defines `running`, `server` and `backend` for them.

Each case sends raw bytes, asserts memcached's answer (and whether the connection closes),
then proves the server survived: a fresh connection gets `version` and the values stored
before the case, byte for byte. `backend` cases are about memring's own parser (bounded get
lines, lengths beyond int32), where it deliberately differs.
"""

from __future__ import annotations

import random
import socket
import struct
import zlib

import pytest

from tests.helpers import servers
from tests.helpers.wire import (
    CHUNK,
    VERSION_REPLY,
    MiB,
    assert_intact,
    connect,
    converse,
    get_reply,
    repeat,
    request,
    store,
)

KINDS = ("memcached", "backend")
MAX_ITEM_SIZE = 1 << 20


@pytest.fixture
def kept(request: pytest.FixtureRequest, server: servers.RunningServer) -> dict[bytes, bytes]:
    """Values stored before the case, binary-safe, that must survive it unchanged."""
    return keep(request, server)


@pytest.fixture
def kept_backend(request: pytest.FixtureRequest,
                 backend: servers.RunningServer) -> dict[bytes, bytes]:
    return keep(request, backend)


def keep(request: pytest.FixtureRequest, server: servers.RunningServer) -> dict[bytes, bytes]:
    tag = b"%08x" % zlib.crc32(request.node.nodeid.encode())
    values = {b"keep:" + tag + b":plain": b"hello world",
              b"keep:" + tag + b":binary": bytes(range(256)) + b"\r\nEND\r\n",
              b"keep:" + tag + b":large": bytes(i % 253 for i in range(200_000))}
    store(server, values)
    return values


# --- oversized lines ---------------------------------------------------------------------------

@pytest.mark.parametrize("prefix", [b"", b"set ", b"  delete "])
def test_long_line_without_newline_closes_silently(server: servers.RunningServer,
                                                   kept: dict[bytes, bytes],
                                                   prefix: bytes) -> None:
    # memcached closes a connection whose unterminated non-get line passes 2048 bytes.
    ex = converse(server, [prefix, *repeat(b"x" * CHUNK, 10 * MiB)], until=None, timeout=10)
    assert ex.closed and not ex.timed_out, ex.sent
    assert ex.reply == b""
    assert ex.sent < 10 * MiB, "the server should close long before reading 10 MB"
    assert_intact(server, kept)


def test_long_get_line_answers_request_too_long(backend: servers.RunningServer,
                                                kept_backend: dict[bytes, bytes]) -> None:
    # memcached buffers a multiget line without bound; the backend stops at --max-line (1 MiB).
    ex = converse(backend, [b"get ", *repeat(b"somekey " * (CHUNK // 8), 10 * MiB)],
                  until=None, timeout=10)
    assert ex.closed and not ex.timed_out, (ex.reply, ex.sent)
    assert ex.reply == b"SERVER_ERROR request too long\r\n", ex.reply
    assert_intact(backend, kept_backend)


def test_long_get_line_with_newline_under_the_limit_works(server: servers.RunningServer,
                                                          kept: dict[bytes, bytes]) -> None:
    small = [k for k in kept if len(kept[k]) < 1000]
    keys = small * 1500  # ~70 KB of keys: well past 2048, well under 1 MiB
    reply = request(server, b"get " + b" ".join(keys) + b"\r\n")
    assert reply == b"".join(get_reply({k: kept[k]}) for k in keys) + b"END\r\n"
    assert_intact(server, kept)


# --- bad lengths ---------------------------------------------------------------------------------

# Lengths memcached rejects before allocating: negative, not a number, and above INT_MAX - 2
# (proto_text.c process_update_command: `vlen < 0 || vlen > (INT_MAX - 2)`).
@pytest.mark.parametrize("length", [b"-1", b"-100", b"abc", b"1x", b"2147483646", b"2147483647"])
def test_bad_length_is_a_command_line_error(server: servers.RunningServer,
                                            kept: dict[bytes, bytes], length: bytes) -> None:
    key = next(iter(kept))
    reply = request(server, b"set %s 0 0 %s\r\nhello\r\nget %s\r\n" % (key, length, key))
    # The data line is not swallowed: it is parsed as a command and answers ERROR.
    assert reply == (b"CLIENT_ERROR bad command line format\r\nERROR\r\n"
                     + get_reply({key: kept[key]}) + b"END\r\n")
    assert_intact(server, kept)


@pytest.mark.parametrize("length", [b"99999999999", b"4294967296", b"-4294967295"])
def test_length_beyond_int32_is_rejected(backend: servers.RunningServer,
                                         kept_backend: dict[bytes, bytes], length: bytes) -> None:
    # Backend only: 1.6.18's safe_strtol stores strtol's long into an int32, so 99999999999
    # becomes 1215752191 (too large, then 1.2 GB swallowed) and 4294967296 becomes 0. The
    # project rejects such lengths as a bad command line (see memcached-protocol.md).
    key = next(iter(kept_backend))
    reply = request(backend, b"set %s 0 0 %s\r\nhello\r\nget %s\r\n" % (key, length, key))
    assert reply == (b"CLIENT_ERROR bad command line format\r\nERROR\r\n"
                     + get_reply({key: kept_backend[key]}) + b"END\r\n")
    assert_intact(backend, kept_backend)


@pytest.mark.parametrize("command", [b"set", b"add", b"replace", b"append", b"prepend"])
def test_value_larger_than_the_item_limit(server: servers.RunningServer,
                                          kept: dict[bytes, bytes], command: bytes) -> None:
    store(server, {b"victim": b"old value"})
    size = 2 * MiB
    # The data would answer VERSION if it were parsed as commands instead of swallowed.
    data = (b"version\r\n" * (size // 9 + 1))[:size]
    payload = b"%s victim 0 0 %d\r\n%s\r\nget victim\r\n" % (command, size, data)
    reply = request(server, payload)
    # memcached 1.6.18 (process_update_command): only set unlinks the old item.
    after = b"END\r\n" if command == b"set" else get_reply({b"victim": b"old value"}) + b"END\r\n"
    assert reply == b"SERVER_ERROR object too large for cache\r\n" + after
    assert_intact(server, kept)


def test_value_one_byte_over_the_limit(server: servers.RunningServer,
                                       kept: dict[bytes, bytes]) -> None:
    key = b"edge"
    largest = MAX_ITEM_SIZE - 59 - len(key)
    value = b"z" * largest
    reply = request(server, b"set %s 0 0 %d\r\n%s\r\nset %s 0 0 %d\r\n%s\r\nget %s\r\n"
                    % (key, largest, value, key, largest + 1, value + b"z", key))
    assert reply == b"STORED\r\nSERVER_ERROR object too large for cache\r\nEND\r\n"
    assert_intact(server, kept)


def test_bad_data_chunk(server: servers.RunningServer, kept: dict[bytes, bytes]) -> None:
    key = next(iter(kept))
    # 5 bytes announced, 7 sent: memcached eats 5+2 bytes, finds no "\r\n", and resumes right
    # after them, so the trailing "\r\n" is an empty line (ERROR).
    reply = request(server, b"set %s 0 0 5\r\nhello!!\r\nget %s\r\n" % (key, key))
    assert reply == (b"CLIENT_ERROR bad data chunk\r\nERROR\r\n"
                     + get_reply({key: kept[key]}) + b"END\r\n")
    assert_intact(server, kept)


# --- keys ------------------------------------------------------------------------------------------

def test_key_length_limit(server: servers.RunningServer, kept: dict[bytes, bytes]) -> None:
    # One round trip per command: memcached 1.6.18 drops every reply still queued from the same
    # read when a get meets a key > 250 (seen live: "set a 0 0 2\r\nok\r\nget <251>\r\n"
    # answers only the CLIENT_ERROR), a memcached bug the backend need not copy.
    k250, k251 = b"k" * 250, b"k" * 251
    first = next(iter(kept))
    bad = b"CLIENT_ERROR bad command line format\r\n"
    exchanges = [
        (b"set %s 0 0 2\r\nok\r\n" % k250, b"STORED\r\n"),
        (b"get %s\r\n" % k250, get_reply({k250: b"ok"}) + b"END\r\n"),
        (b"set %s 0 0 2\r\nno\r\n" % k251, bad + b"ERROR\r\n"),  # "no" parses as a command
        (b"get %s\r\n" % k251, bad),
        (b"get %s %s\r\n" % (first, k251), bad),  # the VALUE already built is dropped, no END
        (b"gets %s %s\r\n" % (k250, k251), bad),
        (b"delete %s\r\n" % k251, bad),
        (b"incr %s 1\r\n" % k251, bad),
        (b"touch %s 1\r\n" % k251, bad),
        (b"add %s 0 0 2 noreply\r\nno\r\n" % k251, b"ERROR\r\n"),  # noreply hides the error
    ]
    replies = [request(server, sent) for sent, _ in exchanges]
    assert replies == [expected for _, expected in exchanges]
    assert_intact(server, {**kept, k250: b"ok"})


# --- garbage -------------------------------------------------------------------------------------

def test_binary_garbage_on_one_connection_keeps_the_connection(server: servers.RunningServer,
                                                                kept: dict[bytes, bytes]) -> None:
    # Lines of pure junk answer ERROR each and leave the connection usable.
    junk = b"\x00\xff\x01junk\xfe\r\n" * 50 + b"\xff\xff\r\n" + b"\x00\r\n"
    key = next(iter(kept))
    reply = request(server, junk + b"get %s\r\n" % key)
    assert reply == b"ERROR\r\n" * 52 + get_reply({key: kept[key]}) + b"END\r\n"
    assert_intact(server, kept)


def test_0x80_after_the_first_line_is_an_unknown_command(server: servers.RunningServer,
                                                        kept: dict[bytes, bytes]) -> None:
    # memcached picks the protocol from the first byte of a connection only; later on, a line
    # starting with 0x80 is just an unknown command (proto_text.c: ERROR, connection kept).
    reply = request(server, b"version\r\n\x80\x0b\x00\x00 junk\r\n\x80\r\nversion\r\n")
    assert reply == VERSION_REPLY + b"ERROR\r\nERROR\r\n" + VERSION_REPLY
    assert_intact(server, kept)


BINARY_VERSION_REQUEST = struct.pack(">BBHBBHIIQ", 0x80, 0x0B, 0, 0, 0, 0, 0, 0, 0)


BINARY_PAYLOADS = [
    pytest.param(BINARY_VERSION_REQUEST, id="binary-version-request"),
    pytest.param(b"\x80" + random.Random(7).randbytes(3000), id="0x80-then-garbage"),
    pytest.param(b"\x80\x01\x00\x03\r\n", id="0x80-line"),
]


# --- clients that go away ------------------------------------------------------------------------

@pytest.mark.parametrize("abort", [False, True], ids=["close", "reset"])
def test_client_disconnects_mid_value(server: servers.RunningServer,
                                      kept: dict[bytes, bytes], abort: bool) -> None:
    store(server, {b"midold": b"old"})
    for key in (b"midnew", b"midold"):
        sock = connect(server)
        if abort:  # SO_LINGER 0: close sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall(b"set %s 0 0 100\r\n" % key + b"v" * 50)
        sock.close()
    # Whichever order the server sees the two connections in, neither set completes.
    reply = request(server, b"get midnew\r\nget midold\r\n")
    assert reply == b"END\r\n" + get_reply({b"midold": b"old"}) + b"END\r\n"
    assert_intact(server, {**kept, b"midold": b"old"})
