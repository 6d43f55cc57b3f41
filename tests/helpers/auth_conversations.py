"""Conversations with servers started with an auth file (memcached -Y, memring --auth-file):
one step at a time, each step's reply read before the next is sent.

Why step by step: memcached 1.6.18 answers each unauthenticated request into one reused
response object, so of several refusals that arrive in one read only the last is sent
(tests/compat/test_ascii_auth.py pins it); a reply per step is what no server can blur.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from memring.protocol.ascii_auth import auth_request
from tests.helpers import servers
from tests.helpers.wire import connect, parse_stats, read_until

QUIET = 0.2       # after a reply line: silence this long ends the step's reply (a proxy
                  # sends STORED at once and the END of a get after it with the backend's)
NO_REPLY = 0.4    # a step that gets no reply at all is over after this long
STEP_LIMIT = 3.0  # absolute bound of one step


@dataclass(frozen=True)
class Steps:
    """What a server answered each step, and whether it closed the connection."""

    replies: tuple[bytes, ...]
    closed: bool


def _reply(sock: socket.socket) -> tuple[bytes, bool]:
    reply = b""
    deadline = time.monotonic() + STEP_LIMIT
    while time.monotonic() < deadline:
        wait = QUIET if reply.endswith(b"\r\n") else NO_REPLY if not reply else STEP_LIMIT
        sock.settimeout(min(wait, max(0.01, deadline - time.monotonic())))
        try:
            data = sock.recv(1 << 16)
        except TimeoutError:
            return reply, False
        except ConnectionResetError:
            return reply, True
        if not data:
            return reply, True
        reply += data
    return reply, False


def converse_steps(server: servers.RunningServer, steps: Sequence[bytes]) -> Steps:
    """Send each step and read its reply; stops at the server's close."""
    replies = []
    closed = False
    with connect(server) as sock:
        for step in steps:
            try:
                sock.sendall(step)
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            reply, closed = _reply(sock)
            replies.append(reply)
            if closed:
                break
    return Steps(tuple(replies), closed)


def authenticate(sock: socket.socket, user: bytes, password: bytes) -> bytes:
    """Send the auth `set` on a blocking socket; the reply line."""
    sock.sendall(auth_request(user, password))
    return read_until(sock, b"\r\n")


def authenticated_stats(server: servers.RunningServer, user: bytes, password: bytes,
                        args: str = "") -> dict[str, str]:
    """`stats` on a fresh connection that authenticates first."""
    with connect(server) as sock:
        assert authenticate(sock, user, password) == b"STORED\r\n"
        sock.sendall(f"stats {args}".strip().encode() + b"\r\n")
        return parse_stats(read_until(sock, b"END\r\n"))
