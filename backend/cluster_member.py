"""A backend as a member of an etcd-coordinated cluster: membership, election, write fencing.

Theory of operation. `ClusterMember.run` loops forever over sessions (an etcd lease kept alive
every ttl/3; cluster.coordinator.Session). In each session it registers `nodes/<node>`, makes
sure its shard's record lists it, and then follows the cluster view: when the shard has no
leader it campaigns (the campaign txn checks that this incarnation is in the shard's ISR);
when it leads it keeps the ISR equal to the shard's live members (until replication exists),
fenced on its epoch; when another node leads it keeps a connection open to that leader's
client port (backend.leader_liveness: no wake-up while the leader lives) and, once that
connection ends and the port refuses connections (the process is gone), revokes the leader's
lease so the shard need not wait a whole TTL; epochs keep that safe if the guess is wrong. A
timeout is not a refusal: a frozen leader is left to its own lease expiry.

Operations (cluster.keyspace): a member whose shard record lists it as drained never
campaigns; a leader that is drained, or that sees an election hint naming another live node
(`memring leader transfer`), stops acknowledging writes at once and resigns (fenced on its
epoch), and never takes back an epoch it resigned. While a hint lives only the node it names
campaigns, unclean (outside the ISR) if the hint says so and no ISR member is alive. In an
unclean election (no ISR member alive, policy "auto") a member campaigns only if no other
member answers `stats` with a newer replication position (for a while also members whose
session lapsed and that are not registered yet): the most complete data survives.

Writes are acknowledged only while this node holds the shard's leader key under a session
that is still valid on the local clock (`refusal()`, asked by the command handler before each
mutating command). When the session is lost (watchdog, revoked lease, etcd unreachable past
the deadline) the member steps down at once, then opens a new session and rejoins as soon as
etcd answers again, retrying with capped backoff and logging a bounded number of errors.
`leave()` is the graceful exit: refuse writes and campaign no more, resign, revoke the
lease, stop.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import trio

from memring.backend.leader_liveness import until_gone
from memring.cluster.coordinator import (
    ClusterConfig,
    ClusterView,
    Coordinator,
    CoordinatorError,
    FencedOut,
    Incarnation,
    LeaderRecord,
    Leadership,
    NodeRecord,
    Session,
    ShardView,
    collapse_single,
)
from memring.cluster.node_stats import fetch_all
from memring.protocol import write_refusals
from memring.protocol.ascii_auth import Login
from memring.protocol.replication import Position, parse_position
from memring.protocol.write_refusals import not_leader_line, refusal_line

log = logging.getLogger("memring.backend.cluster")

PROBE_INTERVAL = 0.01  # a follower reconnects its kept connection to the leader this soon
# after it ended (doubling to 1 s while reconnects end at once: backend.leader_liveness)
RETRY_INTERVAL = 0.2  # re-examine the view this soon after a failed coordination call
BACKOFF_FIRST = 0.1   # reconnecting to etcd: first delay, doubled up to BACKOFF_MAX
BACKOFF_MAX = 1.0
LOG_EVERY = 30.0      # while etcd stays unreachable, repeat the error this seldom
HANDOVER_DRAIN = 1.0  # a resigning leader waits this long at most for in-flight writes
EARLIER_LEASES_KEPT = 8  # earlier leases of this process published in its node record
UNCLEAN_ASK_TIMEOUT = 0.3  # an unclean candidate asks the other members' positions this long
UNCLEAN_GRACE = 5.0  # for this long it also asks members not registered: an in-sync member
# alive between two sessions holds the election off. Re-registering took ~0.4 s after a freeze
# past the TTL, 0.62 s when etcd 3.4 revoked every live lease at once under load (#12528): a
# 1 s grace ran out 0.15 s before it, and the unclean election lost 13 acknowledged writes
# (bench/many_failovers.py, round nine). Past it, a member that answers its peers but never
# reaches etcd no longer keeps the shard leaderless.

LEASE_EXPIRED = refusal_line(write_refusals.LEASE_EXPIRED)


def _no_login() -> Login | None:
    return None


@dataclass(frozen=True, slots=True)
class MemberIdentity:
    """Who this node is in the cluster, as published in its NodeRecord."""

    node_id: str
    shard: str
    address: str  # HOST:PORT clients reach it on
    peer_address: str = ""
    weight: int = 1
    version: str = ""


class LeaderPeer(NamedTuple):
    """The shard's leader as a follower's view registers it: where to replicate from, and
    the identity its WELCOME must prove (the leader key's node, lease and epoch)."""

    address: str  # its peer address
    epoch: int
    node_id: str
    lease_id: int


class LeadershipListener(Protocol):
    """Told synchronously when this node starts or stops acknowledging writes (replication)."""

    def became_leader(self, epoch: int) -> None: ...

    def stepped_down(self) -> None: ...

    def stats(self) -> list[tuple[str, object]]: ...

    def refusal(self) -> bytes | None:
        """A reason to refuse writes although this node leads (too few in-sync replicas)."""

    async def drain(self, timeout: float) -> None:
        """Before a graceful step-down: let the followers acknowledge the writes in flight."""

    def position(self) -> Position:
        """The replication position of this node's store (unclean elections compare it)."""

    def configure(self, config: ClusterConfig | None) -> None:
        """Every new cluster view's config (the replication mode may follow it)."""


class ClusterMember:
    """One backend's part in its shard: a session, a NodeRecord, a campaign, a write fence."""

    def __init__(self, coordinator: Coordinator, identity: MemberIdentity, *,
                 lease_ttl: float = 2.0, probe_interval: float = PROBE_INTERVAL) -> None:
        self.coordinator = coordinator
        self.identity = identity
        self.lease_ttl = lease_ttl
        self.probe_interval = probe_interval
        self.session: Session | None = None
        self._leadership: Leadership | None = None
        self.listener: LeadershipListener | None = None  # replication, when enabled
        self.view: ClusterView | None = None  # the newest cluster view this member reacted to
        self.epoch = 0  # of the shard's current leader as last seen; 0 without one
        self.joined = trio.Event()  # set once the first session has registered the node
        self._followed: LeaderRecord | None = None  # another node that leads (`_leader`)
        self._leader_changed = trio.Event()  # set (and replaced) when `_leader` changes
        self._watching = trio.CancelScope()  # the watch on `_leader`'s process
        self._revoked: set[int] = set()  # leader leases this member already revoked
        self._resigned: set[int] = set()  # epochs this member gave up (never taken back)
        self._run_scope = trio.CancelScope()
        self._leaving = False
        self._handing_over = False  # refusing writes while in-flight ones replicate
        self._unclean_since: float | None = None  # when an unclean election became possible
        # One campaign at a time: the one after a revocation (_campaign_after_revoke) and the
        # view's (_react, once the watch shows the leader gone) raced in every failover, and
        # the loser's failed txn and re-read were 3 etcd calls for nothing.
        self._campaigning = trio.Lock()
        self._last_addresses: dict[str, str] = {}  # shard members' client addresses, as last seen
        self._not_leader = not_leader_line(identity.shard)
        self._leases: list[int] = []  # every lease this process registered with, oldest first
        self._deposed_epoch = 0  # the epoch this node led before stepping down, until caught up
        self._fresh = True  # no leader's stream reached the store yet (read_refusal)
        # with --auth-file: the user it asks the shard's other members for `stats` as (its
        # own file's first; members of a cluster share the file)
        self.stats_login: Callable[[], Login | None] = _no_login
        # with --tls: the members' client ports serve TLS (with --tls-verify require, only to
        # a certificate of the cluster's CA): it asks them over TLS, showing its own
        self.stats_tls: ssl.SSLContext | None = None

    @property
    def leadership(self) -> Leadership | None:
        return self._leadership

    @leadership.setter
    def leadership(self, value: Leadership | None) -> None:
        before, self._leadership = self._leadership, value
        if before is not None and value is None:  # reads wait until caught up (read_refusal)
            self._deposed_epoch = max(self._deposed_epoch, before.epoch)
        listener = self.listener
        if listener is None or before == value:
            return
        if before is not None:
            listener.stepped_down()
        if value is not None:
            listener.became_leader(value.epoch)

    @property
    def _leader(self) -> LeaderRecord | None:
        """Another node that leads the shard, whose process `_watch_leader` watches."""
        return self._followed

    @_leader.setter
    def _leader(self, leader: LeaderRecord | None) -> None:
        if leader != self._followed:
            self._followed = leader
            self._watching.cancel()
            self._leader_changed.set()
            self._leader_changed = trio.Event()

    def leader_peer(self) -> LeaderPeer | None:
        """The shard's leader as the view registers it, when another node leads, else None."""
        view = self.view
        if self._leadership is not None or view is None:
            return None
        shard = view.shards.get(self.identity.shard)
        leader = shard.leader if shard is not None else None
        if shard is None or leader is None or leader.node_id == self.identity.node_id:
            return None
        node = view.nodes.get(leader.node_id)
        if node is None or not node.peer_address:
            return None
        return LeaderPeer(node.peer_address, shard.epoch, leader.node_id, leader.lease_id)

    # -- what the server asks -----------------------------------------------------------

    @property
    def role(self) -> str:
        if self.leadership is not None:
            return "leader"
        return "syncing" if self.session is None or self._leaving or self._catching_up() \
            else "follower"

    def _catching_up(self) -> bool:
        """Stepped down, and the store does not hold a later epoch's stream yet; or a new
        process whose store never held any leader's stream (epoch 0). The latter matters when
        a killed leader restarts at once on its address, empty: until its old lease runs out
        the leader key still names that address, and the proxy's reads reach it (a Jepsen run
        read misses there for ~0.1 s, values the shard held)."""
        listener = self.listener  # None: no replication, no store to catch up with
        if listener is None:
            return False
        if self._fresh:
            if listener.position().epoch == 0:
                return True
            self._fresh = False
        deposed = self._deposed_epoch
        if deposed:
            if listener.position().epoch <= deposed:
                return True
            self._deposed_epoch = 0
        return False

    def holds_lease(self) -> bool:
        """This node leads under a session still valid on the local clock (a write applied
        earlier may be acknowledged; also while handing over, when new ones are refused)."""
        session = self.session
        return self.leadership is not None and session is not None and session.is_valid()

    def refusal(self) -> bytes | None:
        """None if a write may be acknowledged now, else the SERVER_ERROR line to send."""
        session = self.session
        if self.leadership is None or session is None or self._handing_over or self._leaving:
            return self._not_leader
        if not session.is_valid():
            return LEASE_EXPIRED
        listener = self.listener
        return listener.refusal() if listener is not None else None

    def read_refusal(self) -> bytes | None:
        """None if a read may be answered from this store now. A leader answers while its
        lease holds on its own clock (no other node can lead before it runs out); a node that
        stepped down answers again once its store has caught up with a later epoch's leader
        (the new leader's EpochStart, or its snapshot replacing a tail of writes nobody
        acknowledged). Other followers answer (follower reads) once their store holds a leader's
        stream: a new process answers no read before that."""
        if self.leadership is not None:
            session = self.session
            return None if session is not None and session.is_valid() else LEASE_EXPIRED
        return self._not_leader if self._catching_up() else None

    def role_stats(self) -> list[tuple[str, object]]:
        lines: list[tuple[str, object]] = [
            ("memring_role", self.role), ("memring_shard", self.identity.shard),
            ("memring_node_id", self.identity.node_id), ("memring_epoch", self.epoch)]
        if self.listener is not None:
            lines += self.listener.stats()
        return lines

    def _earlier_leases(self, session: Session) -> tuple[int, ...]:
        """Leases this process held before `session`'s: the store is the same one, so an ISR
        entry naming one of them names this copy of the data (NodeRecord.earlier_leases)."""
        return tuple(lease for lease in self._leases if lease != session.lease_id)

    # -- the session loop ---------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Take part in the cluster until `leave()` (or cancellation)."""
        task_status.started()
        failures = 0
        logged_at = -math.inf
        resume = 0  # the lease of a session lost on our clock only: kept if etcd still has it
        with self._run_scope:
            while not self._leaving:
                session = None
                try:
                    async with self.coordinator.open_session(self.lease_ttl,
                                                             resume=resume) as session:
                        if failures:
                            log.info("etcd answers again: rejoining shard %s",
                                     self.identity.shard)
                        failures = 0
                        resume = 0
                        await self._take_part(session)
                except CoordinatorError as exc:
                    failures += 1
                    now = trio.current_time()
                    if failures == 1 or now - logged_at >= LOG_EVERY:
                        logged_at = now
                        log.error("cluster %s: %s; serving reads, refusing writes, retrying",
                                  self.coordinator.keyspace.cluster, exc)
                finally:
                    self._step_down("session ended")
                    self.session = None
                    if session is not None and (session.lost.is_set() or failures):
                        resume = session.lease_id  # a failed call too: the lease may live on
                if not self._leaving:
                    await trio.sleep(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures, 4))
                                     if failures else BACKOFF_FIRST)

    async def leave(self, timeout: float = 2.0) -> None:
        """Graceful exit: stop acknowledging writes, resign, revoke the lease, stop running."""
        self._leaving = True
        leadership, session = self.leadership, self.session
        with trio.move_on_after(timeout) as scope:
            scope.shield = True
            await self._hand_over(timeout / 2)
            try:
                if leadership is not None:
                    await self.coordinator.resign(leadership)
                if session is not None:
                    await self.coordinator.revoke(session.lease_id)
            except CoordinatorError as exc:
                log.warning("leaving the cluster: %s (our keys go when the lease expires)", exc)
        self._run_scope.cancel()

    async def _take_part(self, session: Session) -> None:
        ident = self.identity
        with trio.CancelScope() as lost:
            session.cancel_on_loss(lost)
            await self.coordinator.register_node(session, NodeRecord(
                ident.node_id, ident.address, ident.shard, ident.peer_address, ident.weight,
                ident.version, time.time(), self._earlier_leases(session)))
            if session.lease_id not in self._leases:
                self._leases.append(session.lease_id)
                del self._leases[:-EARLIER_LEASES_KEPT - 1]
            await self.coordinator.ensure_shard(ident.shard, member=ident.node_id,
                                                weight=ident.weight)
            self.session = session
            if self.listener is not None:  # its role watchers see the new incarnation now
                self.listener.configure(self.view.config if self.view is not None else None)
            self.joined.set()
            log.info("joined cluster %s as node %s of shard %s (lease %x)",
                     self.coordinator.keyspace.cluster, ident.node_id, ident.shard,
                     session.lease_id)
            with collapse_single():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._watch_leader)
                    async with self.coordinator.follow(retry_interval=RETRY_INTERVAL) as views:
                        await self._follow(session, views)
        if session.lost.is_set() and not self._leaving:
            log.warning("stepped down: session lost (%s); rejoining", session.lost_reason)

    async def _follow(self, session: Session,
                      views: trio.MemoryReceiveChannel[ClusterView]) -> None:
        view = await views.receive()
        while True:
            while True:  # only the newest view matters
                try:
                    view = views.receive_nowait()
                except trio.WouldBlock:
                    break
            self.view = view
            self._last_addresses.update((n.node_id, n.address) for n in view.nodes.values()
                                        if n.shard == self.identity.shard)
            if self.listener is not None:
                self.listener.configure(view.config)
            try:
                settled = await self._react(session, view)
            except FencedOut as exc:
                self._step_down(str(exc))
                settled = True
            except CoordinatorError as exc:
                log.warning("shard %s: %s; retrying", self.identity.shard, exc)
                settled = False
            if settled:
                view = await views.receive()
            else:
                with trio.move_on_after(RETRY_INTERVAL):
                    view = await views.receive()

    # -- reacting to the view -----------------------------------------------------------

    async def _react(self, session: Session, view: ClusterView) -> bool:
        """Campaign, follow or keep the ISR as `view` requires; False to retry soon."""
        if self._leaving:
            # leave() resigned and will revoke the lease: between the two the shard has no
            # leader, and campaigning then would take it back under a lease about to go
            return True
        ident = self.identity
        shard = view.shards.get(ident.shard)
        leader = shard.leader if shard else None
        if self.leadership is not None and view.revision < self.leadership.epoch:
            return True  # a view from before our own election: nothing to learn from it
        if self.leadership is not None:
            if shard is None or shard.epoch != self.leadership.epoch:
                self._step_down(f"epoch {self.leadership.epoch} no longer leads")
            else:
                self.epoch = shard.epoch
                reason = self._handover(view, shard)
                if reason:
                    await self._resign(reason)
                    return True
                await self._keep_isr(session, view, shard)
                return True
        self.epoch = shard.epoch if shard else 0
        if leader is not None:
            self._unclean_since = None  # an election happened: the next one waits afresh
        if leader is None:
            self._leader = None
            if not session.is_valid():
                return False
            if shard is not None and (shard.drained(ident.node_id) or (
                    shard.hint is not None and shard.hint.node_id != ident.node_id)):
                return True  # drained, or the hint names another node: not campaigning
            unclean = self._unclean_allowed(session, view, shard)
            if not unclean:
                self._unclean_since = None
            elif not await self._may_take_unclean(view, shard):
                return False  # look again soon
            else:  # said only now: a member that defers to another takes no data loss
                log.warning("shard %s: no in-sync replica is alive; unclean election (data "
                            "written since the ISR was last updated is lost)", ident.shard)
            async with self._campaigning:
                if self.leadership is not None:
                    return True  # the campaign after the revocation won meanwhile
                won = await self.coordinator.campaign(
                    session, ident.shard, ident.node_id, ident.address, unclean=unclean,
                    earlier_leases=self._earlier_leases(session), alone=self._alone(shard))
            if won is not None:
                self.leadership = won
                self.epoch = won.epoch
                log.info("leader of shard %s (epoch %d)", ident.shard, won.epoch)
            return True
        if leader.node_id == ident.node_id:
            if shard is not None and shard.epoch in self._resigned:
                # a view from before our resignation took effect (or the resign failed)
                await self.coordinator.resign(Leadership(ident.shard, ident.node_id,
                                                         shard.epoch, leader.lease_id))
                return True
            if shard is not None and leader.lease_id == session.lease_id:
                # our campaign won but we did not hear so (its reply was lost)
                self.leadership = Leadership(ident.shard, ident.node_id, shard.epoch,
                                             session.lease_id)
                await self._keep_isr(session, view, shard)
                return True
            # an earlier life of this node still holds the key: it is surely dead
            log.info("revoking lease %x of an earlier life of this node", leader.lease_id)
            await self.coordinator.revoke(leader.lease_id)
            return True
        if self._leader is None or self._leader.lease_id != leader.lease_id:
            log.info("shard %s: following leader %s at %s (epoch %d)", ident.shard,
                     leader.node_id, leader.address, self.epoch)
        self._leader = leader
        return True

    def _alone(self, shard: ShardView | None) -> bool:
        """Campaign `alone` (the ISR left to the winner in the campaign's txn): with
        replication, when the ISR names a leader whose lease this member revoked (its process
        was gone). The new leader's first ISR check would drop every member not connected, and
        none is yet (in_sync): this saves the etcd write its first writes waited for."""
        return self.listener is not None and shard is not None and shard.isr is not None and \
            any(member.lease_id in self._revoked for member in shard.isr.members)

    def _handover(self, view: ClusterView, shard: ShardView) -> str:
        """Why this leader must resign now ("" if it need not)."""
        if shard.drained(self.identity.node_id):
            return "this node is drained"
        hint = shard.hint
        if hint is not None and hint.node_id != self.identity.node_id and \
                hint.node_id in view.nodes:
            return f"leadership is being transferred to {hint.node_id}"
        return ""

    async def _resign(self, reason: str) -> None:
        """Stop acknowledging writes at once, then give the leader key up."""
        leadership = self.leadership
        assert leadership is not None
        self._resigned.add(leadership.epoch)
        log.info("resigning as leader of shard %s (epoch %d): %s", self.identity.shard,
                 leadership.epoch, reason)
        await self._hand_over(HANDOVER_DRAIN)
        self._step_down(reason)
        await self.coordinator.resign(leadership)

    async def _hand_over(self, timeout: float) -> None:
        """Refuse new writes now (the proxy retries them on the next leader) and let the
        followers acknowledge those in flight, so none is cut off unanswered; then stop
        leading."""
        if self.leadership is None:
            return
        self._handing_over = True
        try:
            if self.listener is not None:
                await self.listener.drain(timeout)
        finally:
            self._handing_over = False
            self.leadership = None

    def _live_members(self, session: Session, view: ClusterView) -> set[Incarnation]:
        ident = self.identity
        live = {session.incarnation(ident.node_id)}
        for node in view.nodes.values():
            lease = view.lease_of(view.keyspace.node(node.node_id))
            if node.shard == ident.shard and lease:
                live.add(Incarnation(node.node_id, lease))
        return live

    async def _keep_isr(self, session: Session, view: ClusterView, shard: ShardView) -> None:
        """Without replication the ISR is every live member of the shard (with it, the
        replication listener keeps the ISR: backend.replication.in_sync)."""
        assert self.leadership is not None
        if self.listener is not None:
            return
        live = self._live_members(session, view)
        if shard.isr is None or set(shard.isr.members) != live:
            await self.coordinator.update_isr(self.leadership, live)
            log.info("ISR of shard %s: %s (its live members)", self.identity.shard,
                     ", ".join(sorted(member.node_id for member in live)))

    def _unclean_allowed(self, session: Session, view: ClusterView,
                         shard: ShardView | None) -> bool:
        """No ISR incarnation is alive and the policy is "auto" (or an operator's `shard elect
        --unclean` names this node): any live member may lead."""
        if shard is None or shard.isr is None:
            return False
        node_id = self.identity.node_id
        mine = {Incarnation(node_id, lease)
                for lease in (session.lease_id, *self._earlier_leases(session))}
        if mine & set(shard.isr.members):
            return False
        hint = shard.hint
        operator = hint is not None and hint.node_id == self.identity.node_id and hint.unclean
        if (view.config or ClusterConfig()).unclean_election != "auto" and not operator:
            return False
        return not view.live_incarnations() & set(shard.isr.members)

    async def _may_take_unclean(self, view: ClusterView, shard: ShardView | None) -> bool:
        """An unclean election is the operator's (`shard elect --unclean` named this node), or
        no other member of the shard holds more of the data (`_most_advanced`). For the first
        UNCLEAN_GRACE the members asked include those not registered right now, at the
        address they last had: a member whose session lapsed while it was frozen or cut off
        answers `stats` before it is registered again; a dead one refuses at once."""
        if shard is not None and shard.hint is not None and \
                shard.hint.node_id == self.identity.node_id:
            return True
        now = trio.current_time()
        if self._unclean_since is None:
            self._unclean_since = now
        return await self._most_advanced(view, absent_too=now - self._unclean_since
                                         < UNCLEAN_GRACE)

    async def _most_advanced(self, view: ClusterView, absent_too: bool) -> bool:
        """Does no other member of the shard (registered, or `absent_too`) that is not drained
        hold a newer replication position (ties: the smallest node id)? Members that do not
        answer `stats` within a fraction of a second are not waited for."""
        listener = self.listener
        shard = view.shards.get(self.identity.shard)
        if listener is None or shard is None:
            return True
        mine = listener.position()
        me = self.identity.node_id
        registered = {n.node_id: n.address for n in view.nodes.values()
                      if n.shard == self.identity.shard}
        members = {**self._last_addresses, **registered} if absent_too else registered
        others = {address: node_id for node_id, address in members.items()
                  if node_id != me and not shard.drained(node_id)}
        in_sync = {m.node_id for m in shard.isr.members} if shard.isr is not None else set()
        asked = await fetch_all(list(others), UNCLEAN_ASK_TIMEOUT, self.stats_login(),
                               self.stats_tls)
        for address, stats in asked.items():
            position = parse_position(stats.get("memring_repl_position", "")) if stats else None
            node = others[address]
            if position is None:
                continue
            if node in in_sync and node not in registered and position >= mine:
                # an in-sync member alive between two sessions (its lease lapsed while it
                # was cut off): it registers again within moments and leads cleanly under
                # its earlier lease (NodeRecord.earlier_leases); not taking its place
                log.info("unclean election: in-sync member %s is alive, holding %s (we hold "
                         "%s): not campaigning", node, tuple(position), tuple(mine))
                return False
            if position > mine or (position == mine and node < me):
                log.info("unclean election: %s holds %s (we hold %s): not campaigning",
                         node, tuple(position), tuple(mine))
                return False
        return True

    def _step_down(self, reason: str) -> None:
        if self.leadership is not None:
            log.warning("no longer leader of shard %s: %s", self.identity.shard, reason)
        self.leadership = None
        self._leader = None

    # -- fast failover ------------------------------------------------------------------

    async def _watch_leader(self) -> None:
        """Revoke the lease of a leader whose process is gone (leader_liveness.until_gone:
        one kept connection; nothing runs while the leader lives or no other node leads)."""
        while True:
            leader, changed = self._leader, self._leader_changed
            if leader is None or leader.lease_id in self._revoked:
                await changed.wait()
                continue
            with trio.CancelScope() as self._watching:
                await until_gone(leader.address, self.probe_interval, self.stats_tls)
            if self._watching.cancelled_caught or self._leader != leader:
                continue
            self._revoked.add(leader.lease_id)
            log.warning("leader %s of shard %s refuses connections at %s: revoking its lease",
                        leader.node_id, self.identity.shard, leader.address)
            try:
                await self.coordinator.revoke(leader.lease_id)
            except CoordinatorError as exc:
                self._revoked.discard(leader.lease_id)
                log.warning("could not revoke the lease of leader %s: %s", leader.node_id, exc)
                await trio.sleep(self.probe_interval)
                continue
            async with self._campaigning:  # after the view's campaign, if one runs
                await self._campaign_after_revoke()

    async def _campaign_after_revoke(self) -> None:
        """Campaign as soon as the dead leader's lease is revoked, without waiting for the
        watch to show its key gone (`_alone`): after etcd's leader froze, the watch moves to
        another member and re-reads the cluster first, which took up to 0.5 s (docs/scaling.md
        "Many failovers at once"). Only a clean campaign of an in-sync member that is not drained
        and that no hint passes over; the campaign txn checks all of it again (and that no
        one leads), so the view read here only saves a call that would fail. Anything else
        waits for the view, as before (`_react`)."""
        view, session, ident = self.view, self.session, self.identity
        if view is None or session is None or not session.is_valid() or self._leaving or \
                self.leadership is not None:
            return
        shard = view.shards.get(ident.shard)
        if shard is None or shard.isr is None or shard.drained(ident.node_id) or (
                shard.hint is not None and shard.hint.node_id != ident.node_id) or (
                shard.leader is not None and shard.leader.lease_id not in self._revoked):
            return  # (or the view's campaign found another leader meanwhile)
        mine = {Incarnation(ident.node_id, lease)
                for lease in (session.lease_id, *self._earlier_leases(session))}
        if not mine & set(shard.isr.members):
            return
        try:
            won = await self.coordinator.campaign(
                session, ident.shard, ident.node_id, ident.address,
                earlier_leases=self._earlier_leases(session), alone=self._alone(shard))
        except CoordinatorError as exc:  # the view's turn (_react) retries
            log.info("shard %s: campaign after the revocation failed: %s", ident.shard, exc)
            return
        if won is not None and self.leadership is None and not self._leaving:
            self._leader = None
            self.leadership = won
            self.epoch = won.epoch
            log.info("leader of shard %s (epoch %d)", ident.shard, won.epoch)
