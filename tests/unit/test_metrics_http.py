"""MetricsEndpoint in-process: at its connection limit a slow-header client is cut off (408)
to make room for a scrape, and only when every slot is busy sending a reply is a client told
503, in HTTP. Real sockets on 127.0.0.1; the registry's reply is 8 MB so that clients that do
not read keep the endpoint busy sending."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import trio
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from memring.netio import metrics_http, nonblocking
from memring.netio.metrics_http import MetricsEndpoint

pytestmark = pytest.mark.unit


class Huge:
    """8 MB of exposition text: more than loopback's socket buffers hold for a client that
    does not read."""

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("huge", "padding", labels=["pad"])
        for i in range(1000):
            family.add_metric([f"{i}{'x' * 8000}"], i)
        yield family


async def connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    try:
        sock.connect(("127.0.0.1", port))
    except BlockingIOError:
        await trio.lowlevel.wait_writable(sock)
    return sock


async def read_all(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    """Up to `limit` bytes, until the server closes (a reset after its reply counts)."""
    data = b""
    while len(data) < limit:
        try:
            chunk = await nonblocking.recv(sock, 65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


async def until(condition: object, what: str) -> None:
    for _ in range(500):
        if callable(condition) and condition():
            return
        await trio.sleep(0.01)
    raise AssertionError(f"not reached within 5 s: {what}")


async def test_full_of_readers_503_full_of_slow_heads_408() -> None:
    registry = CollectorRegistry()
    registry.register(Huge())
    endpoint = MetricsEndpoint(registry, "127.0.0.1", 0)
    limit = metrics_http.MAX_CONNECTIONS
    socks: list[socket.socket] = []
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(endpoint.serve)
            try:
                # Slow heads fill every slot; each newcomer cuts off the oldest, which hears 408.
                for _ in range(limit + 2):
                    sock = await connect(port)
                    await nonblocking.send_all(sock, b"GET /metr")
                    socks.append(sock)
                await until(lambda: endpoint.counters.curr_connections >= limit, "slots full")
                with trio.fail_after(metrics_http.HEADER_TIMEOUT / 2):  # cut off, not timed out
                    for oldest in socks[:2]:
                        assert (await read_all(oldest)).startswith(b"HTTP/1.1 408 ")
                # A scrape still gets in, at once.
                scraper = await connect(port)
                await nonblocking.send_all(scraper, b"GET /metrics HTTP/1.1\r\n\r\n")
                with trio.fail_after(2):
                    head = await read_all(scraper, 100)
                assert head.startswith(b"HTTP/1.1 200 OK\r\n")
                nonblocking.close(scraper)
                for sock in socks:
                    nonblocking.close(sock)
                socks.clear()
                await until(lambda: endpoint.counters.curr_connections == 0, "all closed")

                # Scrapers that do not read their 8 MB hold every slot: the next one is told 503.
                answered = endpoint.scrapes
                for _ in range(limit):
                    sock = await connect(port, rcvbuf=16384)
                    await nonblocking.send_all(sock, b"GET /metrics HTTP/1.0\r\n\r\n")
                    socks.append(sock)
                await until(lambda: endpoint.scrapes == answered + limit, "every reader answered")
                late = await connect(port)
                await nonblocking.send_all(late, b"GET /metrics HTTP/1.0\r\n\r\n")
                reply = await read_all(late)
                nonblocking.close(late)
                assert reply.startswith(b"HTTP/1.1 503 Service Unavailable\r\n"), reply[:100]
                assert b"Retry-After: 1\r\n" in reply
                assert endpoint.counters.rejected_connections == 1
            finally:
                for sock in socks:
                    nonblocking.close(sock)
                endpoint.shutdown()
