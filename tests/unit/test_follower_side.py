"""follow_leader against a fake leader on a loopback socket and a fake host: a node whose
lease changes (its session was lost and re-opened) says HELLO again with the new lease, at
once (the member wakes its role watchers with a new session: well before their safety net,
WATCH_INTERVAL); a session merely lost (lease 0) keeps the connection (issue 12)."""

from __future__ import annotations

import socket

import pytest
import trio

from memring.backend.cluster_member import LeaderPeer
from memring.backend.replication import follower_side
from memring.backend.replication.follower_apply import FollowerState
from memring.backend.replication.mutation_log import ReplicationLog
from memring.backend.replication.peer_auth import PeerKey
from memring.backend.replication.ports import ReplicationCounters
from memring.backend.store import Store
from memring.cluster.coordinator import Incarnation
from memring.netio import nonblocking
from memring.protocol.replication import (
    NONCE_SIZE,
    ORIGIN,
    Challenge,
    Error,
    ErrorCode,
    Hello,
    ReplicationParser,
    Welcome,
    encode,
)
from memring.protocol.sentinels import NEED_DATA

pytestmark = pytest.mark.unit


class Host:
    """ports.FollowerSideHost, following a leader at `peer`."""

    def __init__(self, peer: str) -> None:
        self.store = Store(memory_limit=1 << 20, max_item_size=1 << 16)
        self.log = ReplicationLog()
        self.follower = FollowerState(self.store, ORIGIN, self.log)
        self.counters = ReplicationCounters()
        self.leading = False
        self.peer = peer
        self.lease = 7
        self.peer_key = PeerKey(b"", "unit", "s1")  # plain mode
        self.peer_tls = None
        self.changed = trio.lowlevel.ParkingLot()

    def set_lease(self, lease: int) -> None:
        """As ClusterMember does on a new session: the role watchers look again."""
        self.lease = lease
        self.changed.unpark_all()

    def leader_peer(self) -> LeaderPeer | None:
        return LeaderPeer(self.peer, 1, "n1", 5)

    def incarnation(self) -> Incarnation:
        return Incarnation("n2", self.lease)

    def start_over(self) -> FollowerState:
        self.follower = FollowerState(self.store, ORIGIN, self.log)
        return self.follower

    async def next_role_change(self) -> None:
        await self.changed.park()


async def _hello(sock: socket.socket, welcome: bool = True) -> Hello:
    """As a leader in plain mode: CHALLENGE, the follower's HELLO, WELCOME (if `welcome`)."""
    await nonblocking.send_all(sock, encode(Challenge(bytes(NONCE_SIZE))))
    parser = ReplicationParser()
    while True:
        event = parser.next_event()
        if isinstance(event, Hello):
            if welcome:
                await nonblocking.send_all(sock, encode(Welcome("n1", 5, 1)))
            return event
        assert event is NEED_DATA, event
        data = await nonblocking.recv(sock, 4096)
        assert data, "closed before HELLO"
        parser.receive_data(data)


async def test_a_new_lease_says_hello_again_and_a_lost_session_does_not() -> None:
    listener = nonblocking.listen("127.0.0.1", 0)
    host = Host(f"127.0.0.1:{listener.getsockname()[1]}")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower_side.follow_leader, host)
            first = await nonblocking.accept(listener)
            assert (await _hello(first)).incarnation == 7
            host.set_lease(0)  # session lost, not yet re-opened: nothing to announce
            with trio.move_on_after(0.5) as quiet:
                await nonblocking.recv(first, 4096)  # neither data nor the end of it
            assert quiet.cancelled_caught, "the follower hung up on a lost session"
            host.set_lease(9)  # a new session
            started = trio.current_time()
            second = await nonblocking.accept(listener)
            assert (await _hello(second)).incarnation == 9
            assert trio.current_time() - started < follower_side.WATCH_INTERVAL / 2
            assert await nonblocking.recv(first, 4096) == b""  # the old connection is closed
            nursery.cancel_scope.cancel()
    for sock in (listener, first, second):
        sock.close()


async def test_a_hello_refused_as_not_a_member_is_said_again_soon() -> None:
    """The leader refuses a HELLO whose lease is not in its view yet (ERROR NOT_MEMBER, issue
    12): the follower asks again every NOT_MEMBER_RETRY s, not after a growing backoff (it
    waited up to BACKOFF_MAX = 1 s before)."""
    listener = nonblocking.listen("127.0.0.1", 0)
    host = Host(f"127.0.0.1:{listener.getsockname()[1]}")
    gaps: list[float] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(follower_side.follow_leader, host)
            refused_at = None
            for _ in range(6):
                sock = await nonblocking.accept(listener)
                await _hello(sock, welcome=False)
                if refused_at is not None:
                    gaps.append(trio.current_time() - refused_at)
                await nonblocking.send_all(sock, encode(Error(ErrorCode.NOT_MEMBER, 1, "who?")))
                refused_at = trio.current_time()
                sock.close()
            nursery.cancel_scope.cancel()
    listener.close()
    assert max(gaps) < 2 * follower_side.NOT_MEMBER_RETRY, gaps
