"""A follower applying the leader's replication stream to its store, strictly in order.

Theory of operation: the follower's position is the (epoch, seq) of the last mutation it
applied. A mutation is applied only if it directly follows that position (the next seq in
the same epoch, or a new epoch's EpochStart naming exactly this position); anything else is
a gap and the connection must restart from a position the leader can serve. A message from
an epoch older than the newest this follower has seen comes from a deposed leader and is
refused, which is what fences a leader that was frozen past its lease.

Applying installs the leader's item state verbatim (value, flags, absolute expiry, CAS) with
`Store.install`, which keeps `last_cas` at or above every replicated CAS: after a failover
this node draws CAS values no replica has handed out.

A snapshot replaces the store: SNAPSHOT_BEGIN empties it, each item is installed, and
SNAPSHOT_END moves the position to the snapshot's starting position; the leader then sends
the mutations after that position (see `snapshot` for why that converges).
"""

from __future__ import annotations

from memring.backend.replication.mutation_log import ReplicationLog
from memring.backend.store import Store
from memring.protocol.replication import (
    ORIGIN,
    Deletion,
    EpochStart,
    Error,
    ErrorCode,
    Flush,
    ItemState,
    Mutation,
    Position,
    SnapshotBegin,
    SnapshotEnd,
)


class ReplicationRejected(Exception):
    """A message the follower refuses; `error` is the ERROR frame to send before closing."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code.name}: {error.message}")
        self.error = error


class FollowerState:
    def __init__(self, store: Store, position: Position = ORIGIN,
                 log: ReplicationLog | None = None) -> None:
        self.store = store
        self.position = position
        self.newest_epoch = position.epoch
        # Mirror of the applied stream, so this node can serve followers once promoted.
        self.log = log
        self._snapshot: SnapshotBegin | None = None
        self._snapshot_count = 0

    @property
    def in_snapshot(self) -> bool:
        return self._snapshot is not None

    def observe_epoch(self, epoch: int) -> None:
        """Refuse an epoch older than the newest seen; remember a newer one."""
        if epoch < self.newest_epoch:
            raise ReplicationRejected(Error(
                ErrorCode.STALE_EPOCH, self.newest_epoch,
                f"epoch {epoch} is older than {self.newest_epoch}"))
        self.newest_epoch = epoch

    def _gap(self, what: object) -> ReplicationRejected:
        return ReplicationRejected(Error(
            ErrorCode.GAP, self.newest_epoch, f"{what} does not follow {tuple(self.position)}"))

    def apply(self, mutation: Mutation) -> Position:
        """Apply the next mutation; returns the new position (what to ACK)."""
        self.observe_epoch(mutation.epoch)
        if self._snapshot is not None:
            raise self._gap(f"mutation {tuple(mutation.position)} inside a snapshot")
        change = mutation.change
        position = self.position
        if isinstance(change, EpochStart):
            if not (mutation.seq == 0 and mutation.epoch > position.epoch
                    and change.previous == position):
                raise self._gap(f"epoch start {tuple(mutation.position)} after "
                                f"{tuple(change.previous)}")
        elif mutation.epoch != position.epoch or mutation.seq != position.seq + 1:
            raise self._gap(f"mutation {tuple(mutation.position)}")
        store = self.store
        if isinstance(change, ItemState):
            store.install(change)
        elif isinstance(change, Deletion):
            store.remove(change.key)
        elif isinstance(change, Flush):
            store.apply_flush(change.flush_before)
        if self.log is not None:
            self.log.append(mutation)
        self.position = mutation.position
        return self.position

    # -- snapshots -------------------------------------------------------------------------

    def begin_snapshot(self, begin: SnapshotBegin) -> None:
        self.observe_epoch(begin.position.epoch)
        store = self.store
        store.apply_flush(0)
        store.flush_before = begin.flush_before
        self._snapshot = begin
        self._snapshot_count = 0

    def install(self, state: ItemState) -> None:
        if self._snapshot is None:
            raise self._gap("snapshot item outside a snapshot")
        self.store.install(state)
        self._snapshot_count += 1

    def end_snapshot(self, end: SnapshotEnd) -> Position:
        begin = self._snapshot
        if begin is None or end.position != begin.position:
            raise self._gap("snapshot end without its begin")
        if end.count != self._snapshot_count:
            raise self._gap(f"snapshot of {end.count} items, received {self._snapshot_count}")
        self._snapshot = None
        self.position = end.position
        if self.log is not None:
            self.log.reset(end.position)
        return self.position
