"""Cluster mode's leader slots (proxy/slots.py): with the shard's leader connected, a request
is its backend reply itself (`DirectLeaderWrite`, `DirectLeaderRead`); a refusal or a failure
hands over to the slow path (`LeaderWrite`, `LeaderRead`), which asks the next leader.

Real `NodePool`s and backend connections over loopback sockets, against scripted backends
served in the test's run (tests/helpers/scripted_backend.py), so the refusals come exactly when
a test needs them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from memring.cluster.static_topology import NodeSpec
from memring.proxy.buffer_budget import BufferBudget
from memring.proxy.direct_slots import DirectLeaderRead, DirectLeaderWrite, to_leader
from memring.proxy.pending_reply import PendingReply
from memring.proxy.pool import NodePool
from memring.proxy.router import Shard, ShardRouter
from memring.proxy.settings import ProxySettings
from memring.proxy.slots import NEEDS_TASK, WAITING, LeaderWrite, render
from memring.proxy.state import ProxyState
from memring.proxy.stats import ProxyStats
from tests.helpers.scripted_backend import ScriptedBackend

pytestmark = pytest.mark.unit

REFUSED = b"SERVER_ERROR not the leader of shard s1\r\n"
SET = b"set k 0 0 1\r\nv\r\n"
GET = b"get k\r\n"
HIT = b"VALUE k 0 1\r\nv\r\nEND\r\n"


class Leaders:
    """Two scripted nodes of shard s1, each with a pool; `lead(i)` swaps in a router that
    names node i the leader, as the etcd watch does."""

    def __init__(self, backends: list[ScriptedBackend], nursery: trio.Nursery) -> None:
        self.backends = backends
        self.settings = ProxySettings(leader_wait_ms=1000, timeout_ms=1000)
        self.pools = [NodePool(NodeSpec("127.0.0.1", b.port), self.settings) for b in backends]
        for pool in self.pools:
            nursery.start_soon(pool.run)
        router = ShardRouter([], "md5", "leader", leader_writes=True)
        self.state = ProxyState(self.settings, router, ProxyStats("test"), BufferBudget(1 << 20))
        self.lead(0)

    def lead(self, index: int) -> Shard:
        others = [p for i, p in enumerate(self.pools) if i != index]
        shard = Shard("s1", [self.pools[index], *others])
        self.state.router = ShardRouter([shard], "md5", "leader", leader_writes=True)
        changed, self.state.topology_changed = self.state.topology_changed, trio.Event()
        changed.set()
        return shard

    async def connect(self, index: int, client: Client) -> None:
        """Open the client's connection to node `index` (a pool opens on first demand)."""
        reply = self.pools[index].submit(b"version\r\n", False, client)
        await reply.wait()
        assert reply.error is None, reply.error


class Client:
    """A client's reply stream as the slots see it."""

    affinity = 0

    def __init__(self) -> None:
        self.told = 0

    def reply_arrived(self) -> None:
        self.told += 1


@asynccontextmanager
async def two_nodes(first: Callable[[bytes], bytes | None],
                    second: Callable[[bytes], bytes | None]) -> AsyncIterator[Leaders]:
    backends = [ScriptedBackend(first), ScriptedBackend(second)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for backend in backends:
                await backend.listen(nursery)
            yield Leaders(backends, nursery)
            nursery.cancel_scope.cancel()


def stores(line: bytes) -> bytes:
    if line == b"stats":  # a waiting write's probe (proxy/leader_claims.py): no claim
        return b"END\r\n"
    return b"STORED\r\n" if line.startswith(b"set ") else HIT


def refuses(line: bytes) -> bytes:
    return b"END\r\n" if line == b"stats" else REFUSED


def requests(backend: ScriptedBackend) -> list[bytes]:
    """The lines a node was asked, but a waiting write's `stats` probes."""
    return [line for line in backend.asked if line != b"stats"]


async def test_a_connected_leaders_reply_is_the_slot() -> None:
    async with two_nodes(stores, refuses) as leaders:
        client = Client()
        await leaders.connect(0, client)
        client.told = 0
        shard = leaders.state.router.by_name["s1"]
        write = to_leader(DirectLeaderWrite, leaders.state, shard, SET, False, client, render)
        read = to_leader(DirectLeaderRead, leaders.state, shard, GET, True, client, render)
        assert type(write) is DirectLeaderWrite and type(read) is DirectLeaderRead
        assert isinstance(write, PendingReply)  # one object: the backend's reply
        assert write.poll() is WAITING
        await read.wait()  # replies come in order: the write's is in too
        assert client.told == 2
        assert write.poll() == b"STORED\r\n" and read.poll() == HIT
        assert await write.reply() == b"STORED\r\n" and await read.reply() == HIT
        assert leaders.backends[0].asked == [b"set k 0 0 1", b"get k"]
        assert leaders.backends[1].asked == []


async def test_without_a_connection_the_leader_slot_is_the_slow_one() -> None:
    async with two_nodes(stores, refuses) as leaders:
        client = Client()
        shard = leaders.state.router.by_name["s1"]
        # the pool is dormant (no request yet): nothing to send on at once
        assert to_leader(DirectLeaderWrite, leaders.state, shard, SET, False, client,
                         render) is None
        slow = LeaderWrite(leaders.state, shard, SET, False, client)
        assert await slow.reply() == b"STORED\r\n"
        # an election under way: no leader named, no direct slot
        leaders.state.router = ShardRouter([Shard("s1", leaders.pools, has_leader=False)],
                                           "md5", "leader", leader_writes=True)
        await leaders.connect(0, client)
        assert to_leader(DirectLeaderRead, leaders.state,
                         leaders.state.router.by_name["s1"], GET, True, client, render) is None


async def test_a_refused_write_goes_to_the_next_leader() -> None:
    async with two_nodes(refuses, stores) as leaders:
        client = Client()
        await leaders.connect(0, client)
        await leaders.connect(1, client)
        shard = leaders.state.router.by_name["s1"]
        write = to_leader(DirectLeaderWrite, leaders.state, shard, SET, False, client, render)
        assert write is not None
        await write.wait()
        assert write.poll() is NEEDS_TASK  # not applied: the next leader may take it
        assert write.settled_now() is NEEDS_TASK

        async def elect() -> None:
            await trio.sleep(0.05)
            leaders.lead(1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(elect)
            assert await write.reply() == b"STORED\r\n"
        # the refusing node is asked again after a pause (it may have won just now), the
        # new leader once
        refused, stored = (requests(b) for b in leaders.backends)
        assert refused and set(refused) == {b"set k 0 0 1"} and stored == [b"set k 0 0 1"]
        # once taken over, the slot answers what the slow path got
        settled = write.settled_now()
        assert isinstance(settled, PendingReply) and render(settled) == b"STORED\r\n"
        assert write.poll() is NEEDS_TASK and await write.reply() == b"STORED\r\n"


async def test_a_write_that_got_no_answer_is_never_sent_twice() -> None:
    async with two_nodes(lambda line: None, stores) as leaders:  # the leader hangs up
        client = Client()
        await leaders.connect(0, client)
        write = to_leader(DirectLeaderWrite, leaders.state, leaders.state.router.by_name["s1"],
                          SET, False, client, render)
        assert write is not None
        await write.wait()
        leaders.lead(1)
        reply = write.poll()
        assert isinstance(reply, bytes) and reply.startswith(b"SERVER_ERROR "), reply
        assert await write.reply() == reply
        assert leaders.backends[1].asked == []


async def test_a_failed_read_is_asked_again_at_the_leader() -> None:
    async with two_nodes(lambda line: None, stores) as leaders:  # the leader hangs up
        client = Client()
        await leaders.connect(0, client)
        await leaders.connect(1, client)
        read = to_leader(DirectLeaderRead, leaders.state, leaders.state.router.by_name["s1"],
                         GET, True, client, render)
        assert read is not None
        await read.wait()
        assert read.error is not None and read.poll() is NEEDS_TASK
        leaders.lead(1)  # the new leader answers
        assert await read.reply() == HIT
        assert leaders.backends[1].asked == [b"get k"]
