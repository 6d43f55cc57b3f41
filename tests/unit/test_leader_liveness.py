"""leader_liveness.until_gone against real loopback listeners: one kept connection while the
"leader" lives, reconnects when only the connection ends, returns once the port refuses."""

from __future__ import annotations

import pytest
import trio

from memring.backend.leader_liveness import refuses, until_gone

pytestmark = pytest.mark.unit


class Leader:
    """A listener that accepts and holds connections (a leader's client port)."""

    def __init__(self) -> None:
        self.listener = trio.socket.socket()
        self.accepted: list[trio.socket.SocketType] = []

    async def start(self) -> str:
        await self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        host, port = self.listener.getsockname()
        return f"{host}:{port}"

    async def serve(self) -> None:
        try:
            while True:
                conn, _ = await self.listener.accept()
                self.accepted.append(conn)
        except (trio.ClosedResourceError, OSError):
            pass  # die() closed the listener

    def drop_connections(self) -> None:
        for conn in self.accepted:
            conn.close()

    def die(self) -> None:
        self.listener.close()
        self.drop_connections()


async def test_one_connection_while_the_leader_lives_then_gone_at_once() -> None:
    with trio.fail_after(10):
        leader = Leader()
        address = await leader.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader.serve)
            gone = trio.Event()

            async def watch() -> None:
                await until_gone(address, 0.05)
                gone.set()

            nursery.start_soon(watch)
            await trio.sleep(1.0)  # 20 retry intervals: a per-interval probe would connect 20 times
            assert len(leader.accepted) == 1
            assert not gone.is_set()
            leader.die()
            died = trio.current_time()
            await gone.wait()
            assert trio.current_time() - died < 0.5
            nursery.cancel_scope.cancel()


async def test_a_closed_connection_alone_is_not_death() -> None:
    with trio.fail_after(10):
        leader = Leader()
        address = await leader.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader.serve)
            gone = trio.Event()

            async def watch() -> None:
                await until_gone(address, 0.05)
                gone.set()

            nursery.start_soon(watch)
            while not leader.accepted:
                await trio.sleep(0.01)
            leader.drop_connections()  # an idle timeout, say: the port still listens
            while len(leader.accepted) < 2:
                await trio.sleep(0.01)
            assert not gone.is_set()
            leader.die()
            await gone.wait()
            nursery.cancel_scope.cancel()


async def test_refuses_only_when_nobody_listens() -> None:
    with trio.fail_after(5):
        leader = Leader()
        address = await leader.start()
        assert not await refuses(address)
        leader.die()
        assert await refuses(address)


async def test_connections_that_end_at_once_back_off() -> None:
    with trio.fail_after(10):
        leader = Leader()
        address = await leader.start()

        async def hang_up_at_once() -> None:  # a handshake refused, a full connection table
            while True:
                conn, _ = await leader.listener.accept()
                leader.accepted.append(conn)
                conn.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hang_up_at_once)
            nursery.start_soon(until_gone, address, 0.05)
            await trio.sleep(2.0)
            # 40 at every 0.05 s; backing off (0.1, 0.2, 0.4, 0.8, 1, ...): about 6
            assert 2 <= len(leader.accepted) <= 10
            nursery.cancel_scope.cancel()
