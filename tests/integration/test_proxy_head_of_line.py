"""Clients that ask for big multi-gets must not fail another client's small get.

Found by round seven's audit (bench/hostile_clients.py e-manykeys): a few clients each
pipelining four `get`s of 80 distinct 250-500 KB items (split over every shard) make a
well-behaved client's `get` of its own, existing key answer `END`, a miss, after waiting the
proxy's whole request timeout. Its request waits on the shared backend connection behind the
others' tens of MB of replies, its deadline (counted from when it was sent) passes, the
connection fails with every request on it, and `on_shard_error = miss` turns the failure
into a miss. memcached serves each connection apart: the same get never misses there.
Real proxy over real memcached shards (the backend kind does not matter: the queue is the
proxy's), 127.0.0.1. Fixed in round eight (hol8): past the deadline, bytes still arriving, a
connection whose replies are owed to closed clients is cut and the live reads are sent once
more, the well-behaved client's first (proxy/cut_connection.py).
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

BIG_KEYS = [b"hol:%02d" % i for i in range(80)]
GOOD = b"hol:good"
GOOD_VALUE = b"g" * 100
HOSTILE_CLIENTS = 10
WAVES = 3  # each wave's requests queue up past the timeout on their own


def test_big_multi_gets_of_other_clients_never_turn_a_hit_into_a_miss() -> None:
    with servers.proxy_over("memcached", shards=3, pool_size=1, timeout_ms=300) as proxy:
        wire.store(proxy, {GOOD: GOOD_VALUE})
        for start in range(0, len(BIG_KEYS), 10):
            wire.store(proxy, {k: k[-2:] * 125_000 for k in BIG_KEYS[start:start + 10]})
        wrong: list[bytes] = []
        answered = 0
        stop = threading.Event()

        def good_client() -> None:
            nonlocal answered
            with wire.connect(proxy) as sock:
                while not stop.is_set() and answered < 10_000:
                    sock.sendall(b"get %s\r\n" % GOOD)
                    try:
                        reply = wire.read_until(sock, b"END\r\n", timeout=10)
                    except (OSError, ConnectionError) as error:  # (TimeoutError is one)
                        wrong.append(repr(error).encode()[:200])
                        return
                    if reply != wire.get_reply({GOOD: GOOD_VALUE}) + b"END\r\n":
                        wrong.append(reply[:80])
                    answered += 1
                    time.sleep(0.005)

        good = threading.Thread(target=good_client)
        good.start()
        hostile: list[socket.socket] = []
        try:
            for _ in range(WAVES):
                for _ in range(HOSTILE_CLIENTS):  # 4 gets of 20 MB each, never read
                    sock = socket.create_connection(proxy.address, timeout=5)
                    sock.sendall((b"get " + b" ".join(BIG_KEYS) + b"\r\n") * 4)
                    hostile.append(sock)
                time.sleep(1.5)
        finally:
            stop.set()
            good.join(15)
            for sock in hostile:
                sock.close()
        assert not good.is_alive()
        assert answered > 0
        assert not wrong, f"{len(wrong)} of {answered} gets of an existing key: {wrong[:3]}"
