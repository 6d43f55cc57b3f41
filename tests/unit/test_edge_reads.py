"""The proxy's edge-triggered reads over real socket pairs: bytes that arrive while a reader is
parked wake it, a drained socket parks it again, EOF and cancellation behave as trio's reads,
and a closed reader leaves the epoll set before its fd can be reused."""

from __future__ import annotations

import socket

import pytest
import trio

from memring.proxy.edge_reads import EdgePoller, EdgeReader
from tests.helpers.socket_pairs import nonblocking_socketpair

pytestmark = pytest.mark.unit


async def test_a_parked_reader_wakes_for_each_new_write() -> None:
    ours, peer = nonblocking_socketpair()
    reader = EdgePoller.reader(ours)
    received: list[bytes] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            async def read_three() -> None:
                for _ in range(3):
                    received.append(await reader.recv(1024))

            nursery.start_soon(read_three)
            for chunk in (b"get a\r\n", b"get b\r\n", b"get c\r\n"):
                await trio.testing.wait_all_tasks_blocked()
                assert not reader.ready  # drained: parked until the next edge
                peer.send(chunk)
    assert received == [b"get a\r\n", b"get b\r\n", b"get c\r\n"]
    reader.close()
    ours.close()
    peer.close()


async def test_a_full_read_tries_again_and_eof_ends_the_stream() -> None:
    ours, peer = nonblocking_socketpair()
    reader = EdgePoller.reader(ours)
    peer.send(b"x" * 10)
    peer.shutdown(socket.SHUT_WR)
    with trio.fail_after(5):
        assert await reader.recv(4) == b"xxxx"
        assert reader.ready  # a read that filled its size may have left more
        assert await reader.recv(100) == b"xxxxxx"
        assert await reader.recv(100) == b""
    reader.close()
    ours.close()
    peer.close()


async def test_a_parked_reader_is_cancelled_like_any_read() -> None:
    ours, peer = nonblocking_socketpair()
    reader = EdgePoller.reader(ours)
    reader.ready = False
    with trio.move_on_after(0.05) as scope:
        await reader.recv(100)
    assert scope.cancelled_caught
    peer.send(b"after")  # the cancelled wait left nothing behind: the next read gets it
    with trio.fail_after(5):
        assert await reader.recv(100) == b"after"
    reader.close()
    ours.close()
    peer.close()


async def test_a_closed_reader_leaves_the_set_before_its_fd_is_reused() -> None:
    first, first_peer = nonblocking_socketpair()
    old = EdgePoller.reader(first)
    fd = first.fileno()
    old.close()
    first.close()
    first_peer.close()
    # the kernel hands the lowest free fd out again: a new socket may get the same number
    again, again_peer = nonblocking_socketpair()
    new = EdgePoller.reader(again)
    new.ready = False
    old.close()  # closing twice does not take the new socket's registration away
    again_peer.send(b"fresh")
    with trio.fail_after(5):
        assert await new.recv(100) == b"fresh"
    assert isinstance(new, EdgeReader) and fd >= 0
    new.close()
    again.close()
    again_peer.close()
