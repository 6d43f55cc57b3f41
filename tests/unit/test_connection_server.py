"""ConnectionServer: which accept(2) errors it retries (trio's policy), the connection
limit, and shutdown by deadline. Real sockets on 127.0.0.1; accept errors are injected by
wrapping `nonblocking.accept`."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from memring.cluster.certificates import CertificateAuthority
from memring.netio import connection_server, nonblocking
from memring.netio.connection import Connection
from memring.netio.connection_server import (
    TOO_MANY_CONNECTIONS,
    ConnectionCounters,
    ConnectionServer,
)
from memring.netio.streams import TlsStream
from memring.netio.tls import ServerTls, TlsSettings, client_context

pytestmark = pytest.mark.unit

Accept = Callable[[socket.socket], Awaitable[socket.socket]]


def failing_first(monkeypatch: pytest.MonkeyPatch, errnos: list[int]) -> list[int]:
    """accept() raises OSError(e) for each of `errnos` in turn, then accepts for real;
    returns the errnos not raised yet."""
    pending = list(errnos)
    real: Accept = nonblocking.accept

    async def accept(listener: socket.socket) -> socket.socket:
        if pending:
            code = pending.pop(0)
            raise OSError(code, f"injected {errno.errorcode[code]}")
        return await real(listener)

    monkeypatch.setattr(nonblocking, "accept", accept)
    return pending


async def echo_once(conn: Connection) -> None:
    data = await nonblocking.recv(conn.sock, 100)
    await nonblocking.send_all(conn.sock, data)


async def exchange(port: int, data: bytes = b"ping") -> bytes:
    sock = await nonblocking.connect("127.0.0.1", port)
    try:
        await nonblocking.send_all(sock, data)
        return await nonblocking.recv(sock, 100)
    finally:
        nonblocking.close(sock)


async def start(nursery: trio.Nursery, server: ConnectionServer) -> int:
    listener = nonblocking.listen("127.0.0.1", 0)
    port: int = listener.getsockname()[1]
    await nursery.start(server.serve, listener)
    return port


async def test_capacity_errnos_are_logged_once_and_retried(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pending = failing_first(monkeypatch, [errno.EMFILE, errno.EMFILE, errno.ENFILE])
    server = ConnectionServer(echo_once, 10, ConnectionCounters())
    with trio.fail_after(10), caplog.at_level(logging.WARNING, "memring.net"):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            assert await exchange(port) == b"ping"
            server.shutdown(1.0)
    assert pending == []
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "EMFILE" in errors[0].getMessage()


async def test_ignorable_errnos_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    pending = failing_first(monkeypatch, [errno.ECONNABORTED, errno.EPERM, errno.ECONNRESET])
    server = ConnectionServer(echo_once, 10, ConnectionCounters())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            assert await exchange(port) == b"ping"
            server.shutdown(1.0)
    assert pending == []


async def test_a_failing_connection_closes_alone(caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected error in one connection's handler closes that connection, is logged
    with its traceback, and the server goes on serving the next client."""
    async def fail_on_boom(conn: Connection) -> None:
        data = await nonblocking.recv(conn.sock, 100)
        if data == b"boom":
            raise KeyError("a bug")
        await nonblocking.send_all(conn.sock, data)

    server = ConnectionServer(fail_on_boom, 10, ConnectionCounters())
    with trio.fail_after(10), caplog.at_level(logging.ERROR, "memring.net"):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            assert await exchange(port, b"boom") == b""  # closed, no reply
            assert await exchange(port) == b"ping"
            server.shutdown(1.0)
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is KeyError]
    assert len(failures) == 1


async def test_other_errnos_propagate(monkeypatch: pytest.MonkeyPatch) -> None:
    failing_first(monkeypatch, [errno.EINVAL])
    server = ConnectionServer(echo_once, 10, ConnectionCounters())
    listener = nonblocking.listen("127.0.0.1", 0)
    with trio.fail_after(10), pytest.raises(ExceptionGroup) as caught:  # from serve's nursery
        await server.serve(listener)
    leaf: BaseException = caught.value
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    assert isinstance(leaf, OSError) and leaf.errno == errno.EINVAL
    assert listener.fileno() == -1  # closed on the way out


async def test_past_the_limit_a_client_is_told_and_closed() -> None:
    counters = ConnectionCounters()
    release = trio.Event()

    async def hold(conn: Connection) -> None:
        await release.wait()

    server = ConnectionServer(hold, 1, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            first = await nonblocking.connect("127.0.0.1", port)
            while counters.curr_connections < 1:
                await trio.sleep(0.01)
            second = await nonblocking.connect("127.0.0.1", port)
            assert await nonblocking.recv(second, 100) == TOO_MANY_CONNECTIONS
            assert await nonblocking.recv(second, 100) == b""
            nonblocking.close(second)
            nonblocking.close(first)
            assert counters.rejected_connections == 1
            release.set()
            server.shutdown(1.0)
    assert counters.curr_connections == 0


async def test_past_max_pending_the_oldest_unadmitted_connection_makes_room() -> None:
    """The peer port (issue 12): connections that never identify themselves cannot lock out
    one that does; a new arrival past `max_pending` ends the oldest pending connection, and
    admitted ones are never evicted."""
    counters = ConnectionCounters()

    async def admit_on_hello(conn: Connection) -> None:
        if await nonblocking.recv(conn.sock, 100) == b"hello":
            conn.pending = False
            await nonblocking.send_all(conn.sock, b"welcome")
        await trio.sleep_forever()

    server = ConnectionServer(admit_on_hello, 10, counters, max_pending=2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            admitted = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(admitted, b"hello")
            assert await nonblocking.recv(admitted, 100) == b"welcome"
            silent = [await nonblocking.connect("127.0.0.1", port) for _ in range(30)]
            latecomer = await nonblocking.connect("127.0.0.1", port)  # 32 > the limit of 10
            await nonblocking.send_all(latecomer, b"hello")
            assert await nonblocking.recv(latecomer, 100) == b"welcome"
            closed = [await nonblocking.recv(sock, 100) for sock in silent[:-1]]
            assert closed == [b""] * 29  # the oldest silent ones, never the admitted one
            assert counters.pending_evictions == 29 and counters.rejected_connections == 0
            assert counters.curr_connections == 3  # 2 admitted + the newest silent one
            for sock in (admitted, latecomer, *silent):
                nonblocking.close(sock)
            server.shutdown(0.1)


async def test_shutdown_closes_idle_now_and_busy_at_the_deadline() -> None:
    grace = 2.0  # long: a slow machine still sees the idle one closed before it ends
    busy_started = trio.Event()
    cancelled: list[str] = []

    async def handler(conn: Connection) -> None:
        data = await nonblocking.recv(conn.sock, 100)  # idle until the request
        conn.idle = False
        busy_started.set()
        try:
            await trio.sleep_forever()  # a batch that never finishes
        finally:
            cancelled.append(data.decode())

    counters = ConnectionCounters()
    server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            idle = await nonblocking.connect("127.0.0.1", port)
            busy = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(busy, b"busy")
            await busy_started.wait()
            while counters.curr_connections < 2:
                await trio.sleep(0.01)
            began = trio.current_time()
            server.shutdown(grace)
            assert await nonblocking.recv(idle, 100) == b""
            assert cancelled == []  # closed at once: the grace period (busy one) still runs
            with pytest.raises(OSError):  # the listener is closed: new clients are refused
                await nonblocking.connect("127.0.0.1", port)
        assert trio.current_time() - began >= grace
        assert cancelled == ["busy"]
        nonblocking.close(idle)
        nonblocking.close(busy)
    assert counters.curr_connections == 0


# --- TLS: the handshake runs in the connection's task -------------------------------------

def _server_tls(ca: CertificateAuthority) -> ServerTls:
    cert = ca.issue("connection-server")
    return ServerTls(TlsSettings(cert=str(cert.cert), key=str(cert.key)))


async def tls_echo_once(conn: Connection) -> None:
    data = await conn.stream.recv(100)
    await conn.stream.send_all(data)


async def test_tls_connections_handshake_in_their_own_task(
        private_ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A client that never says hello is closed after HANDSHAKE_TIMEOUT (counted, logged),
    while one that does is served meanwhile: the accept loop never waits for handshakes."""
    monkeypatch.setattr(connection_server, "HANDSHAKE_TIMEOUT", 0.5)
    tls = _server_tls(private_ca)
    server = ConnectionServer(tls_echo_once, 10, ConnectionCounters(), tls=tls)
    context = client_context(TlsSettings(ca=str(private_ca.cert), verify="require"))
    with trio.fail_after(10), caplog.at_level(logging.INFO, "memring.net"):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            silent = await nonblocking.connect("127.0.0.1", port)
            sock = await nonblocking.connect("127.0.0.1", port)
            stream = TlsStream(sock, context, server_side=False, server_hostname="127.0.0.1")
            await stream.handshake()
            await stream.send_all(b"ping")
            assert await stream.recv(100) == b"ping"
            assert tls.handshake_errors == 0
            assert await nonblocking.recv(silent, 100) == b""  # closed at the timeout
            assert tls.handshake_errors == 1
            nonblocking.close(silent)
            nonblocking.close(sock)
            server.shutdown(1.0)
    assert any("TLS handshake with 127.0.0.1:" in r.getMessage() and "no handshake within"
               in r.getMessage() for r in caplog.records)


async def test_a_tls_listener_past_its_limit_sends_no_plain_text(
        private_ca: CertificateAuthority) -> None:
    counters = ConnectionCounters()
    server = ConnectionServer(tls_echo_once, 1, counters, tls=_server_tls(private_ca))
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            first = await nonblocking.connect("127.0.0.1", port)
            while counters.curr_connections < 1:
                await trio.sleep(0.01)
            second = await nonblocking.connect("127.0.0.1", port)
            assert await nonblocking.recv(second, 100) == b""  # not TOO_MANY_CONNECTIONS
            assert counters.rejected_connections == 1
            for sock in (first, second):
                nonblocking.close(sock)
            server.shutdown(0.1)


async def test_a_port_probe_is_no_handshake_error(private_ca: CertificateAuthority,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A connection closed before sending a byte (a follower's probe of its leader's port)
    is neither counted nor logged as a failed handshake; one cut short after its hello is."""
    tls = _server_tls(private_ca)
    server = ConnectionServer(tls_echo_once, 10, ConnectionCounters(), tls=tls)
    with trio.fail_after(10), caplog.at_level(logging.INFO, "memring.net"):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            for _ in range(3):
                nonblocking.close(await nonblocking.connect("127.0.0.1", port))
            half = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(half, b"\x16\x03\x01\x00\x05hel")  # a record cut short
            nonblocking.close(half)
            for _ in range(100):
                if tls.handshake_errors:
                    break
                await trio.sleep(0.02)
            server.shutdown(1.0)
    assert tls.handshake_errors == 1
    failures = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert len(failures) == 1 and "closed the connection during" in failures[0], failures
