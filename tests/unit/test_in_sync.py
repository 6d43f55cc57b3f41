"""InSyncReplicas without sockets or etcd: which writes wait for whom, when the ISR shrinks
and grows, and what is written to etcd in which order (the invariant that makes a failover
lose nothing: an etcd ISR member is never left out of the waiting set)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from memring.backend.replication.in_sync import InSyncReplicas
from memring.cluster.coordinator import CoordinatorUnavailable, Incarnation, IsrMoved
from memring.protocol.replication import ORIGIN, Position

pytestmark = pytest.mark.unit

ME = Incarnation("n1", 1)
N2 = Incarnation("n2", 2)
N3 = Incarnation("n3", 3)


class EtcdIsr:
    """Records ISR writes; fails them while `down`."""

    def __init__(self) -> None:
        self.writes: list[set[Incarnation]] = []
        self.down = False

    async def __call__(self, members: set[Incarnation]) -> object:
        await trio.sleep(0)
        if self.down:
            raise CoordinatorUnavailable("etcd is down")
        self.writes.append(set(members))
        return len(self.writes)


def leader(elected_with: set[Incarnation], **kw: object) -> InSyncReplicas:
    insync = InSyncReplicas(max_lag=0.5, max_lag_bytes=1 << 20, **kw)  # type: ignore[arg-type]
    insync.newest = insync.watermark = Position(5, 0)
    insync.start(elected_with, ME)
    return insync


@asynccontextmanager
async def waiting_write(insync: InSyncReplicas, position: Position) -> AsyncIterator[list[bool]]:
    """A sync write of `position` waiting in a task once the block starts; the list holds
    its outcome once released (the block ends when it is)."""
    done: list[bool] = []

    async def write() -> None:
        done.append(await insync.replicated(position))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write)
        await trio.testing.wait_all_tasks_blocked()
        yield done


async def test_a_write_waits_for_every_in_sync_follower() -> None:
    insync = leader({ME, N2, N3})
    n2, n3 = (insync.connected(node, Position(5, 0), snapshotting=False) for node in (N2, N3))
    insync.committed(Position(5, 1), 100)
    async with waiting_write(insync, Position(5, 1)) as done:
        insync.acked(n2, Position(5, 1))
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # n3 has not acknowledged
        insync.acked(n3, Position(5, 1))
    assert done == [True]
    assert insync.lag(Position(5, 0))[0] == 1 and insync.lag(Position(5, 1)) == (0, 0.0, 0)


async def test_a_dead_follower_leaves_etcd_first_then_writes_stop_waiting() -> None:
    etcd = EtcdIsr()
    insync = leader({ME, N2, N3})
    n2 = insync.connected(N2, Position(5, 0), snapshotting=False)  # n3 never reconnects
    insync.committed(Position(5, 1), 10)
    insync.acked(n2, Position(5, 1))
    async with waiting_write(insync, Position(5, 1)) as results:
        assert results == []  # n3 is in the etcd ISR: the write must wait for it
        etcd.down = True
        await insync._check(ME, etcd)
        assert results == [] and "n3" in insync.waiting  # etcd unreachable: still waiting
        etcd.down = False
        await insync._check(ME, etcd)
    assert etcd.writes == [{ME, N2}]
    assert results == [True] and "n3" not in insync.waiting
    assert insync.shrinks == 1


async def test_a_caught_up_follower_is_waited_for_before_it_enters_etcd() -> None:
    etcd = EtcdIsr()
    insync = leader({ME})
    insync.committed(Position(5, 1), 10)
    n2 = insync.connected(N2, Position(5, 0), snapshotting=False)  # close behind
    await insync._check(ME, etcd)
    assert "n2" in insync.waiting and etcd.writes == []  # waited for, not in etcd yet
    insync.acked(n2, Position(5, 1))
    await insync._check(ME, etcd)
    assert etcd.writes == [{ME, N2}] and insync.expansions == 1
    assert insync.committed_isr == {ME, N2}


async def test_a_snapshotting_or_lagging_follower_is_not_added() -> None:
    etcd = EtcdIsr()
    insync = leader({ME})
    insync.connected(N2, Position(0, 0), snapshotting=True)
    insync.committed(Position(5, 1), 2 << 20)  # more bytes than the bound
    insync.connected(N3, Position(5, 0), snapshotting=False)
    await insync._check(ME, etcd)
    assert insync.waiting == {} and etcd.writes == []


async def test_stepping_down_or_a_lost_lease_acknowledges_nothing() -> None:
    valid = [True]
    insync = leader({ME, N2}, lease_valid=lambda: valid[0])
    n2 = insync.connected(N2, Position(5, 0), snapshotting=False)
    insync.committed(Position(5, 1), 10)
    insync.committed(Position(5, 2), 10)
    results: list[bool] = []

    async def write(target: Position) -> None:
        results.append(await insync.replicated(target))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, Position(5, 1))
        nursery.start_soon(write, Position(5, 2))
        await trio.testing.wait_all_tasks_blocked()
        valid[0] = False  # the lease ran out before the follower acknowledged
        insync.acked(n2, Position(5, 1))
        await trio.testing.wait_all_tasks_blocked()
        insync.fail_all()  # then the node stepped down
    assert results == [False, False]


async def test_a_follower_with_a_new_lease_replaces_its_old_incarnation() -> None:
    """Issue 12: a follower that lost its session says HELLO again with a new lease over a new
    connection; the old incarnation leaves etcd first, the new one joins once caught up, and
    the old one is never written back (it is no longer the node's current incarnation)."""
    etcd = EtcdIsr()
    n2_new = Incarnation("n2", 22)
    live = {"n1": 1, "n2": 2}

    def current(incarnation: Incarnation) -> bool:
        return live.get(incarnation.node_id) == incarnation.lease_id

    insync = InSyncReplicas(max_lag=0.5, max_lag_bytes=1 << 20, current=current)
    insync.newest = insync.watermark = Position(5, 0)
    insync.start({ME, N2}, ME)
    insync.connected(N2, Position(5, 0), snapshotting=False)
    await insync._check(ME, etcd)
    assert etcd.writes == [] and insync.waiting == {"n2": N2}

    live["n2"] = 22  # new session; the old connection still stands, naming lease 2
    await insync._check(ME, etcd)
    assert etcd.writes == [{ME}] and insync.waiting == {}  # the old lease: dropped, etcd first
    await insync._check(ME, etcd)
    assert etcd.writes == [{ME}]  # never written back

    insync.committed(Position(5, 1), 10)
    n2 = insync.connected(n2_new, Position(5, 0), snapshotting=False)  # HELLO, new lease
    await insync._check(ME, etcd)
    assert insync.waiting == {"n2": n2_new} and etcd.writes == [{ME}]  # waited for first
    insync.acked(n2, Position(5, 1))
    await insync._check(ME, etcd)
    assert etcd.writes == [{ME}, {ME, n2_new}] and insync.committed_isr == {ME, n2_new}


async def test_a_hello_naming_a_lease_that_is_not_current_is_never_added() -> None:
    etcd = EtcdIsr()
    insync = InSyncReplicas(max_lag=0.5, max_lag_bytes=1 << 20,
                            current=lambda incarnation: incarnation.lease_id != 2)
    insync.newest = insync.watermark = Position(5, 0)
    insync.start({ME}, ME)
    insync.connected(N2, Position(5, 0), snapshotting=False)  # an old connection's HELLO
    await insync._check(ME, etcd)
    await insync._check(ME, etcd)
    assert insync.waiting == {} and etcd.writes == []


async def test_acks_move_only_their_own_connection_and_a_newer_connection_supersedes() -> None:
    """Issue 12: a second connection under the follower's node id (an impostor with the
    public lease, or the follower itself over a half-open connection) supersedes the first,
    which is hung up; acks read on a superseded connection move nothing, and its end does
    not remove the newer link. Before, links and acks were keyed by node id: the real
    follower's acks moved the impostor's link, and the impostor's leaving removed the only
    link, leaving the still-connected follower out of the ISR until it reconnected."""
    etcd = EtcdIsr()
    insync = leader({ME, N2})
    hung_up: list[str] = []
    real = insync.connected(N2, Position(5, 0), snapshotting=False,
                            hang_up=lambda: hung_up.append("real"))
    insync.committed(Position(5, 1), 10)
    impostor = insync.connected(N2, Position(5, 0), snapshotting=False,
                                hang_up=lambda: hung_up.append("impostor"))
    assert hung_up == ["real"] and insync.links["n2"] is impostor
    insync.acked(real, Position(5, 1))  # the real follower's ack, read before it was closed
    assert insync.watermark == Position(5, 0) and impostor.acked == Position(5, 0)
    insync.disconnected(real)  # the superseded connection ends: the newer link stays
    assert insync.links["n2"] is impostor

    again = insync.connected(N2, Position(5, 0), snapshotting=False)  # the follower is back
    assert hung_up == ["real", "impostor"]
    insync.acked(impostor, Position(5, 1))  # nothing: it no longer stands for n2
    insync.disconnected(impostor)
    assert insync.links == {"n2": again} and insync.watermark == Position(5, 0)
    insync.acked(again, Position(5, 1))
    assert insync.watermark == Position(5, 1)
    await insync._check(ME, etcd)
    assert etcd.writes == [] and insync.waiting == {"n2": N2}  # never dropped


async def test_the_keeper_sleeps_while_settled_and_a_write_wakes_it() -> None:
    checks: list[Incarnation] = []

    def current(incarnation: Incarnation) -> bool:
        checks.append(incarnation)  # every check asks it of every follower
        return True

    etcd = EtcdIsr()
    insync = leader({ME, N2}, current=current)
    insync.max_lag = 0.2
    insync.connected(N2, Position(5, 0), snapshotting=False)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(insync.keep, ME, etcd)
            await trio.sleep(0.1)
            checks.clear()
            await trio.sleep(0.5)  # 25 checks at CHECK_INTERVAL; settled: none
            assert checks == []
            insync.committed(Position(5, 1), 10)  # n2 never acknowledges it
            woken = trio.current_time()
            while "n2" in insync.waiting:
                await trio.sleep(0.01)
            assert trio.current_time() - woken < 0.5  # dropped at max_lag, not QUIET_INTERVAL
            assert etcd.writes[-1] == {ME}
            nursery.cancel_scope.cancel()


async def test_a_superseded_follower_back_at_the_newest_write_releases_it_at_hello() -> None:
    """The 10 s stall (test_peer_impostors, [right], 1 CI run in 5): an impostor with the
    follower's id and lease superseded the follower's connection while the follower's ACK of
    the newest write was on its way; that ack counted for nothing, the follower came back
    with HELLO at that write and, holding it, acked nothing more until the next write, which
    the client waiting for this one never sends. HELLO's position is its ack."""
    insync = leader({ME, N2})
    real = insync.connected(N2, Position(5, 0), snapshotting=False)
    insync.committed(Position(5, 1), 10)
    with trio.fail_after(5):
        async with waiting_write(insync, Position(5, 1)) as done:
            impostor = insync.connected(N2, ORIGIN, snapshotting=False)
            insync.acked(real, Position(5, 1))  # read after the impostor superseded it
            await trio.testing.wait_all_tasks_blocked()
            assert done == [] and insync.watermark == Position(5, 0)  # the impostor holds none
            insync.connected(N2, Position(5, 1), snapshotting=False)  # back, holding it
            insync.disconnected(impostor)
    assert done == [True] and insync.watermark == Position(5, 1)


async def test_a_hello_past_the_newest_write_acknowledges_nothing_unwritten() -> None:
    """A HELLO's position counts as its ack, but no further than what this leader wrote: a
    peer claiming more (a lie, or a position of another history) releases nothing later."""
    insync = leader({ME, N2})
    link = insync.connected(N2, Position(5, 9), snapshotting=False)
    assert link.acked == Position(5, 0) and insync.watermark == Position(5, 0)
    insync.committed(Position(5, 1), 10)
    async with waiting_write(insync, Position(5, 1)) as done:
        assert done == []  # n2 has not acknowledged (5, 1)
        insync.acked(link, Position(5, 1))
    assert done == [True]


async def test_a_follower_dropped_before_it_joined_etcd_releases_the_writes_it_held() -> None:
    """A follower waited for but not yet in etcd's ISR that goes (or lags) leaves `waiting`
    locally, with no etcd write; the writes that waited for it alone go out at once, not
    when some later ack happens to advance the watermark."""
    etcd = EtcdIsr()
    insync = leader({ME})
    insync.committed(Position(5, 1), 10)
    n2 = insync.connected(N2, Position(5, 0), snapshotting=False)
    await insync._check(ME, etcd)
    assert insync.waiting == {"n2": N2} and insync.adding == {"n2": Position(5, 1)}
    insync.committed(Position(5, 2), 10)
    with trio.fail_after(5):
        async with waiting_write(insync, Position(5, 2)) as done:
            assert done == []  # it waits for n2
            insync.disconnected(n2)
            await insync._check(ME, etcd)
    assert done == [True] and insync.waiting == {} and etcd.writes == []


async def test_a_follower_added_by_a_write_that_landed_late_leaves_etcd_first() -> None:
    """IsrMoved: the write that added a follower timed out but landed, so etcd may name it
    though it is still `adding`, until the rewrite commits. Dropping it meanwhile goes
    through etcd like any member's drop (never locally only), and the writes keep waiting
    for it until that commits."""
    insync = leader({ME})
    insync.committed(Position(5, 1), 10)
    n2 = insync.connected(N2, Position(5, 0), snapshotting=False)
    writes: list[set[Incarnation]] = []
    failures: list[Exception] = [IsrMoved("our late write landed", 7),
                                 CoordinatorUnavailable("etcd is slow")]
    done: list[bool] = []
    released_before: list[bool] = []  # at each etcd write: was the write released already

    async def etcd(members: set[Incarnation]) -> object:
        await trio.sleep(0)
        writes.append(set(members))
        released_before.append(bool(done))
        if failures:
            raise failures.pop(0)
        return len(writes)

    await insync._check(ME, etcd)
    insync.acked(n2, Position(5, 1))
    await insync._check(ME, etcd)  # the add lands late (IsrMoved), the rewrite fails
    assert writes == [{ME, N2}, {ME}] and insync.adding == {"n2": Position(5, 1)}
    assert insync._rewrite  # etcd may hold n2
    insync.committed(Position(5, 2), 10)

    async def write() -> None:
        done.append(await insync.replicated(Position(5, 2)))

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            insync.disconnected(n2)
            await trio.testing.wait_all_tasks_blocked()
            assert done == []
            await insync._check(ME, etcd)  # the drop is written to etcd before the release
    # released only once a write without n2 committed (the third), not before it
    assert writes == [{ME, N2}, {ME}, {ME}] and released_before == [False, False, False]
    assert done == [True] and insync.waiting == {} and insync.adding == {}
