"""A follower applying a leader's replication stream ends up with the leader's items.

The leader runs real commands (parser and CommandHandler) on a store whose changes a
StoreRecorder feeds into a ReplicationLog, committed after each command as the server will;
every mutation crosses the wire codec before the follower applies it.
"""

from __future__ import annotations

from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.backend.commands import CommandHandler
from memring.backend.replication.follower_apply import FollowerState, ReplicationRejected
from memring.backend.replication.mutation_log import ReplicationLog, StoreRecorder
from memring.backend.replication.snapshot import StoreSnapshot
from memring.backend.settings import BackendSettings
from memring.backend.stats import ServerCounters, StatsReport
from memring.backend.store import Store
from memring.protocol import request_parser
from memring.protocol.replication import (
    NEED_DATA,
    Deletion,
    ErrorCode,
    ItemState,
    Message,
    Mutation,
    Position,
    ReplicationParser,
    SnapshotBegin,
    SnapshotEnd,
    SnapshotItem,
    encode,
)
from memring.protocol.requests import MetaArithmetic, MetaDelete, MetaGet, MetaSet

pytestmark = pytest.mark.unit

_META = (MetaGet, MetaSet, MetaDelete, MetaArithmetic)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def new_store(clock: Clock) -> Store:
    return Store(memory_limit=64 << 20, max_item_size=1 << 20, clock=clock)


class Leader:
    def __init__(self, clock: Clock, epoch: int = 1, max_count: int = 1_000_000,
                 store: Store | None = None, log: ReplicationLog | None = None) -> None:
        self.store = store or new_store(clock)
        self.log = log or ReplicationLog(max_count=max_count)
        if log is None:
            self.log.begin_epoch(epoch)
        self.recorder = StoreRecorder(self.store, self.log)
        self.recorder.attach()
        self.handler = CommandHandler(
            self.store, StatsReport(BackendSettings(), self.store, ServerCounters()))

    def run(self, wire: bytes) -> bytes:
        parser = request_parser.RequestParser(max_line=4096, max_item_size=1 << 20)
        parser.receive_data(wire)
        out: list[bytes] = []
        for _ in range(100):
            event = parser.next_event()
            if event is request_parser.NEED_DATA:
                break
            self.handler.handle(event, out)
            if isinstance(event, _META):
                # In-place meta changes (mg T, md I, ma E) are noted by the wiring.
                self.recorder.note(event.key)
            self.recorder.commit()
        return b"".join(out)


def over_the_wire(messages: list[Message]) -> list[Message]:
    parser = ReplicationParser()
    parser.receive_data(b"".join(encode(m) for m in messages))
    received: list[Message] = []
    for _ in range(len(messages) + 1):
        event = parser.next_event()
        if event is NEED_DATA:
            break
        assert not isinstance(event, type(NEED_DATA))
        assert isinstance(event, get_args(Message))
        received.append(event)
    assert received == messages
    return received


def replicate(follower: FollowerState, mutations: list[Mutation]) -> Position:
    for message in over_the_wire(list(mutations)):
        assert isinstance(message, Mutation)
        follower.apply(message)
    return follower.position


def live(store: Store) -> dict[bytes, tuple[bytes, int, int, int, bool]]:
    now = store.now()
    held = {}
    for key, item in store.each_item():
        if item.expires and item.expires <= now:
            continue
        if store.flush_before and store.flush_before <= now and (
                item.updated <= store.flush_before):
            continue
        held[key] = (item.value, item.flags, item.expires, item.cas, item.stale)
    return held


KEYS = [b"a", b"b", b"c", b"n"]
commands = st.one_of(
    st.builds(lambda c, k, f, t, v: b"%s %s %d %d %d\r\n%s\r\n" % (c, k, f, t, len(v), v),
              st.sampled_from([b"set", b"add", b"replace", b"append", b"prepend"]),
              st.sampled_from(KEYS), st.integers(0, 3), st.sampled_from([0, 0, 2, 100]),
              st.sampled_from([b"1", b"17", b"x", b"hello"])),
    st.builds(lambda k, c: b"cas %s 0 0 1 %d\r\nC\r\n" % (k, c), st.sampled_from(KEYS),
              st.integers(0, 30)),
    st.builds(lambda c, k, d: b"%s %s %d\r\n" % (c, k, d), st.sampled_from([b"incr", b"decr"]),
              st.sampled_from(KEYS), st.integers(0, 20)),
    st.builds(lambda k: b"delete %s\r\n" % k, st.sampled_from(KEYS)),
    st.builds(lambda k, t: b"touch %s %d\r\n" % (k, t), st.sampled_from(KEYS),
              st.sampled_from([0, 1, 50])),
    st.builds(lambda k: b"gat 30 %s\r\n" % k, st.sampled_from(KEYS)),
    st.sampled_from([b"flush_all\r\n", b"flush_all 2\r\n"]),
    st.builds(lambda k, f: b"ms %s 2 %s\r\nms\r\n" % (k, f), st.sampled_from(KEYS),
              st.sampled_from([b"T10 F5", b"MA", b"ME", b"MA N30", b"I C1", b"b"])),
    st.builds(lambda k, f: b"md %s %s\r\n" % (k, f), st.sampled_from(KEYS),
              st.sampled_from([b"", b"q", b"I T30", b"x", b"C3"])),
    st.builds(lambda k, f: b"mg %s %s\r\n" % (k, f), st.sampled_from(KEYS),
              st.sampled_from([b"T40 v", b"N20 v c", b"s"])),
    st.builds(lambda k, f: b"ma %s %s\r\n" % (k, f), st.sampled_from(KEYS),
              st.sampled_from([b"", b"N0 J7", b"MD D2", b"E999 v"])),
    st.builds(lambda s: b"tick %d" % s, st.integers(1, 3)),
)


def drive(leader: Leader, clock: Clock, script: list[bytes]) -> None:
    for command in script:
        if command.startswith(b"tick"):
            clock.now += int(command.split()[1])
        else:
            leader.run(command)


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=40))
def test_follower_holds_the_leaders_items_after_any_mix(script: list[bytes]) -> None:
    clock = Clock()
    leader = Leader(clock)
    follower = FollowerState(new_store(clock))
    replicate(follower, leader.log.since(Position(0, 0)) or [])
    for command in script:
        before = leader.log.newest
        drive(leader, clock, [command])
        replicate(follower, leader.log.since(before) or [])
        assert live(follower.store) == live(leader.store)
    assert follower.position == leader.log.newest
    assert follower.store.last_cas >= max((i.cas for i in (i for _, i in leader.store.each_item())),
                                          default=0)


@settings(max_examples=50, deadline=None)
@given(st.lists(commands, max_size=40), st.lists(commands, max_size=20))
def test_late_follower_catches_up_from_the_backlog(first: list[bytes], then: list[bytes]
                                                   ) -> None:
    clock = Clock()
    leader = Leader(clock)
    drive(leader, clock, first)
    follower = FollowerState(new_store(clock))
    replicate(follower, leader.log.since(follower.position) or [])
    drive(leader, clock, then)
    replicate(follower, leader.log.since(follower.position) or [])
    assert live(follower.store) == live(leader.store)


def snapshot_catch_up(leader: Leader, clock: Clock, follower: FollowerState,
                      during: list[bytes]) -> None:
    snapshot = StoreSnapshot(leader.store, leader.log.newest, chunk_items=2)
    writes = iter(during)
    messages: list[Message] = [snapshot.begin()]
    for chunk in snapshot:
        messages += [SnapshotItem(state) for state in chunk]
        drive(leader, clock, [next(writes, b"tick 0")])  # writes go on between chunks
    drive(leader, clock, list(writes))
    messages.append(snapshot.end())
    for message in over_the_wire(messages):
        if isinstance(message, SnapshotBegin):
            follower.begin_snapshot(message)
        elif isinstance(message, SnapshotItem):
            follower.install(message.state)
        else:
            assert isinstance(message, SnapshotEnd)
            assert follower.end_snapshot(message) == snapshot.position
    tail = leader.log.since(snapshot.position)
    assert tail is not None
    replicate(follower, tail)


@settings(max_examples=60, deadline=None)
@given(st.lists(commands, min_size=30, max_size=60), st.lists(commands, max_size=30))
def test_follower_past_the_backlog_takes_a_snapshot_then_the_tail(
        first: list[bytes], during: list[bytes]) -> None:
    clock = Clock()
    leader = Leader(clock, max_count=40)
    for i in range(45):  # enough to push the origin out of the backlog
        leader.run(b"set k%d 0 0 1\r\n%d\r\n" % (i, i % 10))
    drive(leader, clock, first)
    follower = FollowerState(new_store(clock))
    follower.store.install(ItemState(b"leftover", b"x", 0, 0, 1))
    assert leader.log.since(follower.position) is None
    snapshot_catch_up(leader, clock, follower, during)
    assert live(follower.store) == live(leader.store)
    assert follower.position == leader.log.newest


def test_snapshot_while_writes_change_every_kind_of_key() -> None:
    clock = Clock()
    leader = Leader(clock)
    for i in range(20):
        leader.run(b"set k%d 0 0 1\r\n%d\r\n" % (i, i % 10))
    follower = FollowerState(new_store(clock))
    during = [b"delete k0\r\n", b"set k19 0 0 2\r\nzz\r\n", b"set new 0 0 1\r\nn\r\n",
              b"incr k5 10\r\n", b"flush_all\r\n", b"set after 0 0 1\r\na\r\n",
              b"touch k3 10\r\n"]
    snapshot_catch_up(leader, clock, follower, during)
    after = leader.store.item(b"after")
    assert after is not None
    assert live(follower.store) == live(leader.store) == {
        b"after": (b"a", 0, 0, after.cas, False)}


def test_an_older_epoch_and_a_gap_are_rejected() -> None:
    follower = FollowerState(new_store(Clock()))
    old = ReplicationLog()
    old.begin_epoch(1)
    replicate(follower, old.since(Position(0, 0)) or [])
    new = ReplicationLog()
    new.begin_epoch(1)
    new.reset(old.newest)
    replicate(follower, [new.begin_epoch(2)])
    with pytest.raises(ReplicationRejected) as stale:
        follower.apply(old.record(Deletion(b"a")))  # the deposed leader writes on
    assert stale.value.error.code is ErrorCode.STALE_EPOCH
    assert stale.value.error.epoch == 2
    new.record(Deletion(b"a"))
    with pytest.raises(ReplicationRejected) as gap:
        follower.apply(new.record(Deletion(b"b")))  # (2, 2) after (2, 0)
    assert gap.value.error.code is ErrorCode.GAP
    assert follower.position == (2, 0)
    with pytest.raises(ReplicationRejected):
        follower.begin_snapshot(SnapshotBegin(Position(1, 9)))


def test_cas_values_survive_and_stay_unique_after_failover() -> None:
    clock = Clock()
    leader = Leader(clock)
    mirror = ReplicationLog()
    follower = FollowerState(new_store(clock), log=mirror)
    lagging = FollowerState(new_store(clock))
    for i in range(30):
        leader.run(b"set k%d 0 0 1\r\n%d\r\n" % (i, i % 10))
        leader.run(b"incr k%d 1\r\nmd k%d I\r\n" % (i, i) if i % 3 == 0 else b"")
    leader.run(b"ma k1 E5000\r\n")
    replicate(follower, leader.log.since(Position(0, 0)) or [])
    replicate(lagging, (leader.log.since(Position(0, 0)) or [])[:10])
    gets = leader.run(b"gets k2\r\n")
    cas = int(gets.split(b"\r\n")[0].split()[-1])
    replicated = {item.cas for item in (i for _, i in follower.store.each_item())}

    # The follower becomes the leader of epoch 2.
    promoted = Leader(clock, store=follower.store, log=mirror)
    mirror.begin_epoch(2)
    assert promoted.run(b"cas k2 0 0 1 %d\r\nY\r\n" % cas) == b"STORED\r\n"
    for i in range(30):
        promoted.run(b"set k%d 0 0 1\r\nn\r\n" % i)
    fresh = [item.cas for item in (i for _, i in promoted.store.each_item())]
    assert min(fresh) > max(replicated) >= 5000
    assert len(set(fresh)) == len(fresh)
    # The follower that lagged resumes from the new leader's backlog across the epochs.
    replicate(lagging, mirror.since(lagging.position) or [])
    assert live(lagging.store) == live(promoted.store)
    with pytest.raises(ReplicationRejected):
        lagging.apply(leader.log.record(Deletion(b"k1")))
