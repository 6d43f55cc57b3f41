"""The Coordinator contract: every implementation passes the same tests, so the in-memory
fake cannot drift from etcd. tests/unit/test_coordinator_contract.py runs it against the fake
(marker unit), tests/integration/test_etcd_coordinator.py against a real etcd process (marker
integration): each subclasses `CoordinatorContract` with a `harness` fixture.

A harness gives the tests clients of one store and two faults: `freeze()` (calls hang, like a
SIGSTOPped etcd) and `thaw()`. Every test has an absolute `fail_after`; every wait is bounded.
"""

from __future__ import annotations

import abc
import itertools
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

import pytest
import trio

from memring.cluster.coordinator import (
    ClusterConfig,
    ClusterView,
    Coordinator,
    CoordinatorUnavailable,
    FencedOut,
    Incarnation,
    IsrMoved,
    Leadership,
    LeaseNotFound,
    NodeRecord,
    ProxyRecord,
    Session,
    ShardExists,
    ShardRecord,
)
from memring.cluster.keyspace import Keyspace
from tests.helpers.run_queue import Stopwatch

CALL_TIMEOUT = 0.5
# Set-up's calls (a harness connecting: a first connection, for the secure harness a bcrypt
# Authenticate) may take longer on a loaded machine (0.53 s seen at load 13-16); the calls the
# contract checks are held to CALL_TIMEOUT (the harness sets it once connected).
CONNECT_TIMEOUT = 5.0
_clusters = itertools.count(1)


class Harness(abc.ABC):
    """A store the contract runs against."""

    # How long past its TTL a lease's keys may live (etcd checks expiry on a ~500 ms tick).
    expiry_slack: float

    def __init__(self) -> None:
        self.cluster = f"contract{next(_clusters)}"

    @abc.abstractmethod
    def client(self) -> AbstractAsyncContextManager[Coordinator]: ...

    @abc.abstractmethod
    def freeze(self) -> None: ...

    @abc.abstractmethod
    def thaw(self) -> None: ...


def node(node_id: str, shard: str = "s1") -> NodeRecord:
    return NodeRecord(node_id, f"127.0.0.1:{11300 + int(node_id[1:])}", shard,
                      peer_address="127.0.0.1:1", version="test", started=1.0)


async def next_view(views: trio.MemoryReceiveChannel[ClusterView],
                    done: Callable[[ClusterView], bool]) -> ClusterView:
    """The first view from `views` that satisfies `done` (callers bound it with a scope)."""
    async for view in views:
        if done(view):
            return view
    raise AssertionError("the view stream ended")


class CoordinatorContract:
    """The tests; a subclass provides the `harness` fixture."""

    async def test_registration_shows_in_snapshot_and_watch(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with harness.client() as coord, coord.open_session(2) as session:
                start = await coord.snapshot()
                assert start.nodes == {} and start.proxies == {} and start.shards == {}
                async with coord.watch(start.revision + 1) as stream:
                    await coord.register_node(session, node("n1"))
                    await coord.register_proxy(session, ProxyRecord("p1", "127.0.0.1:11211", "t"))
                    seen: set[str] = set()
                    async for batch in stream:
                        seen |= {e.entry.key for e in batch.events if e.kind == "put"}
                        if len(seen) == 2:
                            break
                ks = coord.keyspace
                assert seen == {ks.node("n1"), ks.proxy("p1")}
                view = await coord.snapshot()
                assert view.nodes == {"n1": node("n1")}
                assert view.proxies["p1"].address == "127.0.0.1:11211"
                assert view.lease_of(ks.node("n1")) == session.lease_id
                assert view.revision > start.revision

    async def test_follow_rebuilds_views(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with harness.client() as coord, coord.follow() as views:
                first = await views.receive()
                async with coord.open_session(2) as session:
                    await coord.register_node(session, node("n1"))
                    await coord.ensure_shard("s1", member="n1")
                    won = await coord.campaign(session, "s1", "n1", "127.0.0.1:11301")
                    assert won is not None
                    view = await next_view(views, lambda v: "s1" in v.shards
                                           and v.shards["s1"].leader is not None)
                    assert view.revision > first.revision
                    assert view.shards["s1"].epoch == won.epoch
                    assert view.shards["s1"].record == ShardRecord("s1", ("n1",))
                    assert view.nodes["n1"].address == "127.0.0.1:11301"
                # leaving revokes the lease: node and leader go at once
                view = await next_view(views, lambda v: not v.nodes)
                assert view.shards["s1"].leader is None
                assert view.shards["s1"].record is not None  # topology is persistent

    async def test_lease_expiry_removes_node_and_leader(self, harness: Harness) -> None:
        with trio.fail_after(15):
            async with harness.client() as coord:
                async with coord.open_session(1) as session:
                    assert session.ttl == 1
                    await coord.register_node(session, node("n1"))
                    assert await coord.campaign(session, "s1", "n1", "a") is not None
                    # the session stops renewing once lost; its keys must then expire
                    harness.freeze()
                    try:
                        await session.lost.wait()
                    finally:
                        harness.thaw()
                    start = trio.current_time()
                    with trio.move_on_after(session.ttl + harness.expiry_slack + 1.0):
                        while "n1" in (await coord.snapshot()).nodes:
                            await trio.sleep(0.05)
                    gone = trio.current_time() - start
                    view = await coord.snapshot()
                    assert "n1" not in view.nodes, "the node key outlived its lease"
                    assert view.shards["s1"].leader is None
                    assert view.shards["s1"].isr is not None  # the ISR is persistent
                    expired_after = trio.current_time() - session.renewed_at
                print(f"[{type(harness).__name__}] keys gone {gone:.2f}s after the session was "
                      f"lost (lease expired <= {expired_after:.2f}s after the last keepalive)")

    async def test_exactly_one_campaigner_wins(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with (harness.client() as coord, coord.open_session(2) as a,
                        coord.open_session(2) as b):
                results: dict[str, Leadership | None] = {}

                async def run(name: str, session: Session) -> None:
                    results[name] = await coord.campaign(session, "s1", name, f"addr-{name}")

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run, "n1", a)
                    nursery.start_soon(run, "n2", b)
                winners = [w for w in results.values() if w is not None]
                assert len(winners) == 1
                won = winners[0]
                view = await coord.snapshot()
                shard = view.shards["s1"]
                leader_entry = view.entries[coord.keyspace.leader("s1")]
                assert shard.epoch == won.epoch == leader_entry.create_revision
                assert leader_entry.mod_revision == won.epoch  # the put revision
                assert shard.leader is not None and shard.leader.node_id == won.node_id
                assert shard.leader.lease_id == won.lease_id == leader_entry.lease
                assert shard.isr is not None
                assert shard.isr.members == (Incarnation(won.node_id, won.lease_id),)

    async def test_not_in_isr_cannot_win(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with (harness.client() as coord, coord.open_session(2) as a,
                        coord.open_session(2) as b):
                first = await coord.campaign(a, "s1", "n1", "a1")
                assert first is not None
                assert await coord.resign(first)
                # the ISR still names only n1's incarnation
                assert await coord.campaign(b, "s1", "n2", "a2") is None
                view = await coord.snapshot()
                assert view.shards["s1"].leader is None
                # a new incarnation of n1 (new lease) is not in sync either
                async with coord.open_session(2) as a_again:
                    assert await coord.campaign(a_again, "s1", "n1", "a1") is None
                # an unclean election may take it, and resets the ISR to the winner
                unclean = await coord.campaign(b, "s1", "n2", "a2", unclean=True)
                assert unclean is not None and unclean.epoch > first.epoch
                isr = (await coord.snapshot()).shards["s1"].isr
                assert isr is not None and isr.members == (b.incarnation("n2"),)

    async def test_an_earlier_lease_of_the_same_process_wins_cleanly(self, harness: Harness
                                                                     ) -> None:
        """A process whose session was lost (etcd revoked its live lease) re-registers with a
        new lease; naming the old one (its store is the same) it wins without an unclean
        election, and the txn rewrites its ISR entry to the new lease, keeping the others."""
        with trio.fail_after(10):
            async with (harness.client() as coord, coord.open_session(2) as a,
                        coord.open_session(2) as b):
                first = await coord.campaign(a, "s1", "n1", "a1")
                assert first is not None
                await coord.update_isr(first, [a.incarnation("n1"), b.incarnation("n2")])
                assert await coord.resign(first)
                async with coord.open_session(2) as a_again:
                    assert await coord.campaign(a_again, "s1", "n1", "a1",
                                                earlier_leases=[b.lease_id]) is None  # not ours
                    won = await coord.campaign(a_again, "s1", "n1", "a1",
                                               earlier_leases=[a.lease_id])
                    assert won is not None and won.epoch > first.epoch
                    expected = tuple(sorted([a_again.incarnation("n1"), b.incarnation("n2")]))
                    assert won.isr == expected
                    isr = (await coord.snapshot()).shards["s1"].isr
                    assert isr is not None and isr.members == expected

    async def test_a_campaign_alone_leaves_the_isr_to_the_winner(self, harness: Harness
                                                                 ) -> None:
        """`alone` (a follower campaigning after revoking its dead leader's lease): the same
        clean election, and the txn makes the ISR the winner alone; out of the ISR, it
        still cannot win."""
        with trio.fail_after(10):
            async with (harness.client() as coord, coord.open_session(2) as a,
                        coord.open_session(2) as b, coord.open_session(2) as c):
                first = await coord.campaign(a, "s1", "n1", "a1")
                assert first is not None
                await coord.update_isr(first, [a.incarnation("n1"), b.incarnation("n2")])
                assert await coord.resign(first)
                assert await coord.campaign(c, "s1", "n3", "a3", alone=True) is None
                won = await coord.campaign(b, "s1", "n2", "a2", alone=True)
                assert won is not None and won.epoch > first.epoch
                assert won.isr == (b.incarnation("n2"),)
                view = await coord.snapshot()
                isr = view.shards["s1"].isr
                assert isr is not None and isr.members == (b.incarnation("n2"),)
                assert won.isr_revision == view.shards["s1"].isr_revision == won.epoch
                # the leader's next ISR write compares on that revision
                assert await coord.update_isr(won, [b.incarnation("n2")],
                                              expected_revision=won.isr_revision) > won.epoch

    async def test_an_isr_write_on_a_stale_revision_fails(self, harness: Harness) -> None:
        """A leader's ISR writes compare on the revision of its last one: a write that timed
        out and lands late (after a newer one) must not undo the newer."""
        with trio.fail_after(10):
            async with (harness.client() as coord, coord.open_session(2) as a,
                        coord.open_session(2) as b):
                won = await coord.campaign(a, "s1", "n1", "a1")
                assert won is not None and won.isr_revision > 0
                both = [a.incarnation("n1"), b.incarnation("n2")]
                first = await coord.update_isr(won, both, expected_revision=won.isr_revision)
                second = await coord.update_isr(won, both[:1], expected_revision=first)
                with pytest.raises(IsrMoved) as moved:  # the late one, sent before `second`
                    await coord.update_isr(won, both, expected_revision=first)
                assert moved.value.revision == second
                isr = (await coord.snapshot()).shards["s1"].isr
                assert isr is not None and isr.members == (a.incarnation("n1"),)
                assert await coord.resign(won)
                with pytest.raises(FencedOut):
                    await coord.update_isr(won, both, expected_revision=second)

    async def test_resign_lets_the_other_win_with_a_higher_epoch(self, harness: Harness
                                                                 ) -> None:
        with trio.fail_after(10):
            async with (harness.client() as coord, coord.open_session(2) as a,
                        coord.open_session(2) as b):
                first = await coord.campaign(a, "s1", "n1", "a1")
                assert first is not None
                assert await coord.campaign(b, "s1", "n2", "a2") is None  # n1 leads
                isr_rev = await coord.update_isr(first, [a.incarnation("n1"),
                                                         b.incarnation("n2")])
                view = await coord.snapshot()
                isr = view.shards["s1"].isr
                assert isr is not None and isr.node_ids == ("n1", "n2")
                assert isr.epoch == first.epoch and view.shards["s1"].isr_revision == isr_rev
                assert await coord.campaign(b, "s1", "n2", "a2") is None  # still n1's
                assert await coord.resign(first)
                assert not await coord.resign(first)  # already gone
                second = await coord.campaign(b, "s1", "n2", "a2")
                assert second is not None and second.epoch > first.epoch
                assert (await coord.snapshot()).shards["s1"].epoch == second.epoch

    async def test_update_isr_with_a_stale_epoch_is_fenced(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with (harness.client() as coord, coord.open_session(2) as a,
                        coord.open_session(2) as b):
                first = await coord.campaign(a, "s1", "n1", "a1")
                assert first is not None
                await coord.update_isr(first, [a.incarnation("n1"), b.incarnation("n2")])
                assert await coord.revoke(a.lease_id)  # n1 evicted
                second = await coord.campaign(b, "s1", "n2", "a2")
                assert second is not None
                with pytest.raises(FencedOut):
                    await coord.update_isr(first, [a.incarnation("n1")])
                assert not await coord.resign(first)  # a stale leader cannot delete the key
                isr = (await coord.snapshot()).shards["s1"].isr
                assert isr is not None and isr.node_ids == ("n1", "n2")
                assert (await coord.snapshot()).shards["s1"].epoch == second.epoch

    async def test_revoke_frees_the_leader_key_at_once(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with harness.client() as coord, coord.open_session(2) as a:
                await coord.register_node(a, node("n1"))
                won = await coord.campaign(a, "s1", "n1", "a1")
                assert won is not None
                view = await coord.snapshot()
                async with coord.watch(view.revision + 1) as stream:
                    start = trio.current_time()
                    assert await coord.revoke(a.lease_id)
                    revoked = trio.current_time() - start
                    async for batch in stream:
                        if any(e.kind == "delete" and e.entry.key == coord.keyspace.leader("s1")
                               for e in batch.events):
                            break
                    seen = trio.current_time() - start
                view = await coord.snapshot()
                assert view.shards["s1"].leader is None and "n1" not in view.nodes
                assert not await coord.revoke(a.lease_id)  # gone already
                with pytest.raises(LeaseNotFound):
                    await coord.register_node(a, node("n1"))
                print(f"[{type(harness).__name__}] revoke returned in {revoked * 1000:.1f} ms, "
                      f"watcher saw the leader key deleted after {seen * 1000:.1f} ms")
                assert seen < a.ttl / 2  # by the revocation, not by the lease's expiry

    async def test_watchdog_fires_before_the_lease_can_expire(self, harness: Harness) -> None:
        with trio.fail_after(10):
            # 2 s: a 1 s TTL gives each keepalive 0.15 s, and at load 20 a session was lost
            # before the freeze (a keepalive to the TLS etcd took longer)
            async with harness.client() as coord, coord.open_session(2) as session:
                granted_at = session.renewed_at
                with trio.fail_after(session.ttl):  # a keepalive succeeds (at ttl/3)
                    while session.renewed_at == granted_at:
                        await trio.sleep(0.05)
                assert session.is_valid()
                renewals_before = session.renewed_at
                frozen_at = trio.current_time()
                harness.freeze()
                try:
                    with trio.fail_after(session.ttl + 0.5):
                        await session.lost.wait()
                finally:
                    harness.thaw()
                assert not session.is_valid()
                assert session.renewed_at >= renewals_before
                expiry_earliest = session.renewed_at + session.ttl
                assert session.lost_at >= session.deadline
                assert session.lost_at < expiry_earliest, session.lost_reason
                print(f"[{type(harness).__name__}] ttl {session.ttl:g}s: lost "
                      f"{session.lost_at - frozen_at:.3f}s after the freeze, "
                      f"{expiry_earliest - session.lost_at:.3f}s before the store could "
                      "expire the lease")

    async def test_a_session_ended_by_an_unanswered_call_keeps_its_lease(
            self, harness: Harness) -> None:
        """A session block that ends with CoordinatorUnavailable (a call the store did not
        answer) does not revoke its lease: the next session resumes it, with the keys bound
        to it. Before: just after etcd restarted, a leader whose first call failed revoked
        its own lease and lost its leadership (test_etcd_outage's misses)."""
        with trio.fail_after(10):
            async with harness.client() as coord:
                with pytest.raises(CoordinatorUnavailable):
                    async with coord.open_session(5) as session:
                        raise CoordinatorUnavailable("a call the store did not answer")
                async with coord.open_session(5, resume=session.lease_id) as resumed:
                    assert resumed.lease_id == session.lease_id
                async with coord.open_session(5) as graceful:
                    pass
                async with coord.open_session(5, resume=graceful.lease_id) as fresh:
                    assert fresh.lease_id != graceful.lease_id  # a clean exit revokes

    async def test_linked_scope_is_cancelled_on_loss(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with harness.client() as coord, coord.open_session(1) as session:
                with trio.CancelScope() as scope:
                    session.cancel_on_loss(scope)
                    harness.freeze()
                    try:
                        await trio.sleep(5)
                    finally:
                        harness.thaw()
                assert scope.cancelled_caught and session.lost.is_set()

    async def test_unavailable_store_raises_within_the_timeout(self, harness: Harness) -> None:
        with trio.fail_after(15):
            # a session that outlives the four calls: a lost one makes the campaign return
            # None without asking the store (at load 12 the calls took 1.9 s, past a 2 s TTL)
            async with harness.client() as coord, coord.open_session(10) as session:
                harness.freeze()
                try:
                    for call in (coord.snapshot, coord.get_config,
                                 lambda: coord.register_node(session, node("n1")),
                                 lambda: coord.campaign(session, "s1", "n1", "a")):
                        stopwatch = Stopwatch()
                        with pytest.raises(CoordinatorUnavailable):
                            await call()
                        # its own waiting: one timeout, not two (a resend, the 1 s default);
                        # the machine's load (it kept calls 0.8 s late at load 25) taken off
                        assert stopwatch.elapsed_less_load() < CALL_TIMEOUT * 1.5, stopwatch
                finally:
                    harness.thaw()
                assert (await coord.snapshot()).revision > 0  # and back again

    async def test_config_and_topology(self, harness: Harness) -> None:
        with trio.fail_after(10):
            async with harness.client() as coord:
                assert await coord.get_config() is None
                config = ClusterConfig(hash="fnv1a_64", read_policy="round_robin",
                                       lease_ttl=1.0, min_insync=2, unclean_election="never")
                await coord.put_config(config)
                assert await coord.get_config() == config
                await coord.add_shard(ShardRecord("s2", ("n3", "n4"), weight=2))
                with pytest.raises(ShardExists):
                    await coord.add_shard(ShardRecord("s2"))
                created = await coord.ensure_shard("s1", member="n1")
                assert created == ShardRecord("s1", ("n1",))
                assert await coord.ensure_shard("s1", member="n2") == ShardRecord(
                    "s1", ("n1", "n2"))
                assert await coord.ensure_shard("s1", member="n1") == ShardRecord(
                    "s1", ("n1", "n2"))
                assert [s.shard_id for s in await coord.list_shards()] == ["s1", "s2"]
                async with coord.open_session(2) as session:
                    assert await coord.campaign(session, "s2", "n3", "a") is not None
                assert await coord.remove_shard("s2")
                assert not await coord.remove_shard("s2")
                view = await coord.snapshot()
                assert list(view.shards) == ["s1"]
                assert view.config == config
                assert Keyspace(harness.cluster).prefix == coord.keyspace.prefix
