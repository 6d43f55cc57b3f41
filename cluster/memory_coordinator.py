"""An in-memory stand-in for etcd, for unit tests: the same Coordinator over a fake store.

`MemoryEtcd` keeps what etcd's KV model keeps (a global revision, per-key create/mod
revisions and versions, leases whose keys vanish when they expire or are revoked, atomic
compare-and-set transactions, an event history that watches replay from any revision), on
trio's clock. Leases are granted whole seconds, like etcd's. Expiry is checked every 50 ms
(etcd: every ~500 ms), so a key never outlives its lease by more than that.

Faults for tests: `freeze()` makes every client call hang until its timeout and then raise
CoordinatorUnavailable (like a SIGSTOPped etcd, or a partition between every client and the
store); lease expiry carries on meanwhile. `thaw()` ends it.

`MemoryCoordinator` is a client of one `MemoryEtcd`; several clients may share one store.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from memring.cluster.coordinator import (
    Coordinator,
    CoordinatorUnavailable,
    LeaseNotFound,
    WatchStream,
)
from memring.cluster.keyspace import Compare, Entry, KeyEvent, Op, Put, TxnResult, WatchBatch

EXPIRY_TICK = 0.05


@dataclass
class _Lease:
    ttl: int
    expires_at: float
    keys: set[str] = field(default_factory=set)


@dataclass
class _Watcher:
    prefix: str
    send: trio.MemorySendChannel[WatchBatch]


class MemoryEtcd:
    """The fake store. Run `serve()` in a nursery (or use `open_memory_etcd()`) for expiry."""

    def __init__(self) -> None:
        self.revision = 1  # etcd starts a new cluster at revision 1
        self.data: dict[str, Entry] = {}
        self.leases: dict[int, _Lease] = {}
        self.history: list[WatchBatch] = []
        self.watchers: list[_Watcher] = []
        self.frozen = False
        self._lease_ids = itertools.count(0x6B00_0000_0000_0001)

    def freeze(self) -> None:
        self.frozen = True

    def thaw(self) -> None:
        self.frozen = False

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        task_status.started()
        while True:
            await trio.sleep(EXPIRY_TICK)
            now = trio.current_time()
            for lease_id in [i for i, lease in self.leases.items() if lease.expires_at <= now]:
                self.revoke(lease_id)

    # KV operations, applied atomically (no await inside) ----------------------------

    def read(self, key: str, prefix: bool) -> tuple[int, dict[str, Entry]]:
        if prefix:
            return self.revision, {k: e for k, e in self.data.items() if k.startswith(key)}
        entry = self.data.get(key)
        return self.revision, ({key: entry} if entry else {})

    def txn(self, compares: Sequence[Compare], success: Sequence[Op],
            failure: Sequence[Op]) -> TxnResult:
        ok = all(c.holds(self.data.get(c.key)) for c in compares)
        ops = success if ok else failure
        for op in ops:
            if isinstance(op, Put) and op.lease and op.lease not in self.leases:
                raise LeaseNotFound(f"lease {op.lease:x} not found")
        if not ops:
            return TxnResult(ok, self.revision)
        revision = self.revision + 1
        events: list[KeyEvent] = []
        for op in ops:
            old = self.data.get(op.key)
            if isinstance(op, Put):
                if old and old.lease and old.lease in self.leases:
                    self.leases[old.lease].keys.discard(op.key)
                entry = Entry(op.key, op.value, old.create_revision if old else revision,
                              revision, (old.version if old else 0) + 1, op.lease)
                self.data[op.key] = entry
                if op.lease:
                    self.leases[op.lease].keys.add(op.key)
                events.append(KeyEvent("put", entry))
            elif old is not None:
                events.append(self._delete(old, revision))
        if events:
            self.revision = revision
            self._publish(WatchBatch(revision, tuple(events)))
        return TxnResult(ok, self.revision)

    def _delete(self, old: Entry, revision: int) -> KeyEvent:
        del self.data[old.key]
        if old.lease in self.leases:
            self.leases[old.lease].keys.discard(old.key)
        return KeyEvent("delete", Entry(old.key, b"", 0, revision, 0, 0))

    def _publish(self, batch: WatchBatch) -> None:
        self.history.append(batch)
        for watcher in list(self.watchers):
            events = tuple(e for e in batch.events if e.entry.key.startswith(watcher.prefix))
            if events:
                try:
                    watcher.send.send_nowait(WatchBatch(batch.revision, events))
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    self.watchers.remove(watcher)

    def grant(self, ttl: float) -> tuple[int, int]:
        granted = max(1, math.ceil(ttl))
        lease_id = next(self._lease_ids)
        self.leases[lease_id] = _Lease(granted, trio.current_time() + granted)
        return lease_id, granted

    def keepalive(self, lease_id: int) -> int:
        lease = self.leases.get(lease_id)
        if lease is None:
            return 0
        lease.expires_at = trio.current_time() + lease.ttl
        return lease.ttl

    def revoke(self, lease_id: int) -> bool:
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return False
        if lease.keys:
            revision = self.revision + 1
            events = tuple(self._delete(self.data[k], revision) for k in sorted(lease.keys)
                           if k in self.data)
            self.revision = revision
            self._publish(WatchBatch(revision, events))
        return True


@asynccontextmanager
async def open_memory_etcd() -> AsyncIterator[MemoryEtcd]:
    """A running fake store (lease expiry on), for the duration of the block."""
    store = MemoryEtcd()
    async with trio.open_nursery() as nursery:
        await nursery.start(store.serve)
        try:
            yield store
        finally:
            nursery.cancel_scope.cancel()


class MemoryCoordinator(Coordinator):
    """The Coordinator over a `MemoryEtcd`."""

    def __init__(self, store: MemoryEtcd, cluster: str = "memring", *,
                 call_timeout: float = 1.0) -> None:
        super().__init__(cluster, call_timeout=call_timeout)
        self.store = store
        self._closed = False

    async def _reach(self, timeout: float | None = None) -> MemoryEtcd:
        """Yield once like a network call would; a frozen store hangs until the timeout."""
        if self._closed:
            raise CoordinatorUnavailable("the memory coordinator is closed")
        if self.store.frozen:
            limit = self.call_timeout if timeout is None else timeout
            await trio.sleep(limit)
            raise CoordinatorUnavailable(
                f"memory store did not answer within {limit:g}s (frozen by the test)")
        await trio.lowlevel.checkpoint()
        return self.store

    async def _read(self, key: str, *, prefix: bool = False) -> tuple[int, dict[str, Entry]]:
        return (await self._reach()).read(key, prefix)

    async def _txn(self, compares: Sequence[Compare], success: Sequence[Op],
                   failure: Sequence[Op] = (), *, resend: bool = False) -> TxnResult:
        return (await self._reach()).txn(compares, success, failure)

    async def _grant(self, ttl: float) -> tuple[int, float]:
        lease_id, granted = (await self._reach()).grant(ttl)
        return lease_id, float(granted)

    async def _keepalive(self, lease_id: int, *, timeout: float) -> float:
        return float((await self._reach(timeout)).keepalive(lease_id))

    async def revoke(self, lease_id: int) -> bool:
        return (await self._reach()).revoke(lease_id)

    @asynccontextmanager
    async def _watch_raw(self, prefix: str, from_revision: int) -> AsyncIterator[WatchStream]:
        store = await self._reach()
        send, receive = trio.open_memory_channel[WatchBatch](math.inf)
        for batch in store.history:
            events = tuple(e for e in batch.events
                           if batch.revision >= from_revision and e.entry.key.startswith(prefix))
            if events:
                send.send_nowait(WatchBatch(batch.revision, events))
        watcher = _Watcher(prefix, send)
        store.watchers.append(watcher)
        try:
            async with receive:
                yield WatchStream(receive)
        finally:
            if watcher in store.watchers:
                store.watchers.remove(watcher)
            send.close()

    async def aclose(self) -> None:
        self._closed = True
        await trio.lowlevel.checkpoint()
