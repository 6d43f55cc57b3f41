"""Raw-socket helpers shared by the proxy integration tests.

The byte-level conversation helpers (connect, converse, request, ...) live in
test_bad_input.py and are re-exported from there unchanged; this module adds what the proxy
tests need on top: one-shot and persistent `stats`, the proxy's per-backend counters, which
upstream holds a key (asked of each upstream directly), and a process's VmRSS.
Every socket operation has a timeout and every loop a deadline.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence

from tests import servers
from tests.integration.test_bad_input import (
    CHUNK,
    SENTINEL,
    SENTINEL_REPLY,
    VERSION_REPLY,
    Exchange,
    connect,
    converse,
    drive,
    get_reply,
    repeat,
    request,
    rss_kib,
    store,
)

__all__ = [
    "CHUNK",
    "SENTINEL",
    "SENTINEL_REPLY",
    "VERSION_REPLY",
    "Exchange",
    "StatsConnection",
    "backend_stats",
    "connect",
    "converse",
    "drive",
    "get_reply",
    "holders",
    "placement",
    "read_until",
    "repeat",
    "request",
    "rss_kib",
    "stats",
    "store",
]

SOCKET_TIMEOUT = 3.0


def read_until(sock: socket.socket, end: bytes, timeout: float = SOCKET_TIMEOUT,
               limit: int = 64 << 20) -> bytes:
    """Read from a blocking socket until the data ends with `end`; fail on close or deadline."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while not data.endswith(end):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {end!r} within {timeout}s; got {bytes(data[-300:])!r}")
        sock.settimeout(left)
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise ConnectionError(f"closed before {end!r}; got {bytes(data[-300:])!r}")
        data += chunk
        if len(data) > limit:
            raise AssertionError(f"reply grew past {limit} bytes")
    return bytes(data)


def parse_stats(reply: bytes) -> dict[str, str]:
    out = {}
    for line in reply.split(b"\r\n"):
        if line.startswith(b"STAT "):
            _, name, value = line.decode().split(" ", 2)
            out[name] = value
    return out


def stats(server: servers.RunningServer, args: str = "") -> dict[str, str]:
    """`stats` on a fresh connection (which itself counts in curr_connections)."""
    with connect(server) as sock:
        sock.sendall(f"stats {args}".strip().encode() + b"\r\n")
        return parse_stats(read_until(sock, b"END\r\n"))


class StatsConnection:
    """One connection kept open to ask a server for `stats` repeatedly."""

    def __init__(self, server: servers.RunningServer) -> None:
        self.server = server
        self.sock = connect(server)

    def __call__(self) -> dict[str, str]:
        self.sock.sendall(b"stats\r\n")
        return parse_stats(read_until(self.sock, b"END\r\n"))

    def close(self) -> None:
        self.sock.close()


def backend_stats(proxy_stats: dict[str, str], server: servers.RunningServer) -> dict[str, str]:
    """The proxy's `backend:<addr>:<name>` counters for one upstream, as {name: value}."""
    prefix = f"backend:{servers.HOST}:{server.port}:"
    return {k[len(prefix):]: v for k, v in proxy_stats.items() if k.startswith(prefix)}


def holders(upstreams: Sequence[servers.RunningServer], keys: Iterable[bytes]
            ) -> dict[bytes, list[int]]:
    """For each key, the indexes of the upstreams that hold it (asked directly)."""
    keys = list(keys)
    out: dict[bytes, list[int]] = {k: [] for k in keys}
    for index, upstream in enumerate(upstreams):
        with connect(upstream) as sock:
            for start in range(0, len(keys), 100):
                batch = keys[start:start + 100]
                sock.sendall(b"get " + b" ".join(batch) + b"\r\n")
                reply = read_until(sock, b"END\r\n")
                for line in reply.split(b"\r\n"):
                    if line.startswith(b"VALUE "):
                        out[line.split(b" ")[1]].append(index)
    return out


def placement(upstreams: Sequence[servers.RunningServer], keys: Iterable[bytes]
              ) -> dict[bytes, int]:
    """Which single upstream holds each (already stored) key; fails if not exactly one."""
    where = holders(upstreams, keys)
    bad = {k: v for k, v in where.items() if len(v) != 1}
    assert not bad, f"keys not on exactly one upstream: {dict(list(bad.items())[:5])}"
    return {k: v[0] for k, v in where.items()}
