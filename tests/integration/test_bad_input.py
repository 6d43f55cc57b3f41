"""Hostile and broken input against the memring backend, checked against memcached 1.6.18.

The cases that also run through the proxy live in tests/helpers/bad_input_cases.py and
are bound here. Each case sends raw bytes, asserts memcached's answer (and whether the connection closes),
then proves the server survived: a fresh connection gets `version` and the values stored
before the case, byte for byte. Cases that take `server` run against memcached as well as the
backend, so the expected bytes are checked against the real thing; cases where the backend
deliberately differs (bounded get lines, connection limit, memory) run
against the backend only.

Sockets are non-blocking and driven by select() against a deadline, so a server that stops
reading or never answers fails the test instead of hanging it; every loop is bounded.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.helpers import bad_input_cases as cases
from tests.helpers import servers, wire
from tests.helpers.wire import (
    CHUNK,
    SENTINEL,
    SENTINEL_REPLY,
    SOCKET_TIMEOUT,
    VERSION_REPLY,
    MiB,
    assert_intact,
    connect,
    converse,
    drive,
    first_difference,
    garbage,
    get_reply,
    repeat,
    request,
    rss_kib,
    store,
)

pytestmark = pytest.mark.integration

KINDS = cases.KINDS


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


# --- the cases shared with test_proxy_bad_input.py (tests/helpers/bad_input_cases.py) -------

kept = cases.kept
kept_backend = cases.kept_backend

test_long_line_without_newline_closes_silently = (
    cases.test_long_line_without_newline_closes_silently)
test_long_get_line_answers_request_too_long = cases.test_long_get_line_answers_request_too_long
test_long_get_line_with_newline_under_the_limit_works = (
    cases.test_long_get_line_with_newline_under_the_limit_works)
test_bad_length_is_a_command_line_error = cases.test_bad_length_is_a_command_line_error
test_length_beyond_int32_is_rejected = cases.test_length_beyond_int32_is_rejected
test_value_larger_than_the_item_limit = cases.test_value_larger_than_the_item_limit
test_value_one_byte_over_the_limit = cases.test_value_one_byte_over_the_limit
test_bad_data_chunk = cases.test_bad_data_chunk
test_key_length_limit = cases.test_key_length_limit
test_binary_garbage_on_one_connection_keeps_the_connection = (
    cases.test_binary_garbage_on_one_connection_keeps_the_connection)
test_0x80_after_the_first_line_is_an_unknown_command = (
    cases.test_0x80_after_the_first_line_is_an_unknown_command)
test_client_disconnects_mid_value = cases.test_client_disconnects_mid_value


def test_binary_protocol_is_spoken(running: dict[str, servers.RunningServer],
                                   request: pytest.FixtureRequest) -> None:
    # A first byte 0x80 makes the connection binary, as memcached's -B auto (the binary
    # corpus is tests/compat/test_binary_differential.py); a later bad magic closes silently.
    replies = {}
    for kind in KINDS:
        server = running[kind]
        kept = cases.keep(request, server)
        with wire.connect(server) as sock:
            version = wire.drive(sock, [cases.BINARY_VERSION_REQUEST], until=b"1.6.18",
                                 timeout=3)
            bad_magic = wire.drive(sock, [b"\x81" + bytes(23)], until=None, timeout=3)
        assert not version.timed_out and not bad_magic.timed_out
        replies[kind] = (version.reply, bad_magic.reply, bad_magic.closed)
        assert_intact(server, kept)
    assert replies["backend"][0].startswith(b"\x81\x0b")
    assert replies["backend"] == replies["memcached"]
    assert replies["backend"][1:] == (b"", True)


# --- garbage -------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_garbage_matches_memcached(running: dict[str, servers.RunningServer],
                                          seed: int, request: pytest.FixtureRequest) -> None:
    blob = garbage(seed, 16 * 1024)
    assert b"\x00" in blob and b"\xff" in blob
    replies = {}
    for kind in KINDS:
        server = running[kind]
        kept = cases.keep(request, server)
        ex = converse(server, [blob, b"\r\n" + SENTINEL], until=SENTINEL_REPLY, timeout=5)
        replies[kind] = ex
        assert_intact(server, kept)
    memcached, backend = replies["memcached"], replies["backend"]
    assert not memcached.timed_out and not memcached.closed, memcached
    assert (backend.closed, backend.reply) == (memcached.closed, memcached.reply), (
        first_difference(memcached.reply, backend.reply, blob))


def test_a_key_repeated_past_memcacheds_limit_in_one_get(
        running: dict[str, servers.RunningServer]) -> None:
    """memcached returns a key at most 59,999 times in one get (limited_get's refcount
    limit); the rest of the repeats are misses. The backend answers the same bytes."""
    line = b"get " + b" ".join([b"r1", b"r2"] * 65_000) + b"\r\n"
    replies = {}
    for kind in KINDS:
        server = running[kind]
        wire.store(server, {b"r1": b"one", b"r2": b"two"})
        ex = converse(server, [line + SENTINEL], until=SENTINEL_REPLY, timeout=20)
        replies[kind] = ex.reply
    assert replies["memcached"].count(b"VALUE r1 ") == 59_999
    assert replies["backend"] == replies["memcached"]


# --- connection limit ----------------------------------------------------------------------------

def test_too_many_connections() -> None:
    with servers.start("backend", "--max-connections", "5") as server:
        store(server, {b"k": b"v"})
        # the limit counts from a connection that is the backend's only one: the readiness
        # probe's and store's hang-ups are noticed asynchronously
        conns = [wire.only_connection(server)]
        conns += [connect(server) for _ in range(4)]
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

