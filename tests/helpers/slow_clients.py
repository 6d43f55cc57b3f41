"""Clients that idle, trickle or stop halfway, and a clock on when the server hangs up on them.

Blocking sockets with timeouts (select() cannot take fds past 1023); every wait has a
deadline, so a server that never closes fails the test instead of hanging it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from tests.helpers import servers

CHUNK = 65536


def connect(address: tuple[str, int]) -> socket.socket:
    return socket.create_connection(address, timeout=5)


def seconds_until_closed(sock: socket.socket, timeout: float,
                         tick: Callable[[], None] | None = None, every: float = 0.2
                         ) -> float | None:
    """Seconds from now until the server closes `sock` (EOF or reset; what it sent first is
    read and dropped), None if it is still open after `timeout` s. `tick()` runs every
    `every` s meanwhile (a client trickling bytes); a send that fails means closed."""
    began = time.monotonic()
    deadline = began + timeout
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(min(left, every))
        try:
            data = sock.recv(CHUNK)
        except TimeoutError:
            data = None
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if data == b"":
            return time.monotonic() - began
        if tick is not None and data is None:
            try:
                tick()
            except (ConnectionResetError, BrokenPipeError):
                return time.monotonic() - began
    return None


def read_exactly(sock: socket.socket, size: int, timeout: float) -> bytes:
    """`size` bytes from `sock`, failing on close or past `timeout` s."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while len(data) < size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(data)} of {size} bytes within {timeout}s")
        sock.settimeout(left)
        chunk = sock.recv(min(CHUNK, size - len(data)))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def stat(server: servers.RunningServer, name: str, args: bytes = b"") -> str:
    """One figure of `stats [args]`, asked on a fresh connection."""
    with connect(server.address) as sock:
        sock.sendall(b"stats " + args + b"\r\n" if args else b"stats\r\n")
        reply = b""
        deadline = time.monotonic() + 5
        while not reply.endswith(b"END\r\n"):
            assert time.monotonic() < deadline, f"no stats reply: {reply[-200:]!r}"
            chunk = sock.recv(CHUNK)
            assert chunk, f"closed during stats: {reply[-200:]!r}"
            reply += chunk
    for line in reply.split(b"\r\n"):
        parts = line.split(b" ", 2)
        if len(parts) == 3 and parts[0] == b"STAT" and parts[1] == name.encode():
            return parts[2].decode()
    raise AssertionError(f"no {name} in stats {args!r}")
