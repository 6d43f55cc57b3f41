"""Hostile and broken input through the proxy, checked against memcached 1.6.18.

The cases shared with test_bad_input.py (tests/helpers/bad_input_cases.py) are bound
here and this module's fixtures hand them a proxy over 3 memcached shards and a
proxy over 3 memring backend shards instead of single servers. Its "backend-only" cases
(bounded get lines, lengths beyond int32) are about memring's
own parser, which is the proxy's here, so they run through both proxies.

On top of those: a too-large set removes the old value on the shard itself (asked
directly), seeded binary garbage and binary-protocol frames (a first byte 0x80) answer
byte for byte what memcached answers directly, a
client that pipelines gets of a large value and never reads its replies neither starves
other clients nor grows the proxy's memory without bound, and 2,000 idle connections
leave the proxy up, serving, and small.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.helpers import bad_input_cases as cases
from tests.helpers import proxy_fixtures, servers, wire

pytestmark = pytest.mark.integration

KINDS = cases.KINDS
MiB = wire.MiB

# --- the cases shared with test_bad_input.py, through a proxy ------------------------------

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


running = proxy_fixtures.running
server = proxy_fixtures.server


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest,
            running: dict[str, servers.RunningServer]) -> servers.RunningServer:
    """What bi's backend-only cases get: memring's parser, i.e. either proxy."""
    return running[request.param]


@pytest.fixture(scope="module")
def oracle() -> Iterator[servers.RunningServer]:
    with servers.memcached() as server:
        yield server


# --- too large values: the shard loses the old value --------------------------------------------

@pytest.mark.parametrize("command", [b"set", b"add", b"replace", b"append", b"prepend"])
@pytest.mark.parametrize("noreply", [False, True], ids=["reply", "noreply"])
def test_too_large_value_drops_the_old_value_on_the_shard(server: servers.RunningServer,
                                                          command: bytes, noreply: bool) -> None:
    victims = [b"victim:%s:%d:%d" % (command, noreply, i) for i in range(6)]
    wire.store(server, dict.fromkeys(victims, b"old value"))
    where = wire.placement(server.upstreams, victims)
    assert len(set(where.values())) >= 2, where  # the victims live on several shards
    size = 2 * MiB
    data = (b"version\r\n" * (size // 9 + 1))[:size]
    suffix = b" noreply" if noreply else b""
    payload = b"".join(b"%s %s 0 0 %d%s\r\n%s\r\n" % (command, v, size, suffix, data)
                       for v in victims)
    too_large = b"" if noreply else b"SERVER_ERROR object too large for cache\r\n"
    assert wire.request(server, payload) == too_large * len(victims)
    # Asked of the shards directly: memcached's `set` unlinks the old item, the others keep it.
    left = wire.holders(server.upstreams, victims)
    if command == b"set":
        assert all(not v for v in left.values()), left
    else:
        assert {k: v for k, v in left.items()} == {k: [where[k]] for k in victims}
    assert wire.request(server, b"get " + b" ".join(victims) + b"\r\n") == (
        b"END\r\n" if command == b"set"
        else wire.get_reply(dict.fromkeys(victims, b"old value")) + b"END\r\n")


# --- the binary protocol, compared with memcached itself ----------------------------------------

@pytest.mark.parametrize("payload", cases.BINARY_PAYLOADS)
def test_first_byte_0x80_speaks_binary_as_memcached(running: dict[str, servers.RunningServer],
                                                   oracle: servers.RunningServer,
                                                   payload: bytes) -> None:
    """memcached -B auto: a first byte 0x80 makes the connection binary; the proxy answers
    (or waits, or closes) as memcached does directly, and its other clients go on."""
    proxies = [running[kind] for kind in KINDS]
    expected, *answers = wire.converse_together([oracle, *proxies], [payload], until=None,
                                                timeout=2)
    for kind, proxy, got in zip(KINDS, proxies, answers, strict=True):
        assert (got.closed, got.timed_out, got.reply) == (
            expected.closed, expected.timed_out, expected.reply), kind
        wire.assert_intact(proxy, {})


# --- garbage, compared with memcached itself ----------------------------------------------------

@pytest.mark.parametrize("seed", [1, 2, 3])
def test_binary_garbage_matches_memcached_direct(running: dict[str, servers.RunningServer],
                                                 oracle: servers.RunningServer,
                                                 seed: int) -> None:
    blob = wire.garbage(seed, 16 * 1024)
    # The proxy answers `stats` (and `version`) itself; garbage must not contain them.
    assert not any(line.lstrip(b" ").startswith((b"stats", b"version", b"flush_all",
                                                 b"verbosity"))
                   for line in blob.split(b"\n")), seed
    expected = wire.converse(oracle, [blob, b"\r\n" + wire.SENTINEL], until=wire.SENTINEL_REPLY,
                           timeout=5)
    assert not expected.timed_out and not expected.closed, expected
    for kind in KINDS:
        proxy = running[kind]
        got = wire.converse(proxy, [blob, b"\r\n" + wire.SENTINEL], until=wire.SENTINEL_REPLY,
                          timeout=5)
        assert (got.closed, got.timed_out, got.reply) == (False, False, expected.reply), (
            kind, wire.first_difference(expected.reply, got.reply, blob))
        wire.assert_intact(proxy, {})


def test_too_many_connections_through_the_proxy() -> None:
    with servers.proxy_over("backend", shards=1, max_connections=5) as proxy:
        wire.store(proxy, {b"k": b"v"})
        # the limit counts from a connection that is the proxy's only one: the readiness
        # probe's and store's hang-ups are noticed asynchronously
        conns = [wire.only_connection(proxy)]
        conns += [wire.connect(proxy) for _ in range(4)]
        try:
            for sock in conns:
                sock.sendall(b"version\r\n")
                assert sock.recv(100) == wire.VERSION_REPLY
            with wire.connect(proxy) as extra:
                ex = wire.drive(extra, [], until=None, timeout=3)
            assert (ex.reply, ex.closed) == (b"ERROR Too many open connections\r\n", True), ex
            for sock in conns[:2]:
                sock.close()
            for _ in range(50):
                ex = wire.converse(proxy, [b"get k\r\n"], until=b"END\r\n", timeout=3)
                if ex.reply != b"ERROR Too many open connections\r\n":
                    break
                time.sleep(0.05)
            assert ex.reply == b"VALUE k 0 1\r\nv\r\nEND\r\n", ex
        finally:
            for sock in conns:
                sock.close()


# --- clients that hold the proxy's resources ------------------------------------------------------

def serve_check(proxy: servers.RunningServer, tag: int,
                kept: dict[bytes, bytes] | None = None) -> float:
    """A normal client's set + get round trip on a fresh connection (plus reads of `kept`);
    its duration. Blocking sockets with timeouts: select() cannot take fds past 1023."""
    started = time.perf_counter()
    key, value = b"other:%d" % tag, b"value-%d" % tag
    kept = kept or {}
    payload = (b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (key, len(value), value, key)
               + b"".join(b"get %s\r\n" % k for k in kept) + wire.SENTINEL)
    expected = (b"STORED\r\n" + wire.get_reply({key: value}) + b"END\r\n"
                + b"".join(wire.get_reply({k: v}) + b"END\r\n" for k, v in kept.items())
                + wire.SENTINEL_REPLY)
    with wire.connect(proxy) as sock:
        sock.sendall(payload)
        assert wire.read_until(sock, wire.SENTINEL_REPLY) == expected
    return time.perf_counter() - started


BIG_VALUE = 256 * 1024
STUCK_GETS = 400  # 3.6 KB of requests asking for ~100 MB of replies
# What a proxy may spend on one client that does not read: its socket buffers, a batch's
# worth of requests and some replies in flight. Holding all 100 MB of replies would pass it.
STUCK_RSS_BOUND_MB = 64


def test_client_that_never_reads_does_not_hold_the_proxy(
        capsys: pytest.CaptureFixture[str]) -> None:
    with servers.proxy_over("backend", shards=3) as proxy:
        big = bytes(i % 251 for i in range(BIG_VALUE))
        wire.store(proxy, {b"big": big})
        serve_check(proxy, 0)
        start_kib = wire.rss_kib(proxy.pid)
        figures = [("start", start_kib)]
        latencies = []
        stuck = socket.create_connection(proxy.address, timeout=3)
        try:
            stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.sendall(b"get big\r\n" * STUCK_GETS)  # and never read
            deadline = time.monotonic() + 3.0
            tag = 1
            while time.monotonic() < deadline:
                latencies.append(serve_check(proxy, tag))
                tag += 1
                figures.append((f"stuck +{tag}", wire.rss_kib(proxy.pid)))
                time.sleep(0.1)
            peak_kib = max(kib for _, kib in figures)
            assert proxy.process.poll() is None, "the proxy died"
        finally:
            stuck.close()
        time.sleep(0.3)
        latencies.append(serve_check(proxy, 999))
        end_kib = wire.rss_kib(proxy.pid)
        growth_mb = (peak_kib - start_kib) / 1024
        with capsys.disabled():
            print(f"\nclient stuck on {STUCK_GETS} gets of {BIG_VALUE // 1024} KiB "
                  f"({STUCK_GETS * BIG_VALUE / MiB:.0f} MiB of replies): proxy RSS start "
                  f"{start_kib / 1024:.1f} MB, peak {peak_kib / 1024:.1f} MB "
                  f"(+{growth_mb:.1f} MB), after close {end_kib / 1024:.1f} MB; "
                  f"{len(latencies)} other clients served meanwhile, max "
                  f"{max(latencies) * 1000:.0f} ms")
        assert max(latencies) < 1.0, latencies
        assert growth_mb < STUCK_RSS_BOUND_MB, (
            f"proxy RSS grew {growth_mb:.1f} MB for one client that does not read "
            f"(sent {STUCK_GETS} x 'get big' for a {BIG_VALUE}-byte value)")


IDLE = 2000
# 2,000 sessions (a task, a parser, a socket each) should cost a few tens of KB apiece.
IDLE_RSS_BOUND_MB = 50


many_files = proxy_fixtures.many_files


def test_two_thousand_idle_connections(many_files: None,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with servers.proxy_over("backend", shards=3) as proxy, contextlib.ExitStack() as socks:
        kept_values = {b"idle:k": b"v" * 1000}
        wire.store(proxy, kept_values)
        start_kib = wire.rss_kib(proxy.pid)
        started = time.monotonic()
        for i in range(IDLE):
            sock = socks.enter_context(socket.create_connection(proxy.address, timeout=3))
            if i % 3 == 1:
                sock.sendall(b"get idle:k idle:")  # half a line
            elif i % 3 == 2:
                sock.sendall(b"set idle:half%d 0 0 10\r\nabc" % i)  # half a value
        connected = time.monotonic() - started
        for _ in range(100):
            curr = int(wire.stats(proxy)["curr_connections"])
            if curr >= IDLE + 1:
                break
            time.sleep(0.05)
        assert curr >= IDLE + 1, curr
        held_kib = wire.rss_kib(proxy.pid)
        served = serve_check(proxy, 1, kept_values)
        assert proxy.process.poll() is None
        growth_mb = (held_kib - start_kib) / 1024
        with capsys.disabled():
            print(f"\n{IDLE} idle connections opened in {connected:.2f}s; proxy "
                  f"curr_connections {curr}; RSS {start_kib / 1024:.1f} -> "
                  f"{held_kib / 1024:.1f} MB (+{growth_mb:.1f} MB, "
                  f"{(held_kib - start_kib) / IDLE:.1f} KiB each); a new client served in "
                  f"{served * 1000:.0f} ms")
        assert growth_mb < IDLE_RSS_BOUND_MB
