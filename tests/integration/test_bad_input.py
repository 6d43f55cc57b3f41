"""Hostile and broken input against the memring backend, checked against memcached 1.6.18.

Each case sends raw bytes, asserts memcached's answer (and whether the connection closes),
then proves the server survived: a fresh connection gets `version` and the values stored
before the case, byte for byte. Cases that take `server` run against memcached as well as the
backend, so the expected bytes are checked against the real thing; cases where the backend
deliberately differs (bounded get lines, binary protocol, connection limit, memory) run
against the backend only.

Sockets are non-blocking and driven by select() against a deadline, so a server that stops
reading or never answers fails the test instead of hanging it; every loop is bounded.
"""

from __future__ import annotations

import random
import select
import socket
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pytest

from tests import servers

pytestmark = pytest.mark.integration

KINDS = ("memcached", "backend")
VERSION_REPLY = b"VERSION 1.6.18\r\n"
SENTINEL = b"mn\r\n"
SENTINEL_REPLY = b"MN\r\n"
MAX_ITEM_SIZE = 1 << 20
MiB = 1 << 20
CHUNK = 64 * 1024
SOCKET_TIMEOUT = 3.0




# --- talking to a server -----------------------------------------------------------------------

@dataclass
class Exchange:
    """What a server did with one conversation."""

    reply: bytes
    closed: bool  # EOF or reset seen
    sent: int  # bytes the kernel accepted before the end
    timed_out: bool


def connect(server: servers.RunningServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def converse(server: servers.RunningServer, chunks: Iterable[bytes], *,
             until: bytes | None = SENTINEL_REPLY, timeout: float = 10.0,
             max_reply: int = 16 * MiB) -> Exchange:
    """Stream `chunks` while reading replies, until the reply ends with `until` (None: until
    the server closes), the server closes, or `timeout` s pass. Sending stops at the close."""
    with connect(server) as sock:
        return drive(sock, chunks, until=until, timeout=timeout, max_reply=max_reply)


def drive(sock: socket.socket, chunks: Iterable[bytes], *, until: bytes | None,
          timeout: float, max_reply: int = 16 * MiB) -> Exchange:
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    source = iter(chunks)
    pending = memoryview(b"")
    reply = bytearray()
    sent = 0
    closed = False
    exhausted = False
    while not closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return Exchange(bytes(reply), closed=False, sent=sent, timed_out=True)
        if not pending and not exhausted:
            chunk = next(source, None)
            if chunk is None:
                exhausted = True
            else:
                pending = memoryview(chunk)
        readable, writable, _ = select.select([sock], [sock] if pending else [], [],
                                              min(left, 0.5))
        if readable:
            try:
                data = sock.recv(CHUNK)
            except ConnectionResetError:
                data = b""
            if not data:
                closed = True
                break
            reply += data
            if len(reply) > max_reply:
                raise AssertionError(f"reply grew past {max_reply} bytes: {bytes(reply[:200])!r}")
            if until is not None and reply.endswith(until):
                break
        if writable and pending:
            try:
                n = sock.send(pending[:4 * CHUNK])
            except (BrokenPipeError, ConnectionResetError):
                pending = memoryview(b"")
                exhausted = True
                # The peer closed; whatever it said before that is still readable.
                continue
            pending = pending[n:]
            sent += n
    return Exchange(bytes(reply), closed=closed, sent=sent, timed_out=False)


def request(server: servers.RunningServer, payload: bytes) -> bytes:
    """Send `payload` plus the `mn` sentinel on a fresh connection; return the reply up to it."""
    ex = converse(server, [payload + SENTINEL], timeout=3)
    assert not ex.timed_out and not ex.closed, ex
    assert ex.reply.endswith(SENTINEL_REPLY), ex
    return ex.reply[: -len(SENTINEL_REPLY)]


def store(server: servers.RunningServer, values: dict[bytes, bytes]) -> None:
    payload = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in values.items())
    assert request(server, payload) == b"STORED\r\n" * len(values)


def get_reply(values: dict[bytes, bytes]) -> bytes:
    return b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in values.items())


def assert_intact(server: servers.RunningServer, kept: dict[bytes, bytes]) -> None:
    """The server is up, answers a fresh connection, and kept every value intact."""
    assert server.process.poll() is None, f"{server.name} exited with {server.process.returncode}"
    payload = b"version\r\n" + b"".join(b"get %s\r\n" % k for k in kept)
    expected = VERSION_REPLY + b"".join(get_reply({k: v}) + b"END\r\n" for k, v in kept.items())
    assert request(server, payload) == expected


@pytest.fixture(scope="module")
def running() -> Iterator[dict[str, servers.RunningServer]]:
    with servers.start("memcached") as memcached, servers.start("backend") as backend:
        yield {"memcached": memcached, "backend": backend}


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest,
           running: dict[str, servers.RunningServer]) -> servers.RunningServer:
    return running[request.param]


@pytest.fixture
def backend(running: dict[str, servers.RunningServer]) -> servers.RunningServer:
    return running["backend"]


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


def repeat(chunk: bytes, total: int) -> Iterator[bytes]:
    """`total` bytes as repeats of `chunk` (one buffer, so the client stays small)."""
    full, rest = divmod(total, len(chunk))
    for _ in range(full):
        yield chunk
    if rest:
        yield chunk[:rest]


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

def garbage(seed: int, size: int) -> bytes:
    """Seeded random bytes with every value incl. NUL and 0xff, a newline at least every 1000
    bytes (so no line reaches memcached's 2048-byte limit), and a first byte other than 0x80."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for pos in range(999, size, 1000):
        data[pos] = 0x0A
    if data[0] == 0x80:
        data[0] = 0x00
    return bytes(data)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_garbage_matches_memcached(running: dict[str, servers.RunningServer],
                                          seed: int, request: pytest.FixtureRequest) -> None:
    blob = garbage(seed, 16 * 1024)
    assert b"\x00" in blob and b"\xff" in blob
    replies = {}
    for kind in KINDS:
        server = running[kind]
        kept = keep(request, server)
        ex = converse(server, [blob, b"\r\n" + SENTINEL], until=SENTINEL_REPLY, timeout=5)
        replies[kind] = ex
        assert_intact(server, kept)
    memcached, backend = replies["memcached"], replies["backend"]
    assert not memcached.timed_out and not memcached.closed, memcached
    assert (backend.closed, backend.reply) == (memcached.closed, memcached.reply), (
        first_difference(memcached.reply, backend.reply, blob))


def first_difference(expected: bytes, got: bytes, sent: bytes) -> str:
    exp_lines, got_lines = expected.split(b"\r\n"), got.split(b"\r\n")
    for i, (e, g) in enumerate(zip(exp_lines, got_lines, strict=False)):  # noqa: B007
        if e != g:
            break
    else:
        i = min(len(exp_lines), len(got_lines))
    lines = sent.split(b"\n")
    return (f"reply line {i}: memcached {exp_lines[i:i + 2]!r} vs backend {got_lines[i:i + 2]!r}; "
            f"({len(exp_lines)} vs {len(got_lines)} reply lines); "
            f"request line {i}: {lines[i][:120] if i < len(lines) else b''!r}")


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


@pytest.mark.parametrize("payload", [
    pytest.param(BINARY_VERSION_REQUEST, id="binary-version-request"),
    pytest.param(b"\x80" + random.Random(7).randbytes(3000), id="0x80-then-garbage"),
    pytest.param(b"\x80\x01\x00\x03\r\n", id="0x80-line"),
])
def test_binary_protocol_is_refused(backend: servers.RunningServer,
                                    kept_backend: dict[bytes, bytes], payload: bytes) -> None:
    # memcached would speak the binary protocol; the backend closes without answering.
    ex = converse(backend, [payload], until=None, timeout=3)
    assert not ex.timed_out, f"no close within 3 s after {payload[:24]!r}; reply {ex.reply!r}"
    assert ex.closed and ex.reply == b"", ex
    assert_intact(backend, kept_backend)


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


# --- connection limit ----------------------------------------------------------------------------

def test_too_many_connections() -> None:
    with servers.start("backend", "--max-connections", "5") as server:
        time.sleep(0.2)  # let the backend notice that the readiness probe hung up
        store(server, {b"k": b"v"})
        time.sleep(0.2)
        conns = [connect(server) for _ in range(5)]
        try:
            for sock in conns:
                sock.sendall(b"version\r\n")
                assert sock.recv(100) == VERSION_REPLY
            with connect(server) as extra:
                ex = drive(extra, [], until=None, timeout=3)
            assert (ex.reply, ex.closed) == (b"ERROR Too many open connections\r\n", True), ex
            for sock in conns[:2]:
                sock.close()
            # The backend sees the hang-ups asynchronously: retry for a bounded time.
            for _ in range(50):
                ex = converse(server, [b"get k\r\n"], until=b"END\r\n", timeout=3)
                if ex.reply != b"ERROR Too many open connections\r\n":
                    break
                time.sleep(0.05)
            assert ex.reply == b"VALUE k 0 1\r\nv\r\nEND\r\n", ex
            for sock in conns[2:]:
                sock.sendall(b"get k\r\n")
                assert sock.recv(100) == b"VALUE k 0 1\r\nv\r\nEND\r\n"
        finally:
            for sock in conns:
                sock.close()


# --- memory ----------------------------------------------------------------------------------------

def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# Bound on RSS growth across the whole abuse run. The backend's own budget for this traffic:
# a 64 KiB read buffer and a 2 KiB pending line per connection, nothing for swallowed values,
# so 1000 idle connections (a trio task, a socket object and a parser each, a few KiB apiece)
# should cost a few MB. 40 MB leaves room for allocator slack while still catching any path
# that buffers a 10 MB line or a 50 MB value (each alone would exceed it).
RSS_GROWTH_BOUND_MB = 40


def test_memory_stays_bounded(capsys: pytest.CaptureFixture[str]) -> None:
    with servers.start("backend") as server:
        pid = server.pid
        kept = {b"mem:k": b"v" * 1000}
        store(server, kept)
        figures: list[tuple[str, int]] = [("start", rss_kib(pid))]

        ex = converse(server, repeat(b"x" * CHUNK, 10 * MiB), until=None, timeout=10)
        assert ex.closed and ex.reply == b"", ex
        figures.append(("after 10 MB junk line", rss_kib(pid)))

        # 100 MB of values too large to store, two 50 MB sets on one connection: swallowed.
        big = 50_000_000
        stream: list[bytes] = []
        for _ in range(2):
            stream += [b"set mem:big 0 0 %d\r\n" % big, *repeat(b"y" * CHUNK, big), b"\r\n"]
        ex = converse(server, [*stream, b"get mem:k\r\n"], until=b"END\r\n", timeout=30)
        too_large = b"SERVER_ERROR object too large for cache\r\n"
        assert ex.reply == too_large * 2 + get_reply(kept) + b"END\r\n", ex
        figures.append(("after 100 MB of too-large values", rss_kib(pid)))

        # 1000 connections, each with half a line pending.
        conns: list[socket.socket] = []
        try:
            for i in range(1000):
                sock = socket.create_connection(server.address, timeout=SOCKET_TIMEOUT)
                conns.append(sock)
                sock.sendall(b"set mem:half%d 0 0 10" % i if i % 2 else b"get mem:k mem:")
            # Wait (bounded) until the backend has accepted all of them.
            for _ in range(100):
                stats = request(server, b"stats\r\n")
                curr = int(stats.split(b"STAT curr_connections ")[1].split(b"\r\n")[0])
                if curr >= 1001:
                    break
                time.sleep(0.05)
            assert curr >= 1001, curr
            figures.append(("with 1000 half-line connections", rss_kib(pid)))
        finally:
            for sock in conns:
                sock.close()
        assert_intact(server, kept)
        figures.append(("end", rss_kib(pid)))

    start_kib = figures[0][1]
    peak_kib = max(kib for _, kib in figures)
    report = "; ".join(f"{name}: {kib / 1024:.1f} MB" for name, kib in figures)
    growth_mb = (peak_kib - start_kib) / 1024
    with capsys.disabled():
        print(f"\nbackend RSS: {report}; growth {growth_mb:.1f} MB")
    assert growth_mb < RSS_GROWTH_BOUND_MB, f"RSS grew {growth_mb:.1f} MB: {report}"
