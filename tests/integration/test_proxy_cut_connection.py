"""A backend connection cut for replies owed to closed clients (proxy/cut_connection.py).

Clients that pipeline big multi-gets and never read are closed by the proxy's buffer budget,
but their replies still stand ahead of a live client's requests on the shared backend
connection. Past the deadline, with bytes still arriving, the proxy cuts that connection and
sends the live client's reads once more on a fresh one; its writes are answered by the cut
connection, which drains for them (never sent twice), and its reads wait for them. A frozen backend (no bytes) still fails its requests at the timeout. Real proxy over
real memcached, 127.0.0.1.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import time
from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

TIMEOUT_MS = 300
BIG_KEYS = [b"cut:%02d" % i for i in range(40)]  # 40 x 250 KB: a 10 MB get
FLOOD_CLIENTS = 10  # x 4 gets of 10 MB each, never read
OWN = {b"own:a": b"a" * 50, b"own:b": b"b" * 60, b"own:c": b"c" * 70}


def started_proxy() -> Iterator[servers.RunningServer]:
    with servers.proxy_over("memcached", shards=1, pool_size=1, timeout_ms=TIMEOUT_MS,
                            max_buffered_bytes=32 << 20) as proxy:
        wire.store(proxy, OWN)
        for start in range(0, len(BIG_KEYS), 10):
            wire.store(proxy, {k: k[-2:] * 125_000 for k in BIG_KEYS[start:start + 10]})
        yield proxy


@pytest.fixture
def proxy() -> Iterator[servers.RunningServer]:
    yield from started_proxy()


def flood(proxy: servers.RunningServer) -> list[socket.socket]:
    """Clients that queue 400 MB of replies on the one backend connection, then reset
    their connections: those replies are owed to nobody."""
    clients = []
    for _ in range(FLOOD_CLIENTS):
        sock = socket.create_connection(proxy.address, timeout=5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.sendall((b"get " + b" ".join(BIG_KEYS) + b"\r\n") * 4)
        clients.append(sock)
    time.sleep(0.05)  # their gets are on the connection before the live client's requests
    for sock in clients:
        sock.close()  # (a reset: SO_LINGER 0)
    return clients


def backend_counter(proxy: servers.RunningServer, name: str) -> int:
    counters = {k.rsplit(":", 1)[1]: v for k, v in wire.stats(proxy).items()
                if k.startswith("backend:")}
    return int(counters[name])


def test_reads_behind_closed_clients_replies_are_sent_again_and_answered_once_in_order(
        proxy: servers.RunningServer) -> None:
    hostile = flood(proxy)
    try:
        with wire.connect(proxy) as sock:
            sock.sendall(b"get own:a\r\nget own:b own:c\r\nmg own:c v k\r\n")
            expected = (wire.get_reply({b"own:a": OWN[b"own:a"]}) + b"END\r\n"
                        + wire.get_reply({b"own:b": OWN[b"own:b"], b"own:c": OWN[b"own:c"]})
                        + b"END\r\n" + b"VA 70 kown:c\r\n" + OWN[b"own:c"] + b"\r\n")
            reply = wire.read_until(sock, expected[-12:], timeout=10)
            sock.settimeout(0.5)
            try:
                extra = sock.recv(4096)  # once: nothing follows
            except TimeoutError:
                extra = b""
    finally:
        for client in hostile:
            client.close()
    assert reply == expected
    assert extra == b""
    assert backend_counter(proxy, "cuts") >= 1  # (else this test proves nothing)
    assert backend_counter(proxy, "resent") >= 3


def test_a_write_behind_a_cut_is_answered_once_with_its_real_reply(
        proxy: servers.RunningServer) -> None:
    """The cut connection drains for the write's reply (discarding the closed clients'
    bytes ahead of it) instead of failing it: STORED, applied once, never sent twice."""
    memcached = proxy.upstreams[0]
    sets_before = int(wire.stats(memcached)["cmd_set"])
    hostile = flood(proxy)
    try:
        with wire.connect(proxy) as sock:
            sock.sendall(b"set own:w 0 0 1\r\nw\r\nget own:a\r\n")
            reply = wire.read_until(sock, b"END\r\n", timeout=10)
    finally:
        for client in hostile:
            client.close()
    assert reply == b"STORED\r\n" + wire.get_reply({b"own:a": OWN[b"own:a"]}) + b"END\r\n", \
        reply[:200]
    assert backend_counter(proxy, "cuts") >= 1  # (else this test proves nothing)
    assert int(wire.stats(memcached)["cmd_set"]) - sets_before == 1


def test_a_clients_set_then_get_across_a_cut_stay_in_order_and_see_its_own_value(
        proxy: servers.RunningServer) -> None:
    """The get is sent again on a fresh connection at the cut, but only once the set it
    follows has been answered on the draining one: else it would overtake the set (which
    memcached runs only after the closed clients' replies ahead of it) and read the old
    value."""
    wire.store(proxy, {b"own:v": b"stale"})
    hostile = flood(proxy)
    try:
        with wire.connect(proxy) as sock:
            sock.sendall(b"set own:v 0 0 5\r\nfresh\r\nget own:v\r\nmg own:v v\r\n")
            reply = wire.read_until(sock, b"\r\n", timeout=10)
            while b"VA 5\r\n" not in reply or not reply.endswith(b"\r\n"):  # fresh or stale
                reply += wire.read_until(sock, b"\r\n", timeout=10)
    finally:
        for client in hostile:
            client.close()
    assert reply == (b"STORED\r\n" + wire.get_reply({b"own:v": b"fresh"}) + b"END\r\n"
                     + b"VA 5\r\nfresh\r\n"), reply[:200]
    assert backend_counter(proxy, "cuts") >= 1
    assert backend_counter(proxy, "resent") >= 2


def test_a_frozen_backend_still_fails_at_the_timeout(proxy: servers.RunningServer) -> None:
    """No byte arrives: no waiting on for progress, no cut and resend (which would wait a
    second timeout on the fresh connection): the request fails at its deadline (plus the
    progress window, an eighth of the timeout)."""
    pid = proxy.upstreams[0].process.pid
    with wire.connect(proxy) as sock:
        sock.sendall(b"get own:a\r\n")
        wire.read_until(sock, b"END\r\n")
        servers.freeze(pid)
        try:
            started = time.monotonic()
            sock.sendall(b"get own:a\r\nget own:b\r\n")
            reply = wire.read_until(sock, b"\r\n", timeout=10)
            took = time.monotonic() - started
        finally:
            os.kill(pid, signal.SIGCONT)
    assert not reply.startswith(b"VALUE"), reply
    assert TIMEOUT_MS / 1000 <= took < TIMEOUT_MS / 1000 * 1.125 + 0.15, took
    assert backend_counter(proxy, "cuts") == 0
