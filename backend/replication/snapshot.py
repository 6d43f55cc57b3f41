"""A snapshot of a leader's store, streamed in chunks while writes go on.

Theory of operation: a snapshot starts at the log's newest position P and remembers the
keys the store holds at that moment, in LRU order (a list of references, no copy of the
values). Each `next_chunk()` then reads the *current* state of the next keys, skipping those
gone, expired or flushed, so the leader can send a chunk, yield to its clients, and go on.

Why the follower ends up equal to the leader: the follower installs the snapshot and then
applies every mutation after P from the log. Take any key K. If some mutation after P
touched K (or a flush after P), the tail replays it, and since every mutation carries K's
resulting state rather than a command, the last one leaves K as the leader holds it,
whatever the snapshot said. If nothing after P touched K, K's state is the one it had at
P, which is what the chunk read (or K expired or was evicted: local events, which the
follower reproduces from the same absolute expiry or does not need). Keys created after P
are not in the key list, and come from the tail. The one requirement: the leader's backlog
must still cover P when the snapshot ends, or it starts over with a larger backlog.

While applying, the follower may hold states newer than P next to older ones; it does not
serve reads or join the ISR until it has applied the tail up to the leader's position.
"""

from __future__ import annotations

from collections.abc import Iterator

from memring.backend.replication.mutation_log import item_state
from memring.backend.store import Store
from memring.protocol.replication import ItemState, Position, SnapshotBegin, SnapshotEnd


class StoreSnapshot:
    def __init__(self, store: Store, position: Position, chunk_items: int = 256,
                 chunk_bytes: int = 1 << 20) -> None:
        self.store = store
        self.position = position
        self.flush_before = store.flush_before
        self.chunk_items = chunk_items
        self.chunk_bytes = chunk_bytes
        self._keys = list(store.items)
        self._next = 0
        self.sent = 0

    @property
    def done(self) -> bool:
        return self._next >= len(self._keys)

    def begin(self) -> SnapshotBegin:
        return SnapshotBegin(self.position, self.flush_before)

    def end(self) -> SnapshotEnd:
        return SnapshotEnd(self.position, self.sent)

    def next_chunk(self) -> list[ItemState]:
        """The current state of the next live items; empty once every key was visited."""
        store = self.store
        now = store.now()
        flush_before = store.flush_before
        keys = self._keys
        chunk: list[ItemState] = []
        size = 0
        while self._next < len(keys) and len(chunk) < self.chunk_items and (
                size < self.chunk_bytes):
            key = keys[self._next]
            self._next += 1
            item = store.item(key)
            if item is None or (item.expires and item.expires <= now):
                continue
            if flush_before and flush_before <= now and item.updated <= flush_before:
                continue
            chunk.append(item_state(key, item))
            size += len(key) + len(item.value)
        self.sent += len(chunk)
        if self.done:
            self._keys = []
        return chunk

    def __iter__(self) -> Iterator[list[ItemState]]:
        while not self.done:
            chunk = self.next_chunk()
            if chunk:
                yield chunk
