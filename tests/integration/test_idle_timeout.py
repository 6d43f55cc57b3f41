"""--idle-timeout on real backend and proxy processes: an idle connection is closed after the
timeout and not before, a half-sent line or data block is closed even while bytes trickle
in, a client that keeps sending or waits for its replies is never cut, and `stats` counts
`idle_kicks` (printed, as memcached 1.6 prints it, only when a timeout is set).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator

import pytest

from tests.helpers import servers
from tests.helpers.slow_clients import connect, read_exactly, seconds_until_closed, stat

pytestmark = pytest.mark.integration

IDLE = 1.0    # seconds, the timeout the servers run with here
SLACK = 2.0   # how late a close may come on a shared 2-core machine
EARLY = 0.8   # a close before IDLE * EARLY is too early


@contextlib.contextmanager
def started(kind: str) -> Iterator[servers.RunningServer]:
    """A backend with --idle-timeout, or a proxy with idle_timeout in its config file."""
    if kind == "backend":
        with servers.backend("--idle-timeout", str(IDLE)) as node:
            yield node
    else:
        with servers.backend() as node, servers.proxy([[node]], idle_timeout=IDLE) as front:
            yield front


@pytest.fixture(scope="module", params=["backend", "proxy"])
def server(request: pytest.FixtureRequest) -> Iterator[servers.RunningServer]:
    with started(request.param) as running:
        yield running


def kicks(server: servers.RunningServer) -> int:
    return int(stat(server, "idle_kicks"))


def wait_kicks(server: servers.RunningServer, wanted: int, timeout: float = 3.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := kicks(server)) < wanted and time.monotonic() < deadline:
        time.sleep(0.05)
    return count


def test_idle_connections_close_after_the_timeout_not_before(
        server: servers.RunningServer) -> None:
    before = kicks(server)
    with connect(server.address) as silent, connect(server.address) as answered:
        answered.sendall(b"version\r\n")
        assert read_exactly(answered, len(b"VERSION 1.6.18\r\n"), 5).startswith(b"VERSION ")
        began = time.monotonic()
        closed = seconds_until_closed(answered, IDLE + SLACK)
        assert closed is not None, "an idle connection outlived the idle timeout"
        assert IDLE * EARLY <= closed <= IDLE + SLACK, closed
        # the silent one was idle since it connected: gone by now, or very soon
        assert seconds_until_closed(silent, SLACK) is not None
        assert time.monotonic() - began >= IDLE * EARLY
    assert wait_kicks(server, before + 2) == before + 2


def test_a_busy_client_is_never_cut(server: servers.RunningServer) -> None:
    """Requests every IDLE/4 s, and pipelined bursts, for 3 x IDLE: every reply comes."""
    with connect(server.address) as sock:
        sock.sendall(b"set busy 0 0 2\r\nok\r\n")
        assert read_exactly(sock, len(b"STORED\r\n"), 5) == b"STORED\r\n"
        hit = b"VALUE busy 0 2\r\nok\r\nEND\r\n"
        began = time.monotonic()
        rounds = 0
        while time.monotonic() - began < 3 * IDLE and rounds < 100:
            burst = 1 if rounds % 2 else 50
            sock.sendall(b"get busy\r\n" * burst)
            assert read_exactly(sock, len(hit) * burst, 5) == hit * burst
            rounds += 1
            time.sleep(IDLE / 4)
        assert rounds >= 8


def test_a_half_sent_line_is_closed_while_it_trickles(server: servers.RunningServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"get ")
        closed = seconds_until_closed(sock, IDLE + SLACK, tick=lambda: sock.sendall(b"a"))
    assert closed is not None, "a line trickling a byte every 0.2 s was never closed"
    assert IDLE * EARLY <= closed <= IDLE + SLACK, closed


def test_a_half_sent_data_block_is_closed(server: servers.RunningServer) -> None:
    with connect(server.address) as sock:
        sock.sendall(b"set half 0 0 100\r\n" + b"x" * 10)
        closed = seconds_until_closed(sock, IDLE + SLACK, tick=lambda: sock.sendall(b"x"))
    assert closed is not None and IDLE * EARLY <= closed <= IDLE + SLACK, closed
    with connect(server.address) as sock:
        sock.sendall(b"get half\r\n")
        assert read_exactly(sock, 5, 5) == b"END\r\n"


def test_waiting_for_its_replies_is_not_idle(server: servers.RunningServer) -> None:
    """A client that takes its 20 MB of replies only after 2.5 x IDLE gets all of them."""
    value = b"v" * (512 << 10)
    with connect(server.address) as sock:
        sock.sendall(b"set big 0 0 %d\r\n%s\r\n" % (len(value), value))
        assert read_exactly(sock, len(b"STORED\r\n"), 5) == b"STORED\r\n"
        reply = b"VALUE big 0 %d\r\n%s\r\nEND\r\n" % (len(value), value)
        gets = 40
        sock.sendall(b"get big\r\n" * gets)
        time.sleep(2.5 * IDLE)
        assert read_exactly(sock, len(reply) * gets, 20) == reply * gets


def test_stats_name_the_timeout() -> None:
    with servers.backend() as plain, servers.backend("--idle-timeout", "2.5") as timed:
        assert stat(plain, "idle_timeout", b"settings") == "0"
        with pytest.raises(AssertionError, match="no idle_kicks"):
            stat(plain, "idle_kicks")  # as memcached 1.6: only with a timeout
        assert stat(timed, "idle_timeout", b"settings") == "2.5"
        assert stat(timed, "idle_kicks") == "0"


def test_proxy_waiting_for_a_slow_backend_is_not_idle() -> None:
    """A get whose backend is frozen for 2 x IDLE is answered, on the same connection."""
    with servers.backend() as node, \
            servers.proxy([[node]], idle_timeout=IDLE, timeout_ms=int(6000 * IDLE)) as front, \
            connect(front.address) as sock:
        sock.sendall(b"set slow 0 0 1\r\n1\r\n")
        assert read_exactly(sock, len(b"STORED\r\n"), 5) == b"STORED\r\n"
        time.sleep(0.1)
        servers.freeze(node.pid)
        try:
            sock.sendall(b"get slow\r\n")
            time.sleep(2 * IDLE)
        finally:
            os.kill(node.pid, signal.SIGCONT)
        hit = b"VALUE slow 0 1\r\n1\r\nEND\r\n"
        assert read_exactly(sock, len(hit), 5) == hit
        sock.sendall(b"version\r\n")
        assert read_exactly(sock, len(b"VERSION 1.6.18\r\n"), 5).startswith(b"VERSION ")
