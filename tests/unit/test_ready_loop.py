"""ReadyLoop under ConnectionServer: connections served from one task, handed to a task of
their own when they must await and back, parked until a callback resumes them, closed cleanly
whichever state they are in, and fair to each other. A toy line protocol (ping, wait, park,
boom, bye) on real 127.0.0.1 sockets."""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable

import pytest
import trio

from memring.netio import nonblocking
from memring.netio.connection import Connection, Handoff, HangUp, Parked, Receiver
from memring.netio.connection_server import ConnectionCounters, ConnectionServer

pytestmark = pytest.mark.unit


class LineHandler:
    """`ping` -> `pong` at once; `wait` -> `waited` once `release` is set (handed off);
    `park` parks the connection until the test calls `resume_parked`; `boom` raises; `bye`
    hangs up. Records what it saw."""

    def __init__(self) -> None:
        self.buffers: dict[Connection, bytes] = {}
        self.release = trio.Event()
        self.waiting = trio.Event()  # a handoff is waiting for `release`
        self.closed_count = 0
        self.handoffs = 0
        self.parked: list[Connection] = []

    def opened(self, conn: Connection) -> Receiver:
        self.buffers[conn] = b""
        return functools.partial(self.received, conn)

    def holds_input(self, conn: Connection) -> bool:
        return bool(self.buffers[conn])

    def received(self, conn: Connection,
                 data: bytes) -> Handoff | type[HangUp] | type[Parked] | None:
        buffer = self.buffers[conn] + data
        replies = []
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if line == b"boom":
                raise KeyError("a bug")
            if line == b"bye":
                return HangUp
            if line == b"park":
                self.buffers[conn] = buffer
                conn.sock.send(b"".join(replies))
                self.parked.append(conn)
                return Parked
            if line == b"wait":
                self.buffers[conn] = buffer
                conn.sock.send(b"".join(replies))
                return self._wait(conn)
            replies.append(b"pong\n" if line == b"ping" else b"?\n")
        self.buffers[conn] = buffer
        if replies:
            conn.sock.send(b"".join(replies))
            ConnectionServer.rearm(conn)
        return None

    async def _wait(self, conn: Connection) -> bool:
        self.handoffs += 1
        self.waiting.set()
        await self.release.wait()
        await conn.stream.send_all(b"waited\n")
        return True

    def closed(self, conn: Connection) -> None:
        self.closed_count += 1
        del self.buffers[conn]

    def resume_parked(self, reply: bytes = b"resumed\n", fail: bool = False) -> None:
        """What the ISR's callback does: hand the loop what each parked connection does next
        (from another task than the loop's)."""
        for conn in self.parked:
            def resumption(conn: Connection = conn) -> Handoff | type[HangUp] | None:
                if fail:
                    raise KeyError("a bug in a resumption")
                conn.sock.send(reply)
                return None
            assert conn.resume is not None
            conn.resume(conn, resumption)
        self.parked.clear()


async def start(nursery: trio.Nursery, server: ConnectionServer) -> int:
    listener = nonblocking.listen("127.0.0.1", 0)
    port: int = listener.getsockname()[1]
    await nursery.start(server.serve, listener)
    return port


async def ask(sock: socket.socket, request: bytes, reply_end: bytes = b"\n") -> bytes:
    await nonblocking.send_all(sock, request)
    got = b""
    while not got.endswith(reply_end):
        data = await nonblocking.recv(sock, 65536)
        if not data:
            break
        got += data
    return got


async def settled(condition: Callable[[], bool], what: str) -> None:
    """Wait (bounded by the test's fail_after) until `condition()` holds."""
    while not condition():
        await trio.sleep(0.005)


async def test_a_connection_handed_off_comes_back_to_the_loop() -> None:
    handler = LineHandler()
    server = ConnectionServer(handler, 10, ConnectionCounters())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            sock = await nonblocking.connect("127.0.0.1", port)
            assert await ask(sock, b"ping\n") == b"pong\n"
            (conn,) = server.connections()
            assert conn.looped
            await nonblocking.send_all(sock, b"wait\n")
            await handler.waiting.wait()
            assert not conn.looped and not conn.reading  # in its own task, not idle-timed
            other = await nonblocking.connect("127.0.0.1", port)
            assert await ask(other, b"ping\n") == b"pong\n"  # the loop serves on meanwhile
            handler.release.set()
            assert await ask(sock, b"", b"waited\n") == b"waited\n"
            await settled(lambda: conn.looped, "back in the set")
            assert conn.reading
            assert await ask(sock, b"ping\nping\n", b"pong\npong\n") == b"pong\npong\n"
            assert handler.handoffs == 1
            nonblocking.close(sock)
            nonblocking.close(other)
            await settled(lambda: not server.connections(), "both closed")
            server.shutdown(1.0)
    assert handler.closed_count == 2


async def test_a_parked_connection_is_resumed_without_a_task_and_keeps_its_order() -> None:
    handler = LineHandler()
    server = ConnectionServer(handler, 10, ConnectionCounters())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            sock = await nonblocking.connect("127.0.0.1", port)
            assert await ask(sock, b"ping\npark\n") == b"pong\n"
            (conn,) = server.connections()
            await settled(lambda: conn.parked, "parked")
            assert not conn.looped and not conn.reading  # out of the set, not idle-timed
            await nonblocking.send_all(sock, b"ping\n")  # not read while parked
            other = await nonblocking.connect("127.0.0.1", port)
            assert await ask(other, b"ping\n") == b"pong\n"  # the loop serves on meanwhile
            await trio.sleep(0.05)
            handler.resume_parked()
            # the parked batch's reply first, then the request that came meanwhile
            assert await ask(sock, b"", b"pong\n") == b"resumed\npong\n"
            assert conn.looped and not conn.parked and handler.handoffs == 0
            nonblocking.close(sock)
            nonblocking.close(other)
            await settled(lambda: not server.connections(), "both closed")
            server.shutdown(1.0)
    assert handler.closed_count == 2


async def test_a_failing_resumption_closes_its_connection_only() -> None:
    handler = LineHandler()
    counters = ConnectionCounters()
    server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            sock = await nonblocking.connect("127.0.0.1", port)
            other = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(sock, b"park\n")
            await settled(lambda: len(handler.parked) == 1, "parked")
            handler.resume_parked(fail=True)
            assert await nonblocking.recv(sock, 100) == b""
            assert await ask(other, b"ping\n") == b"pong\n"
            assert counters.curr_connections == 1 and handler.closed_count == 1
            nonblocking.close(sock)
            nonblocking.close(other)
            await settled(lambda: not server.connections(), "closed")
            server.shutdown(1.0)


async def test_shutdown_lets_a_parked_connection_finish_and_then_closes_it() -> None:
    handler = LineHandler()
    counters = ConnectionCounters()
    server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            sock = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(sock, b"park\n")
            await settled(lambda: len(handler.parked) == 1, "parked")
            server.shutdown(5.0)
            await trio.sleep(0.05)
            assert counters.curr_connections == 1  # busy: not closed as idle
            handler.resume_parked()
            assert await ask(sock, b"", b"resumed\n") == b"resumed\n"
            assert await nonblocking.recv(sock, 100) == b""  # then closed: the server stops
        nonblocking.close(sock)
    assert counters.curr_connections == 0 and handler.closed_count == 1


async def test_the_grace_deadline_closes_a_parked_connection_and_a_late_resume_is_moot() -> None:
    handler = LineHandler()
    counters = ConnectionCounters()
    server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            sock = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(sock, b"park\n")  # never resumed in time
            await settled(lambda: len(handler.parked) == 1, "parked")
            began = trio.current_time()
            server.shutdown(0.3)
        assert trio.current_time() - began >= 0.3
        assert await nonblocking.recv(sock, 100) == b""
        nonblocking.close(sock)
        handler.resume_parked()  # the callback comes after all: nothing happens
    assert counters.curr_connections == 0 and handler.closed_count == 1


async def test_a_client_gone_while_handed_off_is_closed_once() -> None:
    handler = LineHandler()
    counters = ConnectionCounters()
    server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            sock = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(sock, b"wait\n")
            await handler.waiting.wait()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            nonblocking.close(sock)  # a reset: the handoff's send fails or finds EOF next
            handler.release.set()
            await settled(lambda: counters.curr_connections == 0, "closed")
            assert handler.closed_count == 1 and not server.connections()
            fresh = await nonblocking.connect("127.0.0.1", port)
            assert await ask(fresh, b"ping\n") == b"pong\n"
            nonblocking.close(fresh)
            server.shutdown(1.0)
    assert handler.closed_count == 2


async def test_shutdown_closes_looped_idle_at_once_and_lets_a_handoff_finish() -> None:
    handler = LineHandler()
    counters = ConnectionCounters()
    server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            idle = await nonblocking.connect("127.0.0.1", port)
            assert await ask(idle, b"ping\n") == b"pong\n"
            partial = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(partial, b"pi")  # half a request: busy, in the set
            busy = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(busy, b"wait\n")
            await handler.waiting.wait()
            await settled(lambda: counters.curr_connections == 3, "all three in")
            server.shutdown(5.0)
            assert await nonblocking.recv(idle, 100) == b""  # closed at once
            assert counters.curr_connections == 2
            # the half request completes and is answered, then that connection closes
            assert await ask(partial, b"ng\n") == b"pong\n"
            assert await nonblocking.recv(partial, 100) == b""
            handler.release.set()  # the handed-off batch finishes: its reply, then closed
            assert await ask(busy, b"", b"waited\n") == b"waited\n"
            assert await nonblocking.recv(busy, 100) == b""
        for sock in (idle, partial, busy):
            nonblocking.close(sock)
    assert counters.curr_connections == 0 and handler.closed_count == 3


async def test_the_grace_deadline_closes_both_states() -> None:
    handler = LineHandler()
    counters = ConnectionCounters()
    server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            partial = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(partial, b"pi")  # never completed
            busy = await nonblocking.connect("127.0.0.1", port)
            await nonblocking.send_all(busy, b"wait\n")  # never released
            await handler.waiting.wait()
            await settled(lambda: counters.curr_connections == 2, "both in")
            began = trio.current_time()
            server.shutdown(0.3)
        assert trio.current_time() - began >= 0.3
        for sock in (partial, busy):
            assert await nonblocking.recv(sock, 100) == b""
            nonblocking.close(sock)
    assert counters.curr_connections == 0 and handler.closed_count == 2


async def test_a_pipelining_client_does_not_starve_another() -> None:
    """One client keeps the socket full of requests it never stops sending; another's
    request is still answered at once: one read per connection per pass."""
    handler = LineHandler()
    server = ConnectionServer(handler, 10, ConnectionCounters())
    flood = b"ping\n" * 20000  # 100 KB a send: more than one read's worth always waits
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            hog = await nonblocking.connect("127.0.0.1", port)

            async def pipeline() -> None:
                while True:
                    await nonblocking.send_all(hog, flood)

            async def drain() -> None:
                while True:
                    await nonblocking.recv(hog, 1 << 20)

            # the flood ends (cancelled) before the server shuts down: a server closing a
            # connection with unread requests resets it, which the flood would raise
            async with trio.open_nursery() as flood_nursery:
                flood_nursery.start_soon(pipeline)
                flood_nursery.start_soon(drain)
                await trio.sleep(0.2)  # the flood is on
                polite = await nonblocking.connect("127.0.0.1", port)
                for _ in range(20):
                    began = trio.current_time()
                    assert await ask(polite, b"ping\n") == b"pong\n"
                    assert trio.current_time() - began < 1.0
                flood_nursery.cancel_scope.cancel()
            nonblocking.close(polite)
            server.shutdown(0.5)
            nursery.cancel_scope.cancel()
        nonblocking.close(hog)


async def test_a_failing_connection_closes_alone(caplog: pytest.LogCaptureFixture) -> None:
    handler = LineHandler()
    server = ConnectionServer(handler, 10, ConnectionCounters())
    with trio.fail_after(10), caplog.at_level(logging.ERROR, "memring.net"):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            bystander = await nonblocking.connect("127.0.0.1", port)
            assert await ask(bystander, b"ping\n") == b"pong\n"
            victim = await nonblocking.connect("127.0.0.1", port)
            assert await ask(victim, b"boom\n") == b""  # closed, no reply
            assert await ask(bystander, b"ping\n") == b"pong\n"
            assert await ask(bystander, b"bye\n") == b""  # HangUp closes
            nonblocking.close(victim)
            nonblocking.close(bystander)
            server.shutdown(1.0)
    failures = [r for r in caplog.records if r.exc_info and r.exc_info[0] is KeyError]
    assert len(failures) == 1
    assert handler.closed_count == 2


async def test_the_idle_timeout_and_eviction_close_looped_connections() -> None:
    handler = LineHandler()
    counters = ConnectionCounters()
    server = ConnectionServer(handler, 2, counters, idle_timeout=0.2, evict_idle=True)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            first = await nonblocking.connect("127.0.0.1", port)
            assert await ask(first, b"ping\n") == b"pong\n"
            second = await nonblocking.connect("127.0.0.1", port)
            assert await ask(second, b"ping\n") == b"pong\n"
            third = await nonblocking.connect("127.0.0.1", port)  # evicts the oldest idle
            assert await ask(third, b"ping\n") == b"pong\n"
            assert await nonblocking.recv(first, 100) == b""
            # the idle timeout: the others close within timeout + a sweep
            assert await nonblocking.recv(second, 100) == b""
            assert await nonblocking.recv(third, 100) == b""
            assert counters.idle_kicks == 3 and counters.curr_connections == 0
            for sock in (first, second, third):
                nonblocking.close(sock)
            server.shutdown(1.0)
    assert handler.closed_count == 3


class EndingHandler(LineHandler):
    """LineHandler, plus: at EOF the client still gets `late` once `release` is set (a
    half-closed client owed replies: the proxy); `drop` closes the connection through the
    server from inside the read and then hangs up (a client dropped mid-batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.server: ConnectionServer | None = None

    def opened(self, conn: Connection) -> Receiver:
        conn.at_end_of_input = functools.partial(self._ending, conn)
        return super().opened(conn)

    def received(self, conn: Connection,
                 data: bytes) -> Handoff | type[HangUp] | type[Parked] | None:
        if data == b"drop\n":
            assert self.server is not None
            self.server.end(conn)
            return HangUp
        return super().received(conn, data)

    def _ending(self, conn: Connection) -> Handoff | type[HangUp]:
        return self._late(conn)

    async def _late(self, conn: Connection) -> bool:
        await self.release.wait()
        await conn.stream.send_all(b"late\n")
        return False


async def test_a_half_closed_client_gets_what_it_is_owed_then_closes() -> None:
    handler = EndingHandler()
    counters = ConnectionCounters()
    server = handler.server = ConnectionServer(handler, 10, counters)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            sock = await nonblocking.connect("127.0.0.1", port)
            assert await ask(sock, b"ping\n") == b"pong\n"
            sock.shutdown(socket.SHUT_WR)
            (conn,) = server.connections()
            await settled(lambda: not conn.looped, "handed off at EOF")
            assert counters.curr_connections == 1
            handler.release.set()
            assert await ask(sock, b"", b"late\n") == b"late\n"
            assert await nonblocking.recv(sock, 100) == b""
            await settled(lambda: counters.curr_connections == 0, "closed")
            dropped = await nonblocking.connect("127.0.0.1", port)
            assert await ask(dropped, b"drop\n") == b""  # closed once, from inside the read
            await settled(lambda: counters.curr_connections == 0, "closed")
            nonblocking.close(sock)
            nonblocking.close(dropped)
            server.shutdown(1.0)
    assert handler.closed_count == 2


class PassClockHandler(LineHandler):
    """LineHandler whose `ping` rearms the idle timeout through the loop's pass clock (as
    the proxy's conversation does), recording when the read was served."""

    def __init__(self) -> None:
        super().__init__()
        self.server: ConnectionServer | None = None
        self.served: list[tuple[Connection, float, bool]] = []  # conn, when, in a pass

    def received(self, conn: Connection,
                 data: bytes) -> Handoff | type[HangUp] | type[Parked] | None:
        assert self.server is not None and self.server.ready_loop is not None
        loop = self.server.ready_loop
        self.served.append((conn, trio.current_time(), loop.in_pass))
        conn.sock.send(b"pong\n")
        loop.rearm(conn)
        return None


async def test_a_rearm_in_a_pass_is_dated_at_its_end_never_before_the_read() -> None:
    handler = PassClockHandler()
    server = ConnectionServer(handler, 4, ConnectionCounters(), idle_timeout=0.3)
    handler.server = server
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await start(nursery, server)
            client = await nonblocking.connect("127.0.0.1", port)
            for _ in range(3):  # a client busy past the timeout is never cut
                await trio.sleep(0.15)
                assert await ask(client, b"ping\n") == b"pong\n"
                conn, read_at, in_pass = handler.served[-1]
                assert in_pass
                assert read_at <= conn.active <= trio.current_time()
            # then idle: closed by the sweeper, after the timeout from its last request
            last = handler.served[-1][0].active
            assert await nonblocking.recv(client, 100) == b""
            assert trio.current_time() >= last + 0.3
            nonblocking.close(client)
            server.shutdown(1.0)
