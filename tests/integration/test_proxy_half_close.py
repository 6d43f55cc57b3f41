"""A client that half-closes (sends its requests, then shuts down its writing side) still
gets every reply, through the proxy as from memcached: the proxy reads the EOF while many
replies are still on their way from the backends (proxy.conversation's end of input).
Differential: the same bytes to memcached direct and to a proxy over 3 memcached shards."""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

REQUESTS = 400  # more than a window: the proxy is still waiting on backends at the EOF


def _half_closed_exchange(server: servers.RunningServer, payload: bytes) -> bytes:
    """Send `payload`, shut down the writing side at once, read until the server closes."""
    with wire.connect(server) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chunk = sock.recv(1 << 16)
            if not chunk:
                return reply
            reply += chunk
        raise AssertionError(f"no EOF after {len(reply)} bytes")


def test_a_half_closed_client_gets_every_reply_as_from_memcached() -> None:
    keys = [b"half-%d" % i for i in range(REQUESTS)]
    payload = b"".join(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (k, len(k), k, k) for k in keys)
    payload += b"get " + b" ".join(keys[:50]) + b"\r\n"
    with servers.memcached() as direct, servers.memcached() as m1, servers.memcached() as m2, \
            servers.memcached() as m3, servers.proxy([[m1], [m2], [m3]]) as proxy:
        expected = _half_closed_exchange(direct, payload)
        got = _half_closed_exchange(proxy, payload)
        assert expected.count(b"STORED\r\n") == REQUESTS
        assert got == expected, wire.first_difference(expected, got, payload)
        # and the connection was closed on the proxy's side, not kept
        assert wire.stats(proxy)["curr_connections"] == "1"
