"""The proxy-wide budget (--max-buffered-bytes) bounds what big multi-gets make the proxy hold.

Found by round seven's audit (bench/hostile_clients.py e-manykeys: 32 clients, 4 gets each of
80 distinct 500 KB items, never reading): the proxy peaked at 586-678 MB with its default
256 MB budget. A multi-get split over the shards is assembled whole (every part's values,
proxy/split_get.py) before its first byte is rendered and charged (proxy/reply_stream.py), and
each client's first window is 4 such requests, so the parts a client waits for are charged
nowhere. Real proxy over real memcached shards, RSS read from /proc.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

BUDGET = 64 << 20
SLACK = 96 << 20  # the interpreter, the parsers' buffers, the allocator's own
KEYS = [b"budget:%02d" % i for i in range(80)]
CLIENTS = 12


def test_clients_that_never_read_big_multi_gets_stay_within_the_budget() -> None:
    with servers.proxy_over("memcached", shards=3, max_buffered_bytes=BUDGET) as proxy:
        for start in range(0, len(KEYS), 10):
            wire.store(proxy, {k: k[-2:] * 125_000 for k in KEYS[start:start + 10]})
        before = wire.rss_kib(proxy.pid) * 1024
        peak = before
        hostile: list[socket.socket] = []
        try:
            for _ in range(CLIENTS):  # 4 gets of 20 MB each, never read
                sock = socket.create_connection(proxy.address, timeout=5)
                sock.sendall((b"get " + b" ".join(KEYS) + b"\r\n") * 4)
                hostile.append(sock)
            stop = time.monotonic() + 3.0
            while time.monotonic() < stop:
                peak = max(peak, wire.rss_kib(proxy.pid) * 1024)
                time.sleep(0.01)
        finally:
            for sock in hostile:
                sock.close()
        grown = peak - before
        assert grown <= BUDGET + SLACK, f"the proxy grew {grown >> 20} MB with a " \
                                        f"{BUDGET >> 20} MB budget"
