"""The coordination interface: records, the cluster view, sessions, elections.

Theory of operation. A `Coordinator` is a client of a revisioned key-value store with leases
and transactions (etcd, or the in-memory fake that mimics it). Subclasses provide six
primitives (`_read`, `_txn`, `_grant`, `_keepalive`, `revoke`, `_watch_raw`); everything else,
the election, the fencing and the view, is written here once, so both stores run the same
logic and the same contract tests.

A `Session` is a lease plus its keep-alive. Its `deadline` is the local monotonic time
`sent + ttl - margin`, where `sent` is when the last *successful* keepalive was sent (the
store cannot have started that lease's countdown earlier). A watchdog task sleeps until the
deadline and, if no later keepalive succeeded, sets `lost` and cancels the scopes linked to the
session. It never waits on the store, so a hung call cannot delay a step-down.

Ownership changes are compare-and-set transactions on create revisions: a shard's leader key is
created only if absent, by a member of the shard's ISR (compared by the ISR's mod revision in
the same txn); the leader key's create revision is the leader's epoch, and every later write
of that leader (ISR updates, resignation) is fenced on it.
"""

from __future__ import annotations

import abc
import logging
import math
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import replace

import trio

from memring.cluster.keyspace import (
    Compare,
    Delete,
    Entry,
    Keyspace,
    Op,
    Put,
    TxnResult,
    WatchBatch,
)
from memring.cluster.records import (
    HASHES as HASHES,
)
from memring.cluster.records import (
    READ_POLICIES as READ_POLICIES,
)
from memring.cluster.records import (
    REPLICATION_MODES as REPLICATION_MODES,
)
from memring.cluster.records import (
    UNCLEAN_POLICIES as UNCLEAN_POLICIES,
)
from memring.cluster.records import (  # re-exported: callers import the records from here too
    ClusterConfig as ClusterConfig,
)
from memring.cluster.records import (
    ClusterView as ClusterView,
)
from memring.cluster.records import (
    ElectionHint as ElectionHint,
)
from memring.cluster.records import (
    Incarnation as Incarnation,
)
from memring.cluster.records import (
    IsrRecord as IsrRecord,
)
from memring.cluster.records import (
    LeaderRecord as LeaderRecord,
)
from memring.cluster.records import (
    Leadership as Leadership,
)
from memring.cluster.records import (
    NodeRecord as NodeRecord,
)
from memring.cluster.records import (
    ProxyRecord as ProxyRecord,
)
from memring.cluster.records import (
    ShardRecord as ShardRecord,
)
from memring.cluster.records import (
    ShardView as ShardView,
)

log = logging.getLogger("memring.cluster")
ACCESS_RETRY = 5.0  # seconds before following again after the store refused us


class CoordinatorError(Exception):
    """A coordination call failed."""


class CoordinatorUnavailable(CoordinatorError):
    """The store did not answer within the call's timeout (or refused the connection)."""


class AccessDenied(CoordinatorError):
    """The store refused our TLS handshake, credentials or permissions: retrying cannot
    help; the message names the setting to fix."""


class LeaseNotFound(CoordinatorError):
    """The lease is gone (expired or revoked): its session is lost."""


class FencedOut(CoordinatorError):
    """A write fenced on an epoch found that epoch is no longer the shard's leader."""


class IsrMoved(CoordinatorError):
    """The ISR key is not at the revision the leader last wrote: a write of its own that
    timed out was applied after all (a member that received it before freezing, or a
    partition that held it, delivers it late). `revision` is where it is now."""

    def __init__(self, message: str, revision: int) -> None:
        super().__init__(message)
        self.revision = revision


class ShardExists(CoordinatorError):
    """`add_shard` of a shard that already exists."""


class NotFound(CoordinatorError):
    """An operation named a shard or node the cluster does not have."""


class WatchMoved(CoordinatorUnavailable):
    """A watch ended because another call found its endpoint unavailable and moved to the
    next one (a frozen member sends a watch no error): follow again at once."""


class WatchCompacted(CoordinatorError):
    """The watch's start revision was compacted away: take a new snapshot."""


@contextmanager
def collapse_single() -> Iterator[None]:
    """Re-raise a lone exception out of a nursery's ExceptionGroup, so a context manager built
    on a nursery raises what its body raised (e.g. CoordinatorUnavailable), not a group."""
    try:
        yield
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1 or isinstance(group.exceptions[0], BaseExceptionGroup):
            raise
        exc = group.exceptions[0]
        context = exc.__context__
        try:
            raise exc
        finally:
            exc.__context__ = context
            del exc, context


class Session:
    """A lease kept alive every ttl/3, with a deadline on the local monotonic clock."""

    def __init__(self, coordinator: Coordinator, lease_id: int, ttl: float, margin: float,
                 sent: float) -> None:
        self.coordinator = coordinator
        self.lease_id = lease_id
        self.ttl = ttl
        self.margin = margin
        self.renewed_at = sent  # send time of the last successful grant/keepalive
        self.lost = trio.Event()
        self.lost_reason = ""
        self.lost_at = math.inf
        self._linked: list[trio.CancelScope] = []
        self._renewing = trio.CancelScope()  # a lost session stops renewing its lease
        self._deadline_wait = trio.CancelScope()  # the watchdog's; a renewal moves it later

    @property
    def deadline(self) -> float:
        return self.renewed_at + self.ttl - self.margin

    def is_valid(self) -> bool:
        """True while the lease is surely still ours (checked before acknowledging a write)."""
        return not self.lost.is_set() and trio.current_time() < self.deadline

    def incarnation(self, node_id: str) -> Incarnation:
        return Incarnation(node_id, self.lease_id)

    def cancel_on_loss(self, scope: trio.CancelScope) -> None:
        """Cancel `scope` when the session is lost (at once if it already is)."""
        if self.lost.is_set():
            scope.cancel()
        else:
            self._linked.append(scope)

    def _mark_lost(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost_at = trio.current_time()
        log.warning("session %x lost: %s", self.lease_id, reason)
        self.lost.set()
        self._renewing.cancel()
        for scope in self._linked:
            scope.cancel()

    async def _keepalive_loop(self) -> None:
        with self._renewing:
            await self._renew_until_lost()

    async def _renew_until_lost(self) -> None:
        interval = self.ttl / 3
        # One attempt may not eat the budget: a keepalive stuck on a frozen etcd member is
        # given up after this and sent again at once through the next member, so the lease is
        # renewed through the others within the TTL (etcd's new leader keeps it alive).
        attempt = max(0.1, min(interval, (self.ttl - self.margin) / 6))
        next_at = self.renewed_at + interval
        failing = False
        while True:
            await trio.sleep_until(next_at)
            sent = trio.current_time()
            try:
                remaining = await self.coordinator._keepalive(self.lease_id, timeout=attempt)
            except CoordinatorUnavailable as exc:
                if not failing:
                    log.warning("keepalive of lease %x failed: %s", self.lease_id, exc)
                failing = True
                # a refused connection fails at once: pace the retries, a little
                next_at = max(trio.current_time(), sent + min(0.05, attempt / 2))
                continue
            if remaining <= 0:
                self._mark_lost("the lease expired or was revoked in the store")
                return
            if failing:
                log.info("keepalive of lease %x recovered (%.0f ms before the local deadline)",
                         self.lease_id, (self.deadline - trio.current_time()) * 1000)
            failing = False
            self.renewed_at = max(self.renewed_at, sent)
            self._deadline_wait.deadline = self.deadline
            next_at = sent + interval

    async def _watchdog(self) -> None:
        # it wakes only at a deadline no renewal moved (it woke at each old one: once a TTL)
        while True:
            with trio.CancelScope(deadline=self.deadline) as self._deadline_wait:
                await trio.sleep_forever()
            if trio.current_time() >= self.deadline:
                self._mark_lost(f"no keepalive succeeded within ttl {self.ttl:g}s "
                                f"less margin {self.margin:g}s")
                return


class WatchStream:
    """Receives `WatchBatch`es; raises the watch's error (e.g. CoordinatorUnavailable) when the
    stream breaks, instead of ending quietly."""

    def __init__(self, receive: trio.MemoryReceiveChannel[WatchBatch]) -> None:
        self._receive = receive
        self.error: CoordinatorError | None = None

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> WatchBatch:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            if self.error is not None:
                raise self.error from None
            raise StopAsyncIteration from None


# --- the coordinator ----------------------------------------------------------------------


class Coordinator(abc.ABC):
    """A cluster's coordination client. Use from trio; every call is bounded by a timeout."""

    def __init__(self, cluster: str, *, call_timeout: float = 1.0, root: str = "/memring"):
        self.keyspace = Keyspace(cluster, root)
        self.call_timeout = call_timeout

    # The store's primitives -----------------------------------------------------------

    @abc.abstractmethod
    async def _read(self, key: str, *, prefix: bool = False) -> tuple[int, dict[str, Entry]]:
        """(store revision, entries) for one key or every key under a prefix."""

    @abc.abstractmethod
    async def _txn(self, compares: Sequence[Compare], success: Sequence[Op],
                   failure: Sequence[Op] = (), *, resend: bool = False) -> TxnResult:
        """`resend`: an attempt that goes unanswered may be sent again through another
        endpoint, so a failed result may hide an earlier attempt that was applied; only for
        a caller that re-checks a failure (`campaign`)."""

    @abc.abstractmethod
    async def _grant(self, ttl: float) -> tuple[int, float]:
        """A new lease: (lease id, granted ttl in seconds)."""

    @abc.abstractmethod
    async def _keepalive(self, lease_id: int, *, timeout: float) -> float:
        """Renew a lease once; its remaining TTL, 0 when it no longer exists."""

    @abc.abstractmethod
    async def revoke(self, lease_id: int) -> bool:
        """Revoke a lease (deleting its keys at once); False if it did not exist."""

    @abc.abstractmethod
    def _watch_raw(self, prefix: str, from_revision: int) -> AbstractAsyncContextManager[
            WatchStream]: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    # Sessions and membership -----------------------------------------------------------

    @asynccontextmanager
    async def open_session(self, ttl: float = 2.0, *, margin: float | None = None,
                           resume: int = 0) -> AsyncIterator[Session]:
        """A lease kept alive until the block exits (then revoked: a graceful leave).

        `margin` (default ttl/10, at least 50 ms) is how long before the lease could expire in
        the store the session declares itself lost. `resume` names the lease of a session that
        was lost on the local clock only (etcd unreachable, or restarted): if the store still
        holds that lease, the new session keeps it, and with it every key bound to it (node,
        leader key, epoch, ISR incarnation), instead of starting a new life. That is safe:
        while the lease lived in the store, nobody else could take those keys. A lost session
        is therefore not revoked when its block exits, nor one whose block ended because the
        store did not answer (its lease likely lives on, for `resume`: just after etcd
        restarted, a leader revoked its own on a failed call, and lost its leadership)."""
        sent = trio.current_time()
        lease_id, granted = 0, ttl
        if resume and await self._remaining(resume) > 0:
            lease_id = resume
            log.info("lease %x survived in the store: resuming it", resume)
        if not lease_id:
            sent = trio.current_time()
            lease_id, granted = await self._grant(ttl)
        if margin is None:
            margin = max(0.05, granted / 10)
        session = Session(self, lease_id, granted, margin, sent)
        unanswered = False
        try:
            with collapse_single():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(session._keepalive_loop)
                    nursery.start_soon(session._watchdog)
                    try:
                        yield session
                    except CoordinatorUnavailable:
                        unanswered = True
                        raise
                    finally:
                        nursery.cancel_scope.cancel()
        finally:
            if not session.lost.is_set() and not unanswered:
                with trio.CancelScope(shield=True), trio.move_on_after(self.call_timeout):
                    try:
                        await self.revoke(lease_id)
                    except CoordinatorError as exc:
                        log.warning("could not revoke lease %x on close: %s", lease_id, exc)

    @property
    def endpoint_count(self) -> int:
        """How many store endpoints a call may fail over between (each tried once)."""
        return 1

    async def _remaining(self, lease_id: int) -> float:
        """Seconds the store still gives `lease_id` after renewing it; 0 if it is gone. A
        keepalive is idempotent: an endpoint that does not answer is followed by the next."""
        for attempt in range(self.endpoint_count):
            try:
                return await self._keepalive(lease_id, timeout=self.call_timeout)
            except LeaseNotFound:
                return 0.0
            except CoordinatorUnavailable:
                if attempt == self.endpoint_count - 1:
                    raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def register_node(self, session: Session, node: NodeRecord) -> None:
        await self._put(self.keyspace.node(node.node_id), node.to_json(), session.lease_id)

    async def register_proxy(self, session: Session, proxy: ProxyRecord) -> None:
        await self._put(self.keyspace.proxy(proxy.proxy_id), proxy.to_json(), session.lease_id)

    async def _put(self, key: str, value: bytes, lease: int = 0) -> int:
        result = await self._txn([], [Put(key, value, lease)])
        return result.revision

    # Configuration and topology --------------------------------------------------------

    async def get_config(self) -> ClusterConfig | None:
        key = self.keyspace.config()
        _, entries = await self._read(key)
        return ClusterConfig.from_json(entries[key].value) if key in entries else None

    async def put_config(self, config: ClusterConfig) -> None:
        await self._put(self.keyspace.config(), config.to_json())

    async def list_shards(self) -> list[ShardRecord]:
        return [s.record for s in (await self.snapshot()).shards.values() if s.record]

    async def add_shard(self, shard: ShardRecord) -> None:
        key = self.keyspace.shard(shard.shard_id)
        result = await self._txn([Compare(key, "create", "==", 0)], [Put(key, shard.to_json())])
        if not result.succeeded:
            raise ShardExists(f"shard {shard.shard_id!r} already exists")

    async def ensure_shard(self, shard_id: str, *, member: str | None = None,
                           weight: int = 1) -> ShardRecord:
        """Create `shards/<shard_id>` if absent; add `member` to its replicas if missing."""
        key = self.keyspace.shard(shard_id)
        for _ in range(20):  # bounded compare-and-set retries against concurrent joiners
            _, entries = await self._read(key)
            entry = entries.get(key)
            if entry is None:
                record = ShardRecord(shard_id, (member,) if member else (), weight)
                guard = Compare(key, "create", "==", 0)
            else:
                current = ShardRecord.from_json(entry.value)
                if member is None or member in current.replicas:
                    return current
                record = replace(current, replicas=(*current.replicas, member))
                guard = Compare(key, "mod", "==", entry.mod_revision)
            if (await self._txn([guard], [Put(key, record.to_json())])).succeeded:
                return record
        raise CoordinatorError(f"shard {shard_id!r}: too much contention updating its record")

    async def remove_shard(self, shard_id: str) -> bool:
        """Delete a shard's record, leader and ISR keys; False if it had no record."""
        key = self.keyspace.shard(shard_id)
        result = await self._txn(
            [Compare(key, "create", "!=", 0)],
            [Delete(key), Delete(self.keyspace.leader(shard_id)),
             Delete(self.keyspace.isr(shard_id))])
        return result.succeeded

    # Elections -------------------------------------------------------------------------

    async def campaign(self, session: Session, shard_id: str, node_id: str, address: str, *,
                       unclean: bool = False, earlier_leases: Iterable[int] = (),
                       alone: bool = False) -> Leadership | None:
        """Try once to become the shard's leader; the Leadership, or None if another leads,
        this incarnation is not in the ISR, the node is drained, an election hint names
        another node, or any of these changed meanwhile.

        One txn: leader key absent AND (ISR absent -> create it with us alone | ISR unchanged
        since we read it with us in it) AND shard record and hint unchanged since read (so a
        drain or a hint written meanwhile is never missed). `unclean` skips the ISR check and
        resets it to us. `earlier_leases` are leases this same process held before (its store
        kept): an ISR entry naming one of them is us, and the same txn rewrites that entry to
        the current lease (etcd revoking live leases, as 3.4 does after its leader was paused,
        then needs no unclean election). `alone`: a clean win also makes the ISR us alone, in
        the same txn: what the new leader's first ISR check would write next (no follower is
        connected to a leader this new: backend.replication.in_sync), without the etcd round
        trip its writes would wait for."""
        if not session.is_valid():
            return None
        shard_key = self.keyspace.shard(shard_id)
        leader_key, isr_key = self.keyspace.leader(shard_id), self.keyspace.isr(shard_id)
        hint_key = self.keyspace.hint(shard_id)
        me = session.incarnation(node_id)
        _, entries = await self._read(shard_key, prefix=True)  # record, isr and hint at once
        isr_entry = entries.get(isr_key)
        leader = Put(leader_key, LeaderRecord(node_id, address, session.lease_id).to_json(),
                     session.lease_id)
        fresh_isr = Put(isr_key, IsrRecord((me,)).to_json())
        compares = [Compare(leader_key, "create", "==", 0)]
        success: list[Op] = [leader]
        for key, entry in ((shard_key, entries.get(shard_key)),
                           (hint_key, entries.get(hint_key))):
            if entry is None:
                compares.append(Compare(key, "create", "==", 0))
                continue
            compares.append(Compare(key, "mod", "==", entry.mod_revision))
            if key == shard_key and node_id in ShardRecord.from_json(entry.value).drained:
                return None
            if key == hint_key and ElectionHint.from_json(entry.value).node_id != node_id:
                return None
        elected_with: tuple[Incarnation, ...] = (me,)
        isr_revision = 0  # the txn's own revision when it writes the ISR
        if isr_entry is None:
            compares.append(Compare(isr_key, "create", "==", 0))
            success.append(fresh_isr)
        else:
            compares.append(Compare(isr_key, "mod", "==", isr_entry.mod_revision))
            record = IsrRecord.from_json(isr_entry.value)
            members = record.members
            earlier = {Incarnation(node_id, lease) for lease in earlier_leases} & set(members)
            in_sync = me in members or bool(earlier)
            if unclean and not in_sync:
                success.append(fresh_isr)
            elif not in_sync:
                return None
            elif alone:
                elected_with = (me,)
                success.append(Put(isr_key, IsrRecord(elected_with, record.epoch).to_json()))
            elif me in members:
                elected_with = members
                isr_revision = isr_entry.mod_revision
            else:  # in sync under an earlier lease of this process: the entry becomes ours
                elected_with = tuple(sorted({*members} - earlier | {me}))
                success.append(Put(isr_key, IsrRecord(elected_with, record.epoch).to_json()))
        result = await self._txn(compares, success, resend=True)
        if not result.succeeded:
            if self.endpoint_count > 1:  # it may have been sent again through another
                return await self._won_unanswered(session, shard_id, node_id)
            return None
        return Leadership(shard_id, node_id, result.revision, session.lease_id, elected_with,
                          isr_revision or result.revision)

    async def _won_unanswered(self, session: Session, shard_id: str, node_id: str
                              ) -> Leadership | None:
        """After a failed campaign txn: the Leadership if an earlier attempt of it, whose
        answer was lost, was applied (the leader key holds our lease: only our campaign
        writes it so, and nothing but our own later writes touches the ISR meanwhile)."""
        leader_key, isr_key = self.keyspace.leader(shard_id), self.keyspace.isr(shard_id)
        _, entries = await self._read(self.keyspace.shard(shard_id), prefix=True)
        leader, isr = entries.get(leader_key), entries.get(isr_key)
        if leader is None or leader.lease != session.lease_id or isr is None:
            return None
        if LeaderRecord.from_json(leader.value).node_id != node_id:
            return None
        log.info("shard %s: our campaign's answer was lost, yet it won (epoch %d)", shard_id,
                 leader.create_revision)
        return Leadership(shard_id, node_id, leader.create_revision, session.lease_id,
                          IsrRecord.from_json(isr.value).members, isr.mod_revision)

    async def resign(self, leadership: Leadership) -> bool:
        """Give up leadership if this epoch still holds the leader key."""
        key = self.keyspace.leader(leadership.shard_id)
        result = await self._txn([Compare(key, "create", "==", leadership.epoch)], [Delete(key)])
        return result.succeeded

    async def update_isr(self, leadership: Leadership, members: Iterable[Incarnation], *,
                         expected_revision: int | None = None) -> int:
        """Write the shard's ISR, fenced on the epoch; its revision, or FencedOut. With
        `expected_revision` also on the ISR key's mod revision (IsrMoved, with where it is,
        if it moved): a write that timed out here may still reach etcd later, after a newer
        one sent through another member, and must then fail rather than undo the newer."""
        leader_key = self.keyspace.leader(leadership.shard_id)
        isr_key = self.keyspace.isr(leadership.shard_id)
        record = IsrRecord(tuple(sorted(set(members))), leadership.epoch)
        compares = [Compare(leader_key, "create", "==", leadership.epoch)]
        if expected_revision is not None:
            compares.append(Compare(isr_key, "mod", "==", expected_revision))
        result = await self._txn(compares, [Put(isr_key, record.to_json())])
        if result.succeeded:
            return result.revision
        if expected_revision is not None:
            _, entries = await self._read(self.keyspace.shard(leadership.shard_id), prefix=True)
            leader, isr = entries.get(leader_key), entries.get(isr_key)
            if leader is not None and leader.create_revision == leadership.epoch:
                revision = isr.mod_revision if isr is not None else 0
                raise IsrMoved(f"shard {leadership.shard_id!r}: the ISR is at revision "
                               f"{revision}, not {expected_revision}", revision)
        raise FencedOut(f"shard {leadership.shard_id!r}: epoch {leadership.epoch} no longer "
                        "leads; not writing the ISR")

    # Operations (memring leader transfer, node drain/remove, shard elect) -------------

    async def shard_of(self, node_id: str) -> str:
        """The shard a node belongs to: the record listing it, else its live registration."""
        view = await self.snapshot()
        for shard_id, shard in view.shards.items():
            if shard.record is not None and node_id in shard.record.replicas:
                return shard_id
        if node_id in view.nodes:
            return view.nodes[node_id].shard
        raise NotFound(f"no node {node_id!r} in cluster {self.keyspace.cluster!r}")

    async def _update_shard(self, shard_id: str, change: Callable[[ShardRecord], ShardRecord]
                            ) -> ShardRecord:
        key = self.keyspace.shard(shard_id)
        for _ in range(20):  # bounded compare-and-set retries against concurrent joiners
            _, entries = await self._read(key)
            entry = entries.get(key)
            if entry is None:
                raise NotFound(f"no shard {shard_id!r}")
            record = change(ShardRecord.from_json(entry.value))
            if (await self._txn([Compare(key, "mod", "==", entry.mod_revision)],
                                [Put(key, record.to_json())])).succeeded:
                return record
        raise CoordinatorError(f"shard {shard_id!r}: too much contention updating its record")

    async def drain_node(self, node_id: str, drained: bool = True) -> ShardRecord:
        """Mark a node drained (never leads, resigns if it does, gets no reads), or undo it."""
        shard_id = await self.shard_of(node_id)

        def change(record: ShardRecord) -> ShardRecord:
            others = tuple(n for n in record.drained if n != node_id)
            return replace(record, drained=(*others, node_id) if drained else others)
        return await self._update_shard(shard_id, change)

    async def remove_node(self, node_id: str) -> tuple[str, bool]:
        """Drop a node from its shard's record and revoke its lease if it is registered:
        (its shard, whether it was registered). A backend still running joins again."""
        shard_id = await self.shard_of(node_id)
        await self._update_shard(shard_id, lambda record: replace(
            record, replicas=tuple(n for n in record.replicas if n != node_id),
            drained=tuple(n for n in record.drained if n != node_id)))
        key = self.keyspace.node(node_id)
        _, entries = await self._read(key)
        lease = entries[key].lease if key in entries else 0
        if lease:
            await self.revoke(lease)
        return shard_id, bool(lease)

    async def put_hint(self, shard_id: str, hint: ElectionHint, ttl: float) -> int:
        """Write the shard's election hint under a new lease of `ttl` seconds (its id: revoke
        it when done); CoordinatorError if another hint lives."""
        lease_id, _ = await self._grant(ttl)
        key = self.keyspace.hint(shard_id)
        result = await self._txn([Compare(key, "create", "==", 0)],
                                 [Put(key, hint.to_json(), lease_id)])
        if not result.succeeded:
            await self.revoke(lease_id)
            raise CoordinatorError(f"shard {shard_id!r}: another transfer or election is "
                                   "under way")
        return lease_id

    # Reading and following -------------------------------------------------------------

    async def snapshot(self) -> ClusterView:
        revision, entries = await self._read(self.keyspace.prefix, prefix=True)
        return ClusterView.build(self.keyspace, revision, entries)

    def watch(self, from_revision: int) -> AbstractAsyncContextManager[WatchStream]:
        """Changes under the cluster's prefix from `from_revision` on (use snapshot().revision
        + 1). The stream raises CoordinatorUnavailable or WatchCompacted when it breaks."""
        return self._watch_raw(self.keyspace.prefix, from_revision)

    async def _check_watched(self) -> bool:
        """Check that the endpoint a watch is on still answers, and move off it if not (the
        watch then ends with WatchMoved): a frozen member sends a watch no error. True if
        it moved."""
        await trio.lowlevel.checkpoint()
        return False

    async def _keep_checking_watched(self, interval: float, watching: trio.Event,
                                     creating: trio.CancelScope) -> None:
        """`_check_watched` every `interval`. A move before the watch is confirmed (`watching`
        not set) cancels its creation (`creating`): etcd confirms no watch on a frozen member,
        and its creation waited the whole call timeout, then the retry interval (a proxy's
        view stood still 1.5 s so in a bench run); once confirmed, the watch ends itself."""
        if self.endpoint_count < 2:
            return  # nowhere to move to: no timer (an idle proxy woke 5 times a second)
        while True:
            await trio.sleep(interval)
            if await self._check_watched() and not watching.is_set():
                creating.cancel()
                return

    @asynccontextmanager
    async def follow(self, *, retry_interval: float = 0.5, check_interval: float = 0.0
                     ) -> AsyncIterator[trio.MemoryReceiveChannel[ClusterView]]:
        """A fresh ClusterView after every change, forever; across store outages it keeps
        quiet (the last view stands) and re-syncs with a new snapshot when the store is back.
        `check_interval` (> 0): that often, check that the watch's endpoint answers (one
        cheap call each time: for a proxy, whose routing waits on its view, not for every
        backend)."""
        send, receive = trio.open_memory_channel[ClusterView](math.inf)
        with collapse_single():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._follow_loop, send, retry_interval, check_interval)
                try:
                    yield receive
                finally:
                    nursery.cancel_scope.cancel()

    async def _follow_loop(self, send: trio.MemorySendChannel[ClusterView],
                           retry_interval: float, check_interval: float) -> None:
        last: ClusterView | None = None
        resync_now = False  # a watch moved: the next endpoint may answer at once (once)
        # A moved watch goes on from the last view's revision on the next endpoint, without
        # a snapshot first: a member serves a watch from its own store, while a snapshot is a
        # linearizable read that waits for etcd's leader (right after etcd's leader froze, a
        # proxy's snapshot took 440 ms more: docs/scaling.md "Many failovers at once"). A
        # revision compacted meanwhile is WatchCompacted: a snapshot again.
        resume: ClusterView | None = None
        async with send:
            while True:
                try:
                    if resume is None:
                        view = await self.snapshot()
                        if last is None or view.revision != last.revision:
                            send.send_nowait(view)
                        last = view
                        resync_now = False
                    else:
                        view, resume = resume, None
                    watching = trio.Event()
                    creating = trio.CancelScope()  # a check moved us before etcd confirmed
                    with collapse_single():  # the stream's error, not a group
                        async with trio.open_nursery() as checking:
                            if check_interval > 0:  # also while etcd confirms the watch
                                checking.start_soon(self._keep_checking_watched,
                                                    check_interval, watching, creating)
                            with creating:
                                async with self.watch(view.revision + 1) as stream:
                                    watching.set()
                                    resync_now = False
                                    async for batch in stream:
                                        view = view.apply(batch)
                                        send.send_nowait(view)
                                        last = view
                            checking.cancel_scope.cancel()
                    if creating.cancelled_caught:
                        raise WatchMoved("the watched member did not answer a status check "
                                         "while confirming the watch: moving it on")
                except WatchMoved as exc:
                    log.info("following the cluster: %s", exc)
                    if not resync_now:
                        resync_now = True
                        resume = last
                        continue
                except (CoordinatorUnavailable, WatchCompacted) as exc:
                    log.warning("following the cluster: %s; retrying in %gs", exc,
                                retry_interval)
                except AccessDenied as exc:
                    # the last view stands, as in an outage: a proxy keeps routing while an
                    # operator fixes the credentials or the role
                    log.error("following the cluster: %s; retrying in %gs", exc,
                              ACCESS_RETRY)
                    await trio.sleep(ACCESS_RETRY)
                await trio.sleep(retry_interval)
