"""A write waiting for its shard's leader asks the shard's nodes whether they lead
(proxy/leader_claims.py) and goes to one that claims a newer epoch than the view's; false
and stale claims route nothing, a refused claim is not taken again, reads never follow one,
and the probing is bounded.

Real `NodePool`s over loopback sockets against scripted backends served in the test's run
(tests/helpers/scripted_backend.py): each answers `stats` with the memring_* lines a backend
ends its `stats` with, as the test scripts them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import trio

from memring.cluster.static_topology import NodeSpec
from memring.proxy.buffer_budget import BufferBudget
from memring.proxy.leader_claims import PROBE_INTERVAL
from memring.proxy.pool import NodePool
from memring.proxy.router import Shard, ShardRouter
from memring.proxy.settings import ProxySettings
from memring.proxy.slots import LeaderRead, LeaderWrite
from memring.proxy.state import ProxyState
from memring.proxy.stats import ProxyStats
from tests.helpers.scripted_backend import ScriptedBackend

pytestmark = pytest.mark.unit

REFUSED = b"SERVER_ERROR not the leader of shard s1\r\n"
SET = b"set k 0 0 1\r\nv\r\n"
GET = b"get k\r\n"
HIT = b"VALUE k 0 1\r\nv\r\nEND\r\n"
VIEW_EPOCH = 5  # the epoch of the leader the proxy's view names (node 0)


def role(name: str, epoch: int, shard: str = "s1") -> bytes:
    return (b"STAT pid 1\r\nSTAT memring_role %s\r\nSTAT memring_shard %s\r\n"
            b"STAT memring_node_id n\r\nSTAT memring_epoch %d\r\nEND\r\n"
            % (name.encode(), shard.encode(), epoch))


def node(stats: Callable[[], bytes], write: bytes = b"STORED\r\n"
         ) -> Callable[[bytes], bytes]:
    """A scripted node: `stats` as `stats()` says, sets answered `write`, gets a hit."""
    def answer(line: bytes) -> bytes:
        if line == b"stats":
            return stats()
        return write if line.startswith(b"set ") else HIT
    return answer


class Client:
    affinity = 0

    def reply_arrived(self) -> None:
        pass


class Nodes:
    """Shard s1 of two scripted nodes; the view names node 0 the leader at VIEW_EPOCH."""

    def __init__(self, backends: list[ScriptedBackend], nursery: trio.Nursery) -> None:
        self.backends = backends
        self.settings = ProxySettings(leader_wait_ms=400, timeout_ms=1000)
        self.pools = [NodePool(NodeSpec("127.0.0.1", b.port), self.settings) for b in backends]
        for pool in self.pools:
            nursery.start_soon(pool.run)
        self.shard = Shard("s1", self.pools)
        router = ShardRouter([self.shard], "md5", "leader", leader_writes=True)
        self.state = ProxyState(self.settings, router, ProxyStats("test"), BufferBudget(1 << 20))
        self.state.claims.follow_view({"s1": VIEW_EPOCH})

    def asked(self, index: int, verb: bytes) -> int:
        return sum(line.split()[0] == verb for line in self.backends[index].asked)


@asynccontextmanager
async def shard_of(first: Callable[[bytes], bytes | None],
                   second: Callable[[bytes], bytes | None]) -> AsyncIterator[Nodes]:
    backends = [ScriptedBackend(first), ScriptedBackend(second)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for backend in backends:
                await backend.listen(nursery)
            yield Nodes(backends, nursery)
            nursery.cancel_scope.cancel()


def old_leader() -> Callable[[bytes], bytes]:
    """The view's leader, stepped down: it refuses writes and says follower."""
    return node(lambda: role("follower", VIEW_EPOCH), REFUSED)


async def test_a_waiting_write_goes_to_the_node_that_claims_a_newer_epoch() -> None:
    async with shard_of(old_leader(), node(lambda: role("leader", VIEW_EPOCH + 2))) as nodes:
        started = trio.current_time()
        reply = await LeaderWrite(nodes.state, nodes.shard, SET, False, Client()).reply()
        assert reply == b"STORED\r\n"
        assert trio.current_time() - started < 0.2  # not the 0.4 s leader wait
        assert nodes.asked(1, b"set") == 1 and nodes.asked(1, b"stats") >= 1
        assert nodes.state.claims.claims_taken == 1
        # the view catching up ends the claim: the next wait probes afresh
        nodes.state.claims.follow_view({"s1": VIEW_EPOCH + 2})
        assert nodes.state.claims.leader("s1") is None


@pytest.mark.parametrize("claim", [role("follower", VIEW_EPOCH + 2),  # a follower
                                   role("leader", VIEW_EPOCH),  # the view's own epoch
                                   role("leader", VIEW_EPOCH - 1),  # an older leader
                                   role("leader", VIEW_EPOCH + 2, shard="s2"),  # not s1's
                                   b"END\r\n"])  # no memring lines: a plain memcached
async def test_a_false_or_stale_claim_routes_nothing(claim: bytes) -> None:
    async with shard_of(old_leader(), node(lambda: claim)) as nodes:
        reply = await LeaderWrite(nodes.state, nodes.shard, SET, False, Client()).reply()
        assert reply == REFUSED  # the wait ran out: the view's leader's last word
        assert nodes.asked(1, b"set") == 0 and nodes.asked(1, b"stats") >= 2
        assert nodes.state.claims.claims_taken == 0


async def test_a_claim_refused_by_its_node_is_not_taken_again() -> None:
    liar = node(lambda: role("leader", VIEW_EPOCH + 1), REFUSED)  # says leader, refuses
    async with shard_of(old_leader(), liar) as nodes:
        reply = await LeaderWrite(nodes.state, nodes.shard, SET, False, Client()).reply()
        assert reply == REFUSED
        assert nodes.asked(1, b"set") == 1  # once, not once per probe
        assert nodes.state.claims.claims_taken == 1
        assert nodes.state.claims.leader("s1") is None


async def test_reads_never_follow_a_claim() -> None:
    async with shard_of(node(lambda: role("follower", VIEW_EPOCH), REFUSED),
                        node(lambda: role("leader", VIEW_EPOCH + 2))) as nodes:
        nodes.backends[0].answer = lambda line: REFUSED if line == b"get k" else b"END\r\n"
        reply = await LeaderRead(nodes.state, nodes.shard, GET, True, Client()).reply()
        assert reply == REFUSED
        assert nodes.asked(1, b"get") == 0 and nodes.asked(1, b"stats") == 0


async def test_probing_is_bounded_and_stops_with_the_wait() -> None:
    async with shard_of(old_leader(), node(lambda: role("follower", VIEW_EPOCH))) as nodes:
        started = trio.current_time()
        await LeaderWrite(nodes.state, nodes.shard, SET, False, Client()).reply()
        waited = trio.current_time() - started
        probes = nodes.asked(1, b"stats")
        assert 2 <= probes <= waited / PROBE_INTERVAL + 2, (probes, waited)
        await trio.sleep(0.1)  # no write waits: no probe
        assert nodes.asked(1, b"stats") == probes


async def test_a_probe_wakes_only_the_writes_waiting_for_its_shard() -> None:
    async with shard_of(old_leader(), node(lambda: role("follower", VIEW_EPOCH))) as nodes:
        claims = nodes.state.claims
        mine, other = claims.changed("s1"), claims.changed("s2")
        claims.probe("s1", nodes.pools)
        with trio.fail_after(2):
            await mine.wait()
        assert not other.is_set()
        claims.follow_view({"s1": VIEW_EPOCH})  # a new view wakes every waiting write
        assert other.is_set()
