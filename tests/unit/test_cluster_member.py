"""ClusterMember against the in-memory coordinator, and the write fence in the command handler.

Members get real loopback listeners as their client addresses, because a follower probes its
leader's port: closing a listener is how a test makes a "process" vanish. Real clock, 1 s
leases; every test has an absolute `fail_after`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from memring.backend.cluster_member import (
    LEASE_EXPIRED,
    UNCLEAN_GRACE,
    ClusterMember,
    MemberIdentity,
)
from memring.backend.commands import CommandHandler
from memring.backend.settings import BackendSettings
from memring.backend.stats import ServerCounters, StatsReport
from memring.backend.store import Store
from memring.cluster.coordinator import Incarnation, NodeRecord
from memring.cluster.memory_coordinator import MemoryCoordinator, MemoryEtcd, open_memory_etcd
from memring.protocol.replication import Position
from memring.protocol.request_parser import NEED_DATA, RequestParser

pytestmark = pytest.mark.unit

TTL = 1.0
NOT_LEADER = b"SERVER_ERROR not the leader of shard s1\r\n"


@dataclass
class Running:
    member: ClusterMember
    listener: trio.socket.SocketType
    scope: trio.CancelScope

    @property
    def node_id(self) -> str:
        return self.member.identity.node_id


async def listener() -> tuple[trio.socket.SocketType, str]:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


@asynccontextmanager
async def cluster(store: MemoryEtcd, count: int) -> AsyncIterator[list[Running]]:
    """`count` members of shard s1, each with its own client of `store`, running."""
    running: list[Running] = []
    async with trio.open_nursery() as nursery:
        for number in range(1, count + 1):
            await start_member(nursery, store, f"n{number}", running)
        yield running
        nursery.cancel_scope.cancel()
    for r in running:
        r.listener.close()


async def start_member(nursery: trio.Nursery, store: MemoryEtcd, node_id: str,
                       running: list[Running]) -> Running:
    sock, address = await listener()
    member = ClusterMember(MemoryCoordinator(store, "unit", call_timeout=0.3),
                           MemberIdentity(node_id, "s1", address), lease_ttl=TTL)
    scope = trio.CancelScope()

    async def run() -> None:
        with scope:
            await member.run()

    nursery.start_soon(run)
    entry = Running(member, sock, scope)
    running.append(entry)
    return entry


async def leaders(running: list[Running], count: int = 1) -> list[Running]:
    """Wait until exactly `count` running members lead; return them."""
    while True:
        found = [r for r in running if r.member.role == "leader"]
        if len(found) == count and all(r.member.refusal() is None for r in found):
            return found
        await trio.sleep(0.01)


async def leader_and_follower(running: list[Running]) -> tuple[Running, Running]:
    """Two running members, once one leads and the other follows it."""
    [leader] = await leaders(running)
    follower = next(r for r in running if r is not leader)
    while follower.member.role != "follower":
        await trio.sleep(0.01)
    return leader, follower


async def test_one_leader_one_follower_and_the_isr() -> None:
    with trio.fail_after(5):
        async with open_memory_etcd() as store, cluster(store, 2) as running:
            leader, follower = await leader_and_follower(running)
            assert follower.member.refusal() == NOT_LEADER
            coord = MemoryCoordinator(store, "unit")
            while True:
                view = await coord.snapshot()
                isr = view.shards["s1"].isr
                want = {Incarnation(r.node_id, r.member.session.lease_id) for r in running
                        if r.member.session is not None}
                if isr is not None and set(isr.members) == want and len(want) == 2:
                    break
                await trio.sleep(0.01)
            stats = dict(leader.member.role_stats())
            assert stats["memring_role"] == "leader"
            assert stats["memring_epoch"] == view.shards["s1"].epoch
            assert dict(follower.member.role_stats())["memring_epoch"] == stats["memring_epoch"]


async def test_a_leader_that_refuses_connections_is_revoked_fast() -> None:
    with trio.fail_after(10):
        async with open_memory_etcd() as store:
            coord = MemoryCoordinator(store, "unit")
            dead_sock, dead_address = await listener()
            dead_sock.close()  # nobody listens there: the "process" is gone
            async with coord.open_session(5) as session:
                await coord.register_node(session, NodeRecord("dead", dead_address, "s1"))
                assert await coord.campaign(session, "s1", "dead", dead_address) is not None
                async with cluster(store, 1) as running:
                    started = trio.current_time()
                    await leaders(running)
                    # the dead leader's lease (kept alive here) was revoked: the probe found
                    # it gone within half its 5 s TTL (slack for a busy machine)
                    assert trio.current_time() - started < 2.5
                    assert session.lost.is_set() or not (await coord.snapshot()).nodes.get(
                        "dead")


async def test_frozen_store_makes_the_leader_refuse_before_its_lease_expires() -> None:
    with trio.fail_after(10):
        async with open_memory_etcd() as store, cluster(store, 2) as running:
            [leader] = await leaders(running)
            session = leader.member.session
            assert session is not None
            store.freeze()
            frozen = trio.current_time()
            while leader.member.refusal() is None:
                await trio.sleep(0.005)
            refused_after = trio.current_time() - frozen
            assert refused_after < TTL  # the store keeps the lease up to TTL after a renewal
            assert leader.member.refusal() in (LEASE_EXPIRED, NOT_LEADER)
            await trio.sleep(TTL)
            store.thaw()
            await leaders(running)  # everyone rejoined: one leader again


async def test_leave_resigns_and_hands_over() -> None:
    with trio.fail_after(5):
        async with open_memory_etcd() as store, cluster(store, 2) as running:
            leader, other = await leader_and_follower(running)
            await leader.member.leave()
            assert leader.member.refusal() == NOT_LEADER
            coord = MemoryCoordinator(store, "unit")
            assert leader.node_id not in (await coord.snapshot()).nodes
            started = trio.current_time()
            await leaders([other])
            assert trio.current_time() - started < TTL  # no lease expiry was waited for


async def test_a_leaving_member_does_not_campaign_again() -> None:
    """leave() resigns, then revokes its lease: in between the shard has no leader, and a
    member that still followed the view took it back and acknowledged writes again (seen on
    a busy machine: refusal() None after leave()). A slow revoke makes the window certain."""
    with trio.fail_after(5):
        async with open_memory_etcd() as store, cluster(store, 1) as running:
            [leader] = await leaders(running)
            coordinator = leader.member.coordinator
            revoke = coordinator.revoke

            async def slow_revoke(lease_id: int) -> bool:
                await trio.sleep(0.3)  # the resignation's view reaches the member meanwhile
                return await revoke(lease_id)

            coordinator.revoke = slow_revoke  # type: ignore[method-assign]
            await leader.member.leave()
            assert leader.member.refusal() == NOT_LEADER
            shard = (await MemoryCoordinator(store, "unit").snapshot()).shards["s1"]
            assert shard.leader is None


class CatchingUp:
    """A replication listener whose store position the test moves by hand."""

    def __init__(self) -> None:
        self.at = Position(0, 0)

    def position(self) -> Position:
        return self.at

    def stats(self) -> list[tuple[str, object]]:
        return []

    def refusal(self) -> bytes | None:
        return None

    async def drain(self, timeout: float) -> None:
        await trio.lowlevel.checkpoint()

    def configure(self, config: object) -> None:
        pass

    def stepped_down(self) -> None:
        pass

    def became_leader(self, epoch: int) -> None:
        self.at = Position(epoch, 0)


async def test_reads_refused_from_a_lapsed_lease_until_caught_up_with_the_next_leader() -> None:
    """A leader answers reads while its lease holds on its own clock, then refuses them; once
    deposed it refuses them until its store holds a later epoch's stream (it may hold writes
    nobody acknowledged, or miss the new leader's). A follower that never led answers once its
    store holds a leader's stream, and not before (a new process's empty store)."""
    with trio.fail_after(10):
        async with open_memory_etcd() as store, cluster(store, 2) as running:
            listeners = {}
            for r in running:
                listeners[r.node_id] = r.member.listener = CatchingUp()  # type: ignore[assignment]
            [leader] = await leaders(running)
            follower = next(r for r in running if r is not leader)
            led = leader.member.epoch
            assert leader.member.read_refusal() is None
            assert follower.member.read_refusal() == NOT_LEADER  # nothing replicated to it yet
            assert follower.member.role == "syncing"
            listeners[follower.node_id].at = Position(led, 0)  # the leader's stream reached it
            assert follower.member.read_refusal() is None
            store.freeze()
            while leader.member.read_refusal() is None:
                await trio.sleep(0.005)
            assert leader.member.read_refusal() in (LEASE_EXPIRED, NOT_LEADER)
            while leader.member.role == "leader":
                await trio.sleep(0.005)
            for _ in range(20):  # while its store is still at the epoch it led
                assert leader.member.read_refusal() == NOT_LEADER
                await trio.sleep(0.01)
            store.thaw()
            listeners[leader.node_id].at = Position(led + 1, 0)  # the next leader's stream
            assert leader.member.read_refusal() is None
            assert follower.member.read_refusal() is None or follower.member.role == "leader"


# --- the fence in the command handler ---------------------------------------------------


class Fence:
    def __init__(self) -> None:
        self.answer: bytes | None = NOT_LEADER

    def refusal(self) -> bytes | None:
        return self.answer

    def read_refusal(self) -> bytes | None:
        return None

    def role_stats(self) -> list[tuple[str, object]]:
        return [("memring_role", "follower"), ("memring_shard", "s1"),
                ("memring_node_id", "n1"), ("memring_epoch", 7)]


def run_commands(handler: CommandHandler, wire: bytes) -> bytes:
    parser = RequestParser(max_line=4096, max_item_size=1 << 20)
    parser.receive_data(wire)
    out: list[bytes] = []
    while (event := parser.next_event()) is not NEED_DATA:
        handler.handle(event, out)
    return b"".join(out)


def handler_with(fence: Fence | None) -> CommandHandler:
    settings = BackendSettings()
    store = Store(memory_limit=64 << 20, max_item_size=1 << 20)
    return CommandHandler(store, StatsReport(settings, store, ServerCounters()), fence)


@pytest.mark.parametrize("write", [
    b"set k 0 0 1\r\nw\r\n", b"add k 0 0 1\r\nw\r\n", b"replace k 0 0 1\r\nw\r\n",
    b"append k 0 0 1\r\nw\r\n", b"prepend k 0 0 1\r\nw\r\n", b"cas k 0 0 1 1\r\nw\r\n",
    b"delete k\r\n", b"incr k 1\r\n", b"decr k 1\r\n", b"touch k 10\r\n", b"gat 10 k\r\n",
    b"gats 10 k\r\n", b"flush_all\r\n", b"ms k 1\r\nw\r\n", b"ms k 1 q\r\nw\r\n", b"md k\r\n",
    b"md k q\r\n", b"ma k\r\n", b"mg k T10 v\r\n", b"mg k N10 v\r\n"])
def test_fenced_writes_are_refused_and_not_applied(write: bytes) -> None:
    fence = Fence()
    handler = handler_with(fence)
    fence.answer = None
    assert run_commands(handler, b"set k 0 0 1\r\n5\r\n") == b"STORED\r\n"
    fence.answer = NOT_LEADER
    assert run_commands(handler, write) == NOT_LEADER
    assert run_commands(handler, b"mg k v t\r\n") == b"VA 1 t-1\r\n5\r\n"


def test_noreply_hides_the_refusal_but_still_does_not_apply() -> None:
    fence = Fence()
    handler = handler_with(fence)
    assert run_commands(handler, b"set k 0 0 1 noreply\r\nw\r\ndelete k noreply\r\n") == b""
    assert run_commands(handler, b"get k\r\nmg k s\r\n") == b"END\r\nEN\r\n"
    fence.answer = LEASE_EXPIRED
    assert run_commands(handler, b"set k 0 0 1\r\nw\r\n") == LEASE_EXPIRED


def test_too_large_set_on_a_follower_keeps_the_item() -> None:
    fence = Fence()
    handler = handler_with(fence)
    fence.answer = None
    run_commands(handler, b"set k 0 0 1\r\n5\r\n")
    fence.answer = NOT_LEADER
    big = b"x" * (2 << 20)
    reply = run_commands(handler, b"set k 0 0 %d\r\n%s\r\n" % (len(big), big))
    assert reply.startswith(b"SERVER_ERROR object too large")
    assert run_commands(handler, b"get k\r\n") == b"VALUE k 0 1\r\n5\r\nEND\r\n"


def test_stats_name_the_role() -> None:
    standalone = run_commands(handler_with(None), b"stats\r\n")
    assert b"STAT memring_role standalone\r\n" in standalone and standalone.endswith(b"END\r\n")
    member = run_commands(handler_with(Fence()), b"stats\r\n")
    assert b"STAT memring_role follower\r\nSTAT memring_shard s1\r\n" in member
    assert b"STAT memring_epoch 7\r\nEND\r\n" in member


class _StoreAt:
    """The replication side of a member: only its position is asked."""

    def __init__(self, position: Position) -> None:
        self._position = position

    def position(self) -> Position:
        return self._position


async def test_an_in_sync_member_between_sessions_holds_off_an_unclean_election(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The shard's only in-sync member lost its session (etcd 3.4 revoking every live lease at
    once, #12528) and, alive and holding more, registers again 0.62 s later under load. The
    other member, outside the ISR, must wait for it over seconds (with a 1 s grace it went
    unclean first and 13 acknowledged writes were lost), yet not forever: one that answers
    its peers but never reaches etcd stops holding the shard leaderless after the grace. A
    member that does not answer holds nothing off."""
    async with open_memory_etcd() as store:
        coord = MemoryCoordinator(store, "unit")
        async with coord.open_session(5) as session:
            await coord.register_node(session, NodeRecord("n1", "127.0.0.1:1", "s1"))
            leadership = await coord.campaign(session, "s1", "n1", "127.0.0.1:1")
            assert leadership is not None
            await coord.update_isr(leadership, [Incarnation("n1", session.lease_id)])
        view = await coord.snapshot()  # n1's session is gone, the ISR still names it
        shard = view.shards["s1"]
        assert "n1" not in view.nodes and shard.isr is not None
        member = ClusterMember(coord, MemberIdentity("n2", "s1", "127.0.0.1:2"))
        member.listener = _StoreAt(Position(1, 5))  # type: ignore[assignment]
        member._last_addresses = {"n1": "127.0.0.1:1"}
        answers: dict[str, dict[str, str] | None] = {"127.0.0.1:1": {
            "memring_repl_position": "1:9"}}

        async def fetch_all(addresses: list[str], *_: object) -> dict[str, dict[str, str] | None]:
            return {address: answers.get(address) for address in addresses}

        monkeypatch.setattr("memring.backend.cluster_member.fetch_all", fetch_all)
        assert not await member._may_take_unclean(view, shard)
        member._unclean_since = trio.current_time() - 1.5  # past the old 1 s grace
        assert not await member._may_take_unclean(view, shard)
        member._unclean_since = trio.current_time() - UNCLEAN_GRACE - 0.1
        assert await member._may_take_unclean(view, shard)
        member._unclean_since = None
        answers.clear()  # n1 gone for good: nothing to wait for
        assert await member._may_take_unclean(view, shard)


async def test_a_failover_campaigns_once() -> None:
    """The follower that revokes a dead leader's lease campaigns right after (without waiting
    for the view), and the view showing the leader gone made it campaign as well: two txns
    racing in every failover, the loser's failed txn and re-read 3 etcd calls for nothing
    ("our campaign's answer was lost, yet it won" in the logs). One campaign now."""
    with trio.fail_after(10):
        async with open_memory_etcd() as store, cluster(store, 2) as running:
            leader, follower = await leader_and_follower(running)
            coordinator = follower.member.coordinator
            campaign = coordinator.campaign
            calls = 0

            async def counted(*args: object, **kwargs: object) -> object:
                nonlocal calls
                calls += 1
                await trio.sleep(0.05)  # an etcd round trip: the other path catches up
                return await campaign(*args, **kwargs)  # type: ignore[arg-type]

            coordinator.campaign = counted  # type: ignore[method-assign,assignment]

            async def keep(lease_id: int) -> bool:  # a killed process revokes nothing
                return False

            leader.member.coordinator.revoke = keep  # type: ignore[method-assign]
            leader.scope.cancel()
            leader.listener.close()  # its port refuses: the follower revokes its lease
            await leaders([follower])
            await trio.sleep(0.2)  # a second campaign would have started by now
            assert calls == 1
