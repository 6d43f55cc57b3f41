"""A client that sends its requests one byte at a time, beside clients that do not.

Round seven's parsers take a line's "\\r" and "\\n" in one copy when they come together and
keep a read that spans reads apart (protocol/receive_buffer.py `take_line(drop_cr=True)`,
`_spanning`). Sent a byte at a time, every line, data block and "\\r\\n" is split at every
boundary: the answers must be memcached's bytes (the same pipeline sent whole to a memcached),
and the clients beside it, sharing the proxy's one connection per backend, must not wait for
it. Real proxy, real backends or memcached shards, on loopback.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

KEYS = [b"bat:%d" % i for i in range(6)]
PIPELINE = b"".join([
    b"set %s 0 0 5\r\nab\r\nc\r\n" % KEYS[0],  # "\r\n" inside the data block
    b"set %s 7 0 0\r\n\r\n" % KEYS[1],  # an empty value
    b"set %s 0 0 2 noreply\r\n12\r\n" % KEYS[2],
    b"get %s %s %s bat:miss %s\r\n" % (KEYS[0], KEYS[1], KEYS[2], KEYS[0]),
    b"ms %s 3 T0 MA C0\r\n345\r\n" % KEYS[2],
    b"ma %s v D10\r\n" % KEYS[2],
    b"ma %s\r\n" % KEYS[1],  # empty: non-numeric
    b"ms %s 2 ME C99\r\nxy\r\n" % KEYS[0],  # add mode never compares the CAS
    b"mg %s v f k\r\n" % KEYS[0],
    b"set %s 0 0 3\r\nabcd\r\n" % KEYS[3],  # cut wrong: bad data chunk, then "\n"... a line
    b"incr %s 1\n" % KEYS[2],  # a bare LF line end
    b"gets %s\r\n" % KEYS[4],
    b"delete %s\r\n" % KEYS[0],
])
NEIGHBOURS = 3
ROUNDS = 400  # each neighbour's set+get pairs (bounded); they stop when the slow one is done


def expected_answer() -> bytes:
    """memcached's answer to the pipeline sent whole, up to and with its `mn`."""
    with servers.memcached() as memcached:
        return wire.request(memcached, PIPELINE) + wire.SENTINEL_REPLY


@pytest.fixture(scope="module", params=["backend", "memcached"])
def proxy(request: pytest.FixtureRequest) -> Iterator[servers.RunningServer]:
    with servers.proxy_over(request.param, shards=2, pool_size=1) as proxy:
        yield proxy


class Neighbour(threading.Thread):
    """set/get of its own key until told to stop: the slowest round trip, and any wrong reply."""

    def __init__(self, proxy: servers.RunningServer, number: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.proxy, self.number, self.stop = proxy, number, stop
        self.slowest = 0.0
        self.rounds = 0
        self.wrong: list[bytes] = []

    def run(self) -> None:
        with wire.connect(self.proxy) as sock:
            for i in range(ROUNDS):
                if self.stop.is_set():
                    break
                key = b"bat:n%d" % self.number
                value = b"%d-%d" % (self.number, i)
                started = time.monotonic()
                sock.sendall(b"set %s 0 0 %d\r\n%s\r\nget %s\r\n" % (key, len(value), value, key))
                got = wire.read_until(sock, b"END\r\n", timeout=5)
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.rounds += 1
                if got != b"STORED\r\nVALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(value), value):
                    self.wrong.append(got)
                time.sleep(0.005)


def test_a_byte_at_a_time_client_gets_memcacheds_bytes_and_stalls_no_one(
        proxy: servers.RunningServer) -> None:
    answer = expected_answer()
    assert b"bad data chunk" in answer and b"\r\nNS\r\n" in answer, answer
    stop = threading.Event()
    neighbours = [Neighbour(proxy, n, stop) for n in range(NEIGHBOURS)]
    for neighbour in neighbours:
        neighbour.start()
    try:
        with wire.connect(proxy) as slow:
            slow.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sent = PIPELINE + wire.SENTINEL
            for byte in range(len(sent)):
                slow.sendall(sent[byte:byte + 1])
                time.sleep(0.002)  # each byte its own segment, its own read
            got = wire.read_until(slow, wire.SENTINEL_REPLY, timeout=10)
    finally:
        stop.set()
        for neighbour in neighbours:
            neighbour.join(10)
    assert got == answer
    for neighbour in neighbours:
        assert not neighbour.wrong, neighbour.wrong[:3]
        assert neighbour.rounds > 10, neighbour.rounds
        assert neighbour.slowest < 1.0, neighbour.slowest
    for key in KEYS:  # leave nothing for the other parameter's run
        wire.request(proxy, b"delete %s noreply\r\n" % key)
