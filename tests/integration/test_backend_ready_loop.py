"""The backend's ReadyLoop with real processes: a client that does not read its replies is
handed to a task of its own (the others are served meanwhile, `stats conns` shows it in
conn_mwrite) and comes back to the loop once the kernel took them; one that hangs up in
that state is closed and forgotten. Small replies, one per read, reach such a client whole
and in order."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

VALUE = b"v" * (512 << 10)
GETS = 40  # 20 MB of replies: far more than the socket buffers hold
REPLY = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(VALUE), VALUE)


def _receive(sock: socket.socket, size: int) -> bytes:
    """`size` bytes of replies, each recv bounded by 10 s (a stall fails, never hangs)."""
    got = bytearray()
    sock.settimeout(10.0)
    while len(got) < size:
        chunk = sock.recv(1 << 20)
        assert chunk, "closed before all the replies came"
        got += chunk
    return bytes(got)


def _ask(server: servers.RunningServer, request: bytes, end: bytes) -> bytes:
    with wire.connect(server) as sock:
        sock.sendall(request)
        return wire.read_until(sock, end)


def _conn_states(server: servers.RunningServer) -> list[str]:
    reply = _ask(server, b"stats conns\r\n", b"END\r\n")
    return [line.rsplit(b" ", 1)[1].decode() for line in reply.split(b"\r\n")
            if b":state " in line]


def _stuck_reader(server: servers.RunningServer) -> socket.socket:
    """A connection that asked for GETS big values and reads none of them yet."""
    sock = wire.connect(server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
    sock.sendall(b"get big\r\n" * GETS)
    return sock


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_slow_reader_is_handed_off_and_comes_back() -> None:
    with servers.backend("--memory", "64") as server:
        assert _ask(server, b"set big 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE),
                    b"\r\n") == b"STORED\r\n"
        with _stuck_reader(server) as slow:
            # its replies wait for the kernel in its own task: it shows as writing, and
            # the loop serves everyone else meanwhile
            _wait_for(lambda: "conn_mwrite" in _conn_states(server))
            began = time.monotonic()
            assert _ask(server, b"version\r\n", b"\r\n").startswith(b"VERSION ")
            assert time.monotonic() - began < 2.0
            assert _receive(slow, GETS * len(REPLY)) == REPLY * GETS
            # back in the loop: served again, no longer writing
            slow.sendall(b"get big\r\n")
            assert wire.read_until(slow, b"END\r\n") == REPLY
            assert "conn_mwrite" not in _conn_states(server)


def test_a_slow_reader_that_hangs_up_is_closed() -> None:
    with servers.backend("--memory", "64") as server:
        assert _ask(server, b"set big 0 0 %d\r\n%s\r\n" % (len(VALUE), VALUE),
                    b"\r\n") == b"STORED\r\n"
        before = int(wire.stats(server)["curr_connections"])
        slow = _stuck_reader(server)
        _wait_for(lambda: "conn_mwrite" in _conn_states(server))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        slow.close()  # a reset: the pending send fails
        _wait_for(lambda: int(wire.stats(server)["curr_connections"]) == before)
        assert "conn_mwrite" not in _conn_states(server)
        assert _ask(server, b"get big\r\n", b"END\r\n") == REPLY


SMALL = b"s" * (10 << 10)  # one reply per read, many of them before the kernel refuses one
SMALL_REPLY = b"VALUE small 0 %d\r\n%s\r\nEND\r\n" % (len(SMALL), SMALL)


def test_small_replies_reach_a_slow_reader_whole() -> None:
    with servers.backend("--memory", "64") as server:
        assert _ask(server, b"set small 0 0 %d\r\n%s\r\n" % (len(SMALL), SMALL),
                    b"\r\n") == b"STORED\r\n"
        with wire.connect(server) as slow:
            slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
            # one get per read, none of the replies read, until the kernel takes one only in
            # part and the rest of it goes in the connection's own task (conn_mwrite)
            for asked in range(1, 4001):
                slow.sendall(b"get small\r\n")
                time.sleep(0.0005)
                if asked % 100 == 0 and "conn_mwrite" in _conn_states(server):
                    break
            else:
                pytest.fail("the kernel took 4,000 replies of 10 KB unread")
            assert _receive(slow, asked * len(SMALL_REPLY)) == SMALL_REPLY * asked
            slow.sendall(b"get small\r\n")  # back in the loop
            assert wire.read_until(slow, b"END\r\n") == SMALL_REPLY
