"""The proxy's buffer budget gives back every byte that clients who left had charged.

Round seven charges a split multi-get's parts to `--max-buffered-bytes` as they arrive
(proxy/reply_stream.py `hold_arriving`, `_charge_replies`; proxy/held_replies.py). A charge
that outlived its client would shrink the budget for everyone after it, until every big reply
was refused. Here, behind a real proxy over real shards, three kinds of clients leave while
charged: closed by the budget itself, reset mid-way through a split get, and closed normally
with replies still held. Afterwards the proxy's `buffered_bytes` is 0 and a client gets a big
split get, byte for byte.
"""

from __future__ import annotations

import socket
import struct
import time

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

BUDGET = 16 << 20
KEYS = [b"acct:%02d" % i for i in range(30)]
ITEMS = {k: (b"<" + k + b">") * (400_000 // (len(k) + 2)) for k in KEYS}  # 12 MB in all
GET_ALL = b"get " + b" ".join(KEYS) + b"\r\n"
CLIENTS = 6  # of each kind
SETTLE = 10.0  # seconds the proxy has to notice the closes


def get_answer(keys: list[bytes]) -> bytes:
    return b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(ITEMS[k]), ITEMS[k]) for k in keys) \
        + b"END\r\n"


def hostile(proxy: servers.RunningServer, payload: bytes) -> socket.socket:
    sock = socket.create_connection(proxy.address, timeout=5)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # falls behind at once
    sock.sendall(payload)
    return sock


def reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def settled(proxy: servers.RunningServer) -> dict[str, str]:
    """The proxy's stats once only the asking connection is left (or after SETTLE s)."""
    deadline = time.monotonic() + SETTLE
    while True:
        stats = wire.stats(proxy)
        if (stats["curr_connections"] == "1" and stats["buffered_bytes"] == "0") or \
                time.monotonic() > deadline:
            return stats
        time.sleep(0.1)


@pytest.mark.parametrize("kind", ["memcached", "backend"])
def test_clients_that_left_while_charged_give_back_every_byte(kind: str) -> None:
    with servers.proxy_over(kind, shards=3, max_buffered_bytes=BUDGET) as proxy:
        for start in range(0, len(KEYS), 10):
            wire.store(proxy, {k: ITEMS[k] for k in KEYS[start:start + 10]})
        held = set(wire.placement(proxy.upstreams, KEYS).values())
        assert len(held) == 3, held  # every get below is split over the three shards
        # 1. closed by the budget: 48 MB of replies each, never read
        refused = [hostile(proxy, GET_ALL * 4) for _ in range(CLIENTS)]
        deadline = time.monotonic() + SETTLE
        while int(wire.stats(proxy)["buffer_refusals"]) == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        during = wire.stats(proxy)
        assert int(during["buffer_refusals"]) > 0, during
        # 2. reset mid split-get, some after reading part of the first reply
        for i in range(CLIENTS):
            sock = hostile(proxy, GET_ALL * 2)
            if i % 2:
                sock.recv(2000 * (i + 1))
            time.sleep(0.05)  # the parts arrive and are charged meanwhile
            reset(sock)
        # 3. closed normally with replies held
        for _ in range(CLIENTS):
            sock = hostile(proxy, GET_ALL)
            time.sleep(0.05)
            sock.close()
        for sock in refused:
            sock.close()
        after = settled(proxy)
        assert after["buffered_bytes"] == "0", after
        assert after["curr_connections"] == "1", after
        # the whole budget is there again: a 4 MB split get, byte for byte
        some = KEYS[:10]
        assert wire.request(proxy, b"get " + b" ".join(some) + b"\r\n") == get_answer(some)
        assert proxy.process.poll() is None
        assert "Traceback" not in proxy.log_text()
