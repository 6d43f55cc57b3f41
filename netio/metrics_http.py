"""A tiny HTTP/1.1 responder inside trio that serves Prometheus metrics (`GET /metrics`).

Theory of operation: `MetricsEndpoint.serve` runs in the owning server's nursery (no
threads: the collectors read the server's counters on the trio thread, between two of its
steps, so what they read is consistent). Each scrape is one connection, in its own task:
read the request head (at most MAX_REQUEST bytes, within HEADER_TIMEOUT s of connecting),
answer `GET /metrics` (a query string is ignored) with `prometheus_client.generate_latest`,
and close. Every error is HTTP: 400 for a request line that is not HTTP, 404 for another
path, 405 for another method, 431 past the size bound, 408 when the head is not in within
HEADER_TIMEOUT, 503 past MAX_CONNECTIONS. A slow client cannot hold up a scrape: at the
limit, the connection that has waited longest for its head is cut off (408) to make room,
so the limit only refuses (503) when every slot is busy sending a reply. `shutdown()`
stops it with the server.
"""

from __future__ import annotations

import logging

import trio
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from memring.netio import nonblocking
from memring.netio.connection import Connection
from memring.netio.connection_server import ConnectionCounters, ConnectionServer

log = logging.getLogger("memring.metrics")

MAX_REQUEST = 8192     # bytes of request line and headers
HEADER_TIMEOUT = 2.0   # seconds from connecting to the end of the request head
WRITE_TIMEOUT = 10.0   # seconds to take the reply
MAX_CONNECTIONS = 8    # scrapes at once (a Prometheus server sends one at a time)
PATH = b"/metrics"
# What generate_latest writes (with its default escaping): the text format every Prometheus
# reads. (prometheus_client's CONTENT_TYPE_LATEST says version=1.0.0 in newer releases.)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8",
             extra: str = "") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("ascii") + body


BUSY = response("503 Service Unavailable", b"too many scrapes at once\n", extra="Retry-After: 1\r\n")
TIMED_OUT = response("408 Request Timeout", b"request head not received in time\n")


class MetricsEndpoint:
    """`GET /metrics` on HOST:PORT for `registry`, served by the caller's nursery."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry = registry
        self.host = host
        self.port = port
        self.counters = ConnectionCounters()
        self.scrapes = 0
        self.server = ConnectionServer(self._converse, MAX_CONNECTIONS, self.counters,
                                       idle_timeout=HEADER_TIMEOUT, rejection=BUSY,
                                       evict_idle=True, kick_reply=TIMED_OUT)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listener = nonblocking.listen(self.host, self.port, 64)
        port = listener.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(self.server.serve, listener)
            log.info("metrics on http://%s:%d/metrics", self.host, port)
            task_status.started(port)

    def shutdown(self) -> None:
        self.server.shutdown(1.0)

    def answer(self, head: bytes) -> bytes:
        """The whole reply to a request whose head (up to the blank line) is `head`."""
        if len(head) > MAX_REQUEST:
            return response("431 Request Header Fields Too Large", b"request too large\n")
        parts = head.split(b"\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/"):
            return response("400 Bad Request", b"bad request\n")
        method, target = parts[0], parts[1].split(b"?", 1)[0]
        if target != PATH:
            return response("404 Not Found", b"not found: try GET /metrics\n")
        if method != b"GET":
            return response("405 Method Not Allowed", b"only GET /metrics\n",
                            extra="Allow: GET\r\n")
        self.scrapes += 1
        return response("200 OK", generate_latest(self.registry), CONTENT_TYPE)

    async def _converse(self, conn: Connection) -> None:
        # Reading the head: too slow (HEADER_TIMEOUT), or the oldest when a scrape needs
        # the room, and the server cancels this and answers 408 (kick_reply).
        head = b""
        conn.reading = True
        while b"\r\n\r\n" not in head and b"\n\n" not in head and len(head) <= MAX_REQUEST:
            data = await nonblocking.recv(conn.sock, 4096)
            if not data:
                return
            head += data
        conn.reading = conn.idle = False
        with trio.move_on_after(WRITE_TIMEOUT):
            await nonblocking.send_all(conn.sock, self.answer(head))
