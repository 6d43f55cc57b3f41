"""The leader's replication log: numbering, epochs, the bounded backlog, store capture."""

from __future__ import annotations

import pytest

from memring.backend.replication.mutation_log import ReplicationGap, ReplicationLog, StoreRecorder
from memring.backend.store import Store
from memring.protocol.replication import (
    Deletion,
    EpochStart,
    Flush,
    ItemState,
    Mutation,
    Position,
)

pytestmark = pytest.mark.unit


def state(key: bytes, value: bytes = b"v", cas: int = 1) -> ItemState:
    return ItemState(key, value, 0, 0, cas)


def test_seq_numbers_restart_per_epoch_after_an_epoch_start() -> None:
    log = ReplicationLog()
    assert log.begin_epoch(3) == Mutation(3, 0, EpochStart(Position(0, 0)))
    assert log.record(state(b"a")).position == (3, 1)
    assert log.record(Deletion(b"a")).position == (3, 2)
    assert log.begin_epoch(5) == Mutation(5, 0, EpochStart(Position(3, 2)))
    assert log.record(Flush()).position == (5, 1)
    assert log.newest == (5, 1) and log.oldest == (0, 0)


def test_record_needs_an_epoch_and_epochs_only_grow() -> None:
    log = ReplicationLog()
    with pytest.raises(ValueError):
        log.record(state(b"a"))
    log.begin_epoch(2)
    with pytest.raises(ValueError):
        log.begin_epoch(2)
    with pytest.raises(ValueError):
        log.record(EpochStart(Position(0, 0)))


def test_since_answers_the_tail_or_none() -> None:
    log = ReplicationLog()
    log.begin_epoch(1)
    recorded = [log.record(state(b"k%d" % i)) for i in range(5)]
    assert log.since(Position(1, 5)) == []
    assert log.since(Position(1, 2)) == recorded[2:]
    assert log.since(Position(1, 2), limit=2) == recorded[2:4]
    assert log.since(Position(0, 0)) == [Mutation(1, 0, EpochStart(Position(0, 0))),
                                         *recorded]
    assert log.since(Position(1, 9)) is None  # ahead of the leader: never held
    assert log.since(Position(0, 7)) is None


def test_since_counts_from_the_end_as_a_search_would() -> None:
    """Positions of the newest epoch are found counted from the end; every other one by a
    search: both answer as a scan of the backlog does, trimmed or not."""
    log = ReplicationLog(max_count=40)
    for epoch in (2, 3, 7):
        log.begin_epoch(epoch)
        for i in range(25):
            log.record(state(b"k%d" % i))
    held = list(log)
    assert len(held) == 40 and log.oldest == Position(3, 11)
    for epoch in (0, 2, 3, 6, 7, 8):
        for seq in range(-2, 30):
            position = Position(epoch, seq)
            at = [i for i, m in enumerate(held) if m.position == position]
            expected = held[at[0] + 1:] if at else ([*held] if position == log.oldest else None)
            assert log.since(position) == expected, position


def test_a_follower_ahead_of_a_new_leader_in_an_old_epoch_needs_a_snapshot() -> None:
    log = ReplicationLog()
    log.begin_epoch(3)
    for i in range(3):
        log.record(state(b"k%d" % i))
    log.begin_epoch(4)
    log.record(state(b"x"))
    assert [m.position for m in log.since(Position(3, 3)) or []] == [(4, 0), (4, 1)]
    assert log.since(Position(3, 5)) is None  # writes the new leader never saw


def test_backlog_is_bounded_by_count() -> None:
    log = ReplicationLog(max_count=3)
    log.begin_epoch(1)
    for i in range(10):
        log.record(state(b"k%d" % i))
    assert len(log) == 3
    assert log.oldest == (1, 7) and log.newest == (1, 10)
    assert [m.seq for m in log.since(Position(1, 7)) or []] == [8, 9, 10]
    assert log.since(Position(1, 6)) is None
    assert log.covers(Position(1, 7)) and not log.covers(Position(1, 6))


def test_backlog_is_bounded_by_bytes() -> None:
    log = ReplicationLog(max_bytes=10_000)
    log.begin_epoch(1)
    for i in range(100):
        log.record(state(b"k%d" % i, b"x" * 1000))
    assert log.bytes <= 10_000
    assert 0 < len(log) < 10
    assert log.since(log.oldest) is not None
    log.record(state(b"huge", b"x" * 20_000))  # bigger than the whole backlog
    assert len(log) == 0 and log.oldest == log.newest == (1, 101)
    assert log.since(Position(1, 101)) == []


def test_append_mirrors_a_stream_and_refuses_gaps() -> None:
    leader = ReplicationLog()
    mirror = ReplicationLog()
    for mutation in [leader.begin_epoch(2), leader.record(state(b"a")),
                     leader.record(Deletion(b"a"))]:
        mirror.append(mutation)
    assert list(mirror) == list(leader)
    with pytest.raises(ReplicationGap):
        mirror.append(Mutation(2, 5, Deletion(b"a")))
    with pytest.raises(ReplicationGap):
        mirror.append(Mutation(3, 0, EpochStart(Position(2, 1))))
    mirror.append(Mutation(3, 0, EpochStart(Position(2, 2))))
    mirror.reset(Position(7, 7))
    assert len(mirror) == 0 and mirror.since(Position(7, 7)) == []


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_recorder_captures_client_changes_but_not_expiry_or_eviction() -> None:
    clock = Clock()
    store = Store(memory_limit=4096, clock=clock)
    log = ReplicationLog()
    log.begin_epoch(1)
    recorder = StoreRecorder(store, log)
    recorder.attach()
    store.store(b"set", b"a", b"1", 3, 10)
    store.store(b"add", b"a", b"2", 0, 0)  # not stored: nothing to record
    store.arithmetic(b"a", True, 4)
    store.touch(b"a", 100)
    changes = [m.change for m in recorder.commit()]
    a = store.item(b"a")
    assert a is not None
    assert changes == [ItemState(b"a", b"5", 3, a.expires, a.cas, a.updated)]
    store.delete(b"a")
    store.flush_all(60)
    store.flush_all()
    assert [m.change for m in recorder.commit()] == [
        Deletion(b"a"), Flush(int(clock.now) + 59), Flush(0)]
    store.store(b"set", b"t", b"x", 0, 1)
    recorder.commit()
    clock.now += 5
    assert store.get(b"t") is None  # expired locally
    recorded = []
    for i in range(100):  # evictions stay local; the wiring commits after each command
        store.store(b"set", b"e%d" % i, b"x" * 100, 0, 0)
        recorded += recorder.commit()
    assert store.stats.evictions > 0
    assert [m.change.key for m in recorded if isinstance(m.change, ItemState)] == [
        b"e%d" % i for i in range(100)]
    assert len(recorded) == 100
    recorder.detach()
    store.store(b"set", b"z", b"1", 0, 0)
    assert recorder.commit() == []


def test_store_without_a_recorder_behaves_as_before() -> None:
    store = Store()
    assert store.on_change is None
    store.store(b"set", b"a", b"1", 0, 0)
    store.flush_all()
    assert store.last_cas == 2
