"""The leader's in-sync replica set (ISR) in `sync` mode: who a write waits for, and when.

Theory of operation. A write is acknowledged to its client once every follower in `waiting`
has acknowledged the write's position (`replicated(target)`). The invariant that makes a
failover lose nothing: every incarnation in the shard's ISR key in etcd (the only nodes that
may win an election) is in `waiting`, or is this leader. So

- a follower is *added* to `waiting` first (as soon as its lag is small), and written into
  the etcd ISR only once it has acknowledged everything that was newest when it was added:
  every write acknowledged before that waited for it or preceded it;
- a follower is *removed* from the etcd ISR first (a transaction fenced on the leader's
  epoch), and from `waiting` only once that transaction succeeded. Until then writes keep
  waiting for it; if etcd cannot be reached they wait until the lease runs out, the leader
  steps down, and the waiting connections are closed without an answer (never STORED).
  A follower that is in `waiting` but never reached etcd is dropped locally, and the writes
  waiting for it go at once; not while a late write of ours (IsrMoved) may have put it in
  etcd after all: then it leaves etcd first, as any member.

A follower is dropped when its connection is gone, or when it lags past the bound: the oldest
mutation it has not acknowledged is older than `max_lag` seconds, or more than
`max_lag_bytes` of mutations wait for it. It is also dropped when the incarnation waited for
is no longer the node's current one (`current`: the lease of its `nodes/` key in the leader's
view), either because the node said HELLO again with a new lease (its session was lost and
re-opened, the follower side reconnects for that) or because its lease is gone: an
incarnation that can no longer campaign must not stand in the ISR for the node. Only a link
whose incarnation is current is added, so an old incarnation is never written back. A new
leader starts from the ISR it was elected with; members not connected are dropped on the
first check (the old leader, typically), followers that reconnect caught up are added back
within a check or two. (A follower that campaigns right after revoking its dead leader's lease
is elected with the ISR already left to it alone, in the campaign's txn: `campaign(alone=)`.)

Links are per connection (issue 12's impostors): a HELLO whose incarnation is not current is
refused before it gets a link (leader_side), so no unregistered identity is ever waited for;
one current connection per node at most, a newer one superseding (and hanging up) the older;
an ACK moves the link of the connection it was read on, never another connection's, and a
connection that ends removes only its own link. A new link starts acknowledged at its HELLO's
position (no further than the newest write), which releases at once the writes it holds: a
follower sends no ACK for what it held when its connection was superseded.

Lag is measured against `_commits`, a bounded deque of (position, monotonic time, bytes so
far) appended once per committed command batch and trimmed of what every connected follower
acknowledged: seconds = now - time of the first commit the follower has not acknowledged;
bytes = bytes so far - bytes at its position.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from itertools import count

import trio

from memring.cluster.coordinator import CoordinatorError, FencedOut, Incarnation, IsrMoved
from memring.protocol.replication import Position

log = logging.getLogger("memring.backend.replication")

CHECK_INTERVAL = 0.02  # how often the leader looks at its followers' lag
QUIET_INTERVAL = 5.0  # with nothing to watch (every follower in the ISR holds the newest write),
# the keeper sleeps until a write, a link or a view wakes it, or this long (a safety net: at 24
# leaders, a check every 20 ms took ~0.5% of a core each doing nothing; then once a second was
# ~1/5 of an idle leader's trio wake-ups; as the role watchers' net: docs/scaling.md)
MAX_COMMITS = 1 << 17  # commit-time samples kept for lag measurement

IsrWriter = Callable[[set[Incarnation]], Awaitable[object]]
IsCurrent = Callable[[Incarnation], bool]


@dataclass(eq=False, slots=True)
class FollowerLink:
    """What the leader knows of one follower connection; `hang_up` closes that connection
    (called when a newer connection of the same node supersedes it)."""

    incarnation: Incarnation
    acked: Position
    snapshotting: bool = False
    hang_up: Callable[[], object] = lambda: None


@dataclass(order=True, slots=True)
class _Waiter:
    target: Position
    order: int
    then: Callable[[bool], object] = field(compare=False)  # told the verdict, once


class InSyncReplicas:
    """One leader epoch's view of its followers: acks, lag, the ISR and the writes waiting."""

    def __init__(self, *, max_lag: float, max_lag_bytes: int,
                 lease_valid: Callable[[], bool] = lambda: True,
                 current: IsCurrent = lambda incarnation: True) -> None:
        self.max_lag = max_lag
        self.current = current  # is this incarnation its node's live one (else never added)
        self.lease_valid = lease_valid  # checked when a write is released, not later
        self.max_lag_bytes = max_lag_bytes
        self.links: dict[str, FollowerLink] = {}  # node id -> its newest connection
        self.waiting: dict[str, Incarnation] = {}  # followers writes wait for
        self.committed_isr: set[Incarnation] = set()  # as last written to etcd (or elected)
        self.adding: dict[str, Position] = {}  # added to `waiting`, not yet to etcd: at what
        self.newest = Position(0, 0)
        self.watermark = Position(0, 0)  # acknowledged by every follower in `waiting`
        self._waiters: list[_Waiter] = []
        self._order = count()
        self._commits: deque[tuple[Position, float, int]] = deque(maxlen=MAX_COMMITS)
        self._bytes = 0
        self._trimmed_bytes = 0  # bytes so far at the newest commit dropped from `_commits`
        self.changed = trio.lowlevel.ParkingLot()  # acks, links or the ISR moved
        self.shrinks = 0
        self.expansions = 0
        self.scope = trio.CancelScope()  # the keeper task's (cancelled on stepping down)
        self._rewrite = False  # etcd's ISR may not be `committed_isr` (IsrMoved)
        self._quiet = False  # the keeper sleeps until `wake()` (or QUIET_INTERVAL)
        self._view_woke = False  # woken by a cluster view: look on the next tick, not at once

    # -- the write path --------------------------------------------------------------------

    def committed(self, position: Position, size: int) -> None:
        self.newest = position
        self._bytes += size
        self._commits.append((position, trio.current_time(), self._bytes))
        if not self.waiting:
            self.watermark = position
        if self._quiet:  # lag can grow again: back to checking every CHECK_INTERVAL
            self.wake()

    def wake(self) -> None:
        """Something the keeper's checks read changed (a write, a link, the cluster view)."""
        self._quiet = False
        self.changed.unpark_all()

    def view_changed(self) -> None:
        """A new cluster view. A quiet keeper looks at it CHECK_INTERVAL later, as when it
        polled every CHECK_INTERVAL, not at once: views come in the middle of etcd's changes
        (leases revoked one call at a time), and acting on the first one dropped followers
        from the ISR just before the leader's own lease went, which made the next election
        unclean (tests/integration/test_etcd_members.py, half the runs)."""
        if self._quiet:
            self._view_woke = True
            self.wake()

    async def replicated(self, target: Position) -> bool:
        """Wait until every follower in `waiting` holds `target`; False if it never will
        (this node stopped leading, or its lease ran out before the followers acknowledged).
        The verdict is taken when the followers' acknowledgement arrives: a graceful step-down
        right after it does not turn a replicated write into a failure."""
        if target <= self.watermark:
            return self.lease_valid()
        done = trio.Event()
        verdict: list[bool] = []

        def settled(ok: bool) -> None:
            verdict.append(ok)
            done.set()

        self.when_replicated(target, settled)
        await done.wait()
        return verdict[0]

    def when_replicated(self, target: Position, then: Callable[[bool], object]) -> None:
        """`replicated` for a caller that does not await: `then(verdict)` is called once,
        synchronously, from whatever releases the write (an ack, an ISR change, stepping
        down); it must not raise."""
        heapq.heappush(self._waiters, _Waiter(target, next(self._order), then))

    def _release(self) -> None:
        waiters = self._waiters
        mark = self.watermark
        valid = self.lease_valid()
        while waiters and waiters[0].target <= mark:
            heapq.heappop(waiters).then(valid)

    def fail_all(self) -> None:
        """Leadership is gone: no waiting write will be acknowledged."""
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.then(False)

    def _advance(self) -> None:
        links = self.links
        mark = self.newest
        for node_id, incarnation in self.waiting.items():
            link = links.get(node_id)
            if link is None or link.incarnation != incarnation:
                return  # a member that is not connected holds the watermark back
            if link.acked < mark:
                mark = link.acked
        if mark > self.watermark:
            self.watermark = mark
            self._release()

    # -- follower links (leader_side) ------------------------------------------------------

    def connected(self, incarnation: Incarnation, position: Position, snapshotting: bool,
                  hang_up: Callable[[], object] = lambda: None) -> FollowerLink:
        """A connection whose HELLO named a current incarnation (leader_side checks
        `current` first): it supersedes the node's older connection, which is hung up, so a
        follower that reconnects over a half-open connection wins and the one link left is
        always the connection that acks."""
        node_id = incarnation.node_id
        link = FollowerLink(incarnation, min(position, self.newest), snapshotting, hang_up)
        older = self.links.get(node_id)
        self.links[node_id] = link
        if older is not None:
            older.hang_up()
        if node_id in self.waiting:
            # HELLO's position is the follower's ack of all it holds: it sends no ACK for
            # what it held when its previous connection was superseded (that connection's
            # ack no longer counts), so without this a write acked there waited for the next
            # write's ack, which a client waiting on it never sends (a 10 s stall)
            self._advance()
        self.changed.unpark_all()
        return link

    def acked(self, link: FollowerLink, position: Position) -> None:
        """An ACK read on `link`'s connection: it moves that link only (a superseded
        connection's acks count for nothing)."""
        link.acked = position
        node_id = link.incarnation.node_id
        if self.links.get(node_id) is not link:
            return
        if node_id in self.waiting:
            self._advance()
        self._trim(min(link.acked for link in self.links.values()))

    def _trim(self, floor: Position) -> None:
        """Forget commit samples every connected follower has acknowledged (lag needs only
        the others), so the lag search stays short."""
        commits = self._commits
        while commits and commits[0][0] <= floor:
            self._trimmed_bytes = commits.popleft()[2]

    def disconnected(self, link: FollowerLink) -> None:
        """`link`'s connection ended; a newer connection of the same node stays."""
        node_id = link.incarnation.node_id
        if self.links.get(node_id) is link:
            del self.links[node_id]
            self.changed.unpark_all()

    # -- lag ---------------------------------------------------------------------------------

    def lag(self, position: Position) -> tuple[int, float, int]:
        """(mutations, seconds, bytes) a follower at `position` is behind."""
        newest = self.newest
        if position >= newest:
            return 0, 0.0, 0
        seq = newest.seq - position.seq if position.epoch == newest.epoch else newest.seq
        commits = self._commits
        if not commits:
            return seq, 0.0, self._bytes - self._trimmed_bytes
        if commits[0][0] > position:  # behind every sample: at least this far
            return seq, trio.current_time() - commits[0][1], self._bytes - self._trimmed_bytes
        lo, hi = 0, len(commits) - 1  # the first commit after `position`
        while lo < hi:
            mid = (lo + hi) // 2
            if commits[mid][0] > position:
                hi = mid
            else:
                lo = mid + 1
        previous_bytes = commits[lo - 1][2] if lo else self._trimmed_bytes
        return seq, trio.current_time() - commits[lo][1], self._bytes - previous_bytes

    def too_far_behind(self, link: FollowerLink) -> bool:
        _seq, seconds, size = self.lag(link.acked)
        return link.snapshotting or seconds > self.max_lag or size > self.max_lag_bytes

    # -- keeping the ISR (a task per leadership) ---------------------------------------------

    def start(self, elected_with: set[Incarnation], me: Incarnation) -> None:
        self.committed_isr = set(elected_with) | {me}
        self.waiting = {m.node_id: m for m in elected_with if m != me}
        self._advance()

    async def keep(self, me: Incarnation,
                   write_isr: IsrWriter) -> None:
        """Shrink and expand the ISR as followers come, go and lag; until cancelled."""
        while True:
            await self._check(me, write_isr)
            self._quiet = self._settled()
            with trio.move_on_after(QUIET_INTERVAL if self._quiet else CHECK_INTERVAL):
                await self.changed.park()
            self._quiet = False
            if self._view_woke:
                self._view_woke = False
                await trio.sleep(CHECK_INTERVAL)

    def _settled(self) -> bool:
        """Nothing for `_check` to do until something wakes it: every connected follower is
        waited for and holds the newest write (no lag can grow without a write), none is
        being added, and etcd's ISR is the one committed."""
        links, newest = self.links, self.newest
        return not self.adding and not self._rewrite and links.keys() == self.waiting.keys() \
            and all(link.incarnation == self.waiting[node_id] and not link.snapshotting
                    and link.acked >= newest for node_id, link in links.items())

    async def _check(self, me: Incarnation,
                     write_isr: IsrWriter) -> None:
        links = self.links
        current = self.current
        dropped = {node_id for node_id, member in self.waiting.items()
                   if (link := links.get(node_id)) is None or link.incarnation != member
                   or not current(member) or self.too_far_behind(link)}
        # never reached etcd: dropped locally (not while etcd may hold a late write of ours
        # that added it, `_rewrite`: then through etcd as any member)
        local = set() if self._rewrite else dropped & self.adding.keys()
        for node_id in local:
            del self.adding[node_id]
            del self.waiting[node_id]
            dropped.discard(node_id)
            log.info("follower %s fell behind before joining the ISR", node_id)
        if local:
            self._advance()  # the writes that waited for it alone go now
        if dropped:
            keep = {m for m in self.committed_isr if m.node_id not in dropped}
            if await self._write(write_isr, keep | {me}):
                for node_id in dropped:
                    member = self.waiting.pop(node_id)
                    self.adding.pop(node_id, None)
                    log.warning("ISR: dropped %s (lease %x): %s", node_id, member.lease_id,
                                self._why(member))
                self.shrinks += 1
                self._advance()
        for node_id, link in links.items():  # followers close enough: start waiting for them
            if node_id not in self.waiting and not self.too_far_behind(link) \
                    and current(link.incarnation):
                self.waiting[node_id] = link.incarnation
                self.adding[node_id] = self.newest
                self._advance()
        ready = {node_id for node_id, position in self.adding.items()
                 if (link := links.get(node_id)) is not None and link.acked >= position
                 and link.incarnation == self.waiting[node_id]
                 and current(self.waiting[node_id])}
        if ready:
            members = self.committed_isr | {self.waiting[n] for n in ready} | {me}
            if await self._write(write_isr, members):
                for node_id in ready:
                    del self.adding[node_id]
                    log.info("ISR: added %s", node_id)
                self.expansions += 1
        if self._rewrite:
            await self._write(write_isr, self.committed_isr | {me})

    def _why(self, member: Incarnation) -> str:
        link = self.links.get(member.node_id)
        if link is None:
            return "disconnected"
        if link.incarnation != member:
            return f"reconnected as lease {link.incarnation.lease_id:x}"
        if not self.current(member):
            return "its lease is gone"
        return "lagging"

    async def _write(self, write_isr: IsrWriter,
                     members: set[Incarnation]) -> bool:
        try:
            await write_isr(members)
        except FencedOut:
            raise
        except IsrMoved as exc:
            # a write of ours that timed out landed after all: what etcd holds is not
            # `committed_isr`; rewrite it on the next check (writes wait as before)
            log.warning("ISR update failed (%s): rewriting it", exc)
            self._rewrite = True
            return False
        except CoordinatorError as exc:
            log.warning("ISR update failed (%s): writes wait for the old ISR", exc)
            return False
        self.committed_isr = set(members)
        self._rewrite = False
        return True
