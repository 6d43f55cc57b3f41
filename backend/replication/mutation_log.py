"""The leader's ordered mutation log: positions, a bounded backlog, and store capture.

Theory of operation: a leader numbers every client-visible change to its store as
(epoch, seq) and keeps the most recent ones in a backlog bounded by count and bytes. A
follower that reconnects at position P resumes from the backlog when the backlog still
holds P (or P is the position just before its oldest entry); otherwise `since` answers
None and the follower needs a snapshot (`snapshot`) followed by the tail.

Each mutation carries the *resulting* state of the item (or its deletion, or a flush), not
the command that caused it, so applying a mutation twice, or after a snapshot that already
saw its effect, converges on the leader's state.

Epochs: a new leader opens its epoch with an EpochStart entry at (epoch, 0) naming the
position it continues from; seq restarts at 1 after it. A follower mirrors what it applies
into its own log (`append`), so on promotion it can serve the followers that were behind it.

Capture: `StoreRecorder` sets `Store.on_change`, which the store calls with each changed key
(None for flush_all); the recorder only notes keys and `commit()` reads their state after
the command has finished, because meta commands adjust an item after linking it (mg N sets
the TTL, ma E the CAS). Commands that change an item in place without calling the store
(mg T, md I, ma T/E on a hit) must `note(key)` themselves; the wiring does that for every
mutating meta request.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Iterator

from memring.backend.item_record import Item
from memring.backend.store import Store
from memring.protocol.replication import (
    ORIGIN,
    Change,
    Deletion,
    EpochStart,
    Flush,
    ItemState,
    Mutation,
    Position,
)

# Rough per-mutation overhead in the backlog: the objects plus the frame header.
_ENTRY_OVERHEAD = 128


def item_state(key: bytes, item: Item) -> ItemState:
    return ItemState(key, item.value, item.flags, item.expires, item.cas, item.updated,
                     item.stale, item.key_binary)


def mutation_size(mutation: Mutation) -> int:
    change = mutation.change
    if isinstance(change, ItemState):
        return _ENTRY_OVERHEAD + len(change.key) + len(change.value)
    if isinstance(change, Deletion):
        return _ENTRY_OVERHEAD + len(change.key)
    return _ENTRY_OVERHEAD


class ReplicationGap(Exception):
    """A mutation appended out of order (a bug in the caller, or a lost message)."""


class ReplicationLog:
    """Recent mutations in (epoch, seq) order, bounded by `max_count` and `max_bytes`."""

    def __init__(self, max_bytes: int = 64 << 20, max_count: int = 1_000_000,
                 position: Position = ORIGIN) -> None:
        self.max_bytes = max_bytes
        self.max_count = max_count
        self._entries: deque[Mutation] = deque()
        self.bytes = 0
        # The position just before the oldest entry: a follower there can still resume.
        self.base = position
        self.newest = position

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def oldest(self) -> Position:
        """The oldest position a follower may hold and still resume from the backlog."""
        return self.base

    def reset(self, position: Position) -> None:
        """Forget the backlog; the store now reflects `position` (after a snapshot)."""
        self._entries.clear()
        self.bytes = 0
        self.base = self.newest = position

    # -- the leader ----------------------------------------------------------------------

    def begin_epoch(self, epoch: int) -> Mutation:
        """Open a new leader's epoch; its first mutation will be (epoch, 1)."""
        if epoch <= self.newest.epoch:
            raise ValueError(f"epoch {epoch} is not newer than {self.newest.epoch}")
        return self._push(Mutation(epoch, 0, EpochStart(self.newest)))

    def record(self, change: Change) -> Mutation:
        """Number a change in the current epoch and keep it in the backlog."""
        if isinstance(change, EpochStart):
            raise ValueError("use begin_epoch")
        if self.newest.epoch == 0:
            raise ValueError("no epoch begun")
        return self._push(Mutation(self.newest.epoch, self.newest.seq + 1, change))

    # -- a follower mirroring what it applied ----------------------------------------------

    def append(self, mutation: Mutation) -> None:
        """Keep a mutation numbered elsewhere; it must directly follow `newest`."""
        change = mutation.change
        if isinstance(change, EpochStart):
            follows = (mutation.seq == 0 and mutation.epoch > self.newest.epoch
                       and change.previous == self.newest)
        else:
            follows = mutation.position == Position(self.newest.epoch, self.newest.seq + 1)
        if not follows:
            raise ReplicationGap(f"{mutation.position} does not follow {self.newest}")
        self._push(mutation)

    # -- followers catching up -------------------------------------------------------------

    def covers(self, position: Position) -> bool:
        return position == self.base or self._index(position) is not None

    def since(self, position: Position, limit: int | None = None) -> list[Mutation] | None:
        """The mutations after `position` (at most `limit`), or None if a snapshot is needed.

        None also when `position` is one this log never held, e.g. a follower that applied
        writes of an old leader which the new leader never received: it must start over.
        """
        if position == self.base:
            start = 0
        else:
            index = self._index(position)
            if index is None:
                return None
            start = index + 1
        entries = self._entries
        stop = len(entries) if limit is None else min(len(entries), start + limit)
        return [entries[i] for i in range(start, stop)]

    def __iter__(self) -> Iterator[Mutation]:
        return iter(self._entries)

    def _index(self, position: Position) -> int | None:
        entries = self._entries
        newest = self.newest
        if position.epoch == newest.epoch:
            # An epoch's seqs run without gaps up to the newest entry, and a follower asks
            # for a recent one: counted from the end, no search (a bisect of a deque of
            # 10k+ mutations cost ~4% of a leader's CPU in the cluster benchmark).
            index = len(entries) - 1 - (newest.seq - position.seq)
            if 0 <= index < len(entries) and entries[index].position == position:
                return index
        index = bisect_left(entries, position, key=lambda m: m.position)
        if index < len(entries) and entries[index].position == position:
            return index
        return None

    def _push(self, mutation: Mutation) -> Mutation:
        self._entries.append(mutation)
        self.bytes += mutation_size(mutation)
        self.newest = mutation.position
        entries = self._entries
        while entries and (len(entries) > self.max_count or self.bytes > self.max_bytes):
            dropped = entries.popleft()
            self.bytes -= mutation_size(dropped)
            self.base = dropped.position
        return mutation


class StoreRecorder:
    """Feeds a leader's store changes into its log: `note` on change, `commit` per command."""

    def __init__(self, store: Store, log: ReplicationLog) -> None:
        self.store = store
        self.log = log
        # Keys to read at commit; a flush is kept as noted (its deadline is read now).
        self._pending: list[bytes | Flush] = []

    def attach(self) -> None:
        self.store.on_change = self.note

    def detach(self) -> None:
        self.store.on_change = None
        self._pending.clear()

    def note(self, key: bytes | None) -> None:
        """A key whose state changed, or None for flush_all."""
        self._pending.append(Flush(self.store.flush_before) if key is None else key)

    def commit(self) -> list[Mutation]:
        """Record the current state of every noted key; returns the new mutations."""
        if not self._pending:
            return []
        pending, self._pending = self._pending, []
        item_at = self.store.item
        record = self.log.record
        recorded: list[Mutation] = []
        seen: set[bytes] = set()
        for key in pending:
            if isinstance(key, Flush):
                recorded.append(record(key))
                seen.clear()
                continue
            if key in seen:
                continue
            seen.add(key)
            item = item_at(key)
            recorded.append(record(Deletion(key) if item is None else item_state(key, item)))
        return recorded
