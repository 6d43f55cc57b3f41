"""The replicator: one per backend in cluster mode, it switches the node between leading and
following its shard and owns the tasks of both roles.

Theory of operation: the Replicator owns the node's ReplicationLog (`mutation_log`) and its
FollowerState (`follower_apply`), and switches between the two roles as ClusterMember reports
them (`became_leader`/`stepped_down`, called synchronously when the member starts or stops
acknowledging writes, so no write escapes numbering):

- leader: the StoreRecorder is attached to the store; the command handler calls
  `committed(key)` after every mutating command, which numbers the changes in the log and
  wakes the follower connections of `leader_side` (a ParkingLot). The leadership's
  InSyncReplicas (`in_sync`) is made at once; one task of `run()` keeps the shard's ISR in
  etcd honest for each leadership in turn (followers join once caught up, leave when gone or
  lagging). In `sync` mode the server asks `settle()` (or, for a connection that parks
  rather than awaits, `settle_then()` with a callback) before it sends replies that follow a
  write: it waits until every in-sync follower acknowledged the write, or closes the
  connection unanswered when this node stops leading first. In `async` mode replies are not
  delayed (a failover may lose the tail followers lacked).
- follower: `follower_side` connects to the leader's peer address (from the cluster view),
  sends HELLO with the position of the last mutation applied, and applies the stream
  through FollowerState, which mirrors it into the same log, so the node can serve followers
  as soon as it is promoted: its new epoch continues from that position.

Tasks: `run()` owns one nursery with the peer server (a `leader_side` task per follower
connection), the `follower_side` task and the ISR task; the role callbacks only change state
and wake them (a leadership that begins before `run()` is taken up when it starts).
Stores change only through one role at a time: the follower side checks the role before it
applies each message, and the recorder is attached only on promotion. The two sides see this class only as their host
(`ports.LeaderSideHost`, `ports.FollowerSideHost`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import trio

from memring.backend.cluster_member import ClusterMember, LeaderPeer
from memring.backend.replication.follower_apply import FollowerState
from memring.backend.replication.follower_side import follow_leader
from memring.backend.replication.in_sync import InSyncReplicas
from memring.backend.replication.leader_side import serve_follower
from memring.backend.replication.mutation_log import ReplicationLog, StoreRecorder, mutation_size
from memring.backend.replication.peer_auth import (
    PeerKey,
    read_secret,
    readable_by_others,
)
from memring.backend.replication.peer_tls import PeerTls
from memring.backend.replication.ports import ReplicationCounters
from memring.backend.replication.snapshot import StoreSnapshot
from memring.backend.settings import BackendSettings
from memring.backend.store import Store
from memring.cluster.coordinator import (
    ClusterConfig,
    FencedOut,
    Incarnation,
    IsrMoved,
    Leadership,
)
from memring.netio import nonblocking
from memring.netio.connection_server import ConnectionCounters, ConnectionServer
from memring.netio.settings import reachable_from_other_machines, split_address
from memring.protocol import write_refusals
from memring.protocol.replication import (
    ORIGIN,
    Deletion,
    Error,
    ErrorCode,
    Flush,
    ItemState,
    Mutation,
    Position,
    encode,
)
from memring.protocol.write_refusals import refusal_line

log = logging.getLogger("memring.backend.replication")

# A leader promoted in the middle of a snapshot holds a partial store: its log restarts from
# a position no follower can hold, so every follower takes a snapshot from it.
NOWHERE = Position(0, (1 << 64) - 1)
# The peer port's own limits, apart from the client port's --max-connections (issue 12): a
# connection is pending until its handshake proves the peer secret and names a current member
# of this shard (leader_side); at most PEER_PENDING are kept, a new one evicting the oldest
# (each has the 2 s handshake deadline), so silent, unauthenticated or unregistered clients
# can never fill the port; admitted connections number at most one per member (a newer one
# supersedes the older), MAX_FOLLOWERS in all.
PEER_PENDING = 8
MAX_FOLLOWERS = 64
PEER_MAX_CONNECTIONS = PEER_PENDING + MAX_FOLLOWERS
PEER_FULL = encode(Error(ErrorCode.FULL, 0, f"more than {MAX_FOLLOWERS} followers"))
TOO_FEW_IN_SYNC = refusal_line(write_refusals.TOO_FEW_IN_SYNC)
UNACKED_PRUNE = 65536  # keys with a newest mutation on record before acknowledged ones go


class Replicator:
    """A backend's replication: leads or follows its shard as the ClusterMember says; the
    host of both sides."""

    def __init__(self, store: Store, member: ClusterMember, settings: BackendSettings) -> None:
        self.store = store
        self.member = member
        self.settings = settings
        self.log = ReplicationLog(max_bytes=settings.replication_backlog)
        self.recorder = StoreRecorder(store, self.log)
        self.follower = FollowerState(store, ORIGIN, self.log)
        self.leading = False
        # auto: the cluster config's mode (sync until a config says otherwise), followed live
        self.follows_config = settings.replication == "auto"
        self.sync = settings.replication in ("sync", "auto")
        self._changed = trio.lowlevel.ParkingLot()  # new mutations or a change of role
        self._role_changed = trio.lowlevel.ParkingLot()
        # leader side: followers, acks, lag and the ISR of the current leadership
        self.insync: InSyncReplicas | None = None
        self._leadership: Leadership | None = None  # whose ISR `insync` keeps
        self.commits = 0  # sync: write batches committed (backend.server waits on changes)
        # sync: each key's newest mutation (and the newest flush_all) until the in-sync
        # followers hold it: a reply that depends on one waits for it (no dirty reads)
        self._unacked: dict[bytes, Position] = {}
        self._unacked_flush = ORIGIN
        self._acked_when_deposed = ORIGIN  # the last leadership's watermark, at its end
        self.counters = ReplicationCounters()
        self.peer_counters = ConnectionCounters()  # the peer port's connections
        self.peers: ConnectionServer | None = None
        self._scope = trio.CancelScope()
        secret = read_secret(settings.peer_secret_file) if settings.peer_secret_file else b""
        if secret and readable_by_others(settings.peer_secret_file):
            log.warning("the peer secret file %s is readable by other users (chmod 600 it)",
                        settings.peer_secret_file)
        self.peer_key = PeerKey(secret, settings.cluster, member.identity.shard,
                                optional=settings.peer_secret_optional)
        if secret and settings.peer_secret_optional:
            log.warning("--peer-secret-optional: peers that send no proof are accepted (only "
                        "while the cluster moves to a peer secret)")
        # mutual TLS on the peer link (settings checked that the files load)
        self.peer_tls = PeerTls(settings.peer_tls_files) if settings.peer_tls else None

    # -- roles (ClusterMember.listener) -----------------------------------------------------

    def became_leader(self, epoch: int) -> None:
        follower = self.follower
        if follower.in_snapshot:
            log.warning("promoted during a snapshot: followers will take a full snapshot")
            self.log.reset(NOWHERE)
        if epoch <= self.log.newest.epoch:  # cannot happen with etcd revisions; be safe
            self.log.reset(Position(0, NOWHERE.seq - 1))
        self.log.begin_epoch(epoch)
        self._unacked.clear()  # a new leadership: its followers hold what it holds
        self._unacked_flush = ORIGIN
        # CAS values unique across epochs: the old leader may have handed out values (to a
        # gets of a write never replicated) past the newest this node saw. Epochs are etcd
        # revisions, so each epoch owns 2^32 values above every earlier epoch's.
        self.store.last_cas = max(self.store.last_cas, epoch << 32)
        self.follower = FollowerState(self.store, self.log.newest, self.log)
        self.recorder.attach()
        self.leading = True
        leadership = self.member.leadership
        assert leadership is not None, "ClusterMember sets its leadership before telling us"
        insync = InSyncReplicas(max_lag=self.settings.max_lag_ms / 1000,
                                max_lag_bytes=self.settings.max_lag_bytes,
                                lease_valid=self.member.holds_lease,
                                current=self._is_current)
        insync.newest = insync.watermark = self.log.newest
        insync.start(set(leadership.isr) or self._view_isr(),
                     Incarnation(leadership.node_id, leadership.lease_id))
        # run()'s ISR task takes it up when woken (or when run() starts, if it has not yet)
        self.insync, self._leadership = insync, leadership
        log.info("replication (%s): leading epoch %d from %s", self.mode, epoch,
                 tuple(self.log.newest))
        self._wake_roles()

    def stepped_down(self) -> None:
        self.recorder.detach()
        self.leading = False
        # the store is exactly the log's newest position: follow the next leader from there
        # (a position it never held makes it send a snapshot)
        follower = FollowerState(self.store, self.log.newest, self.log)
        follower.newest_epoch = max(self.follower.newest_epoch, self.log.newest.epoch)
        self.follower = follower
        insync, self.insync, self._leadership = self.insync, None, None
        if insync is not None:
            self._acked_when_deposed = insync.watermark
            insync.scope.cancel()
            insync.fail_all()
        self._wake_roles()

    @property
    def mode(self) -> str:
        return "sync" if self.sync else "async"

    def configure(self, config: ClusterConfig | None) -> None:
        """A new cluster view: with `--replication auto`, take its replication mode. What
        reads the view (the follower side's leader_peer, the ISR's `_is_current`) looks again
        now; it sleeps otherwise."""
        self._role_changed.unpark_all()
        if self.insync is not None:
            self.insync.view_changed()
        if not self.follows_config or config is None:
            return
        sync = config.replication == "sync"
        if sync != self.sync:
            self.sync = sync
            log.info("replication mode now %s (cluster config)", self.mode)

    def _is_current(self, incarnation: Incarnation) -> bool:
        """Another node of this shard whose `nodes/` key is bound to this incarnation's lease
        in the newest view (an older incarnation, a node whose lease is gone, a node of
        another shard, lease 0 or this node's own id never enters the ISR, nor is served)."""
        view = self.member.view
        identity = self.member.identity
        if view is None or incarnation.lease_id == 0 or incarnation.node_id == identity.node_id:
            return False
        record = view.nodes.get(incarnation.node_id)
        return record is not None and record.shard == identity.shard and \
            view.lease_of(view.keyspace.node(incarnation.node_id)) == incarnation.lease_id

    def _view_isr(self) -> set[Incarnation]:
        view = self.member.view
        shard = view.shards.get(self.member.identity.shard) if view is not None else None
        return set(shard.isr.members) if shard is not None and shard.isr is not None else set()

    async def _keep_each_isr(self) -> None:
        """Keep the ISR of the current leadership, one leadership after the other: role
        changes only set `insync`, this task (run()'s) follows it, so a leadership that began
        before run() is kept once run() starts, and none is skipped."""
        kept: InSyncReplicas | None = None
        while True:
            insync, leadership = self.insync, self._leadership
            if insync is None or leadership is None or insync is kept:
                await self._role_changed.park()
                continue
            kept = insync
            await self._keep_isr(insync, leadership)  # until stepping down cancels its scope

    async def _keep_isr(self, insync: InSyncReplicas, leadership: Leadership) -> None:
        me = Incarnation(leadership.node_id, leadership.lease_id)

        revision = leadership.isr_revision  # each write compares on the last one's

        async def write_isr(members: set[Incarnation]) -> object:
            nonlocal revision
            try:
                revision = await self.member.coordinator.update_isr(
                    leadership, members, expected_revision=revision or None)
            except IsrMoved as exc:  # our own late write: the next attempt starts from it
                revision = exc.revision
                raise
            return revision

        with insync.scope:
            try:
                await insync.keep(me, write_isr)
            except FencedOut as exc:
                log.info("ISR: %s", exc)

    def _wake_roles(self) -> None:
        self._changed.unpark_all()
        self._role_changed.unpark_all()

    # -- the host of both sides (ports.LeaderSideHost, ports.FollowerSideHost) ---------------

    def snapshot(self) -> StoreSnapshot:
        return StoreSnapshot(self.store, self.log.newest)

    async def next_change(self) -> None:
        await self._changed.park()

    async def next_role_change(self) -> None:
        await self._role_changed.park()

    def leader_peer(self) -> LeaderPeer | None:
        return self.member.leader_peer()

    @property
    def leadership(self) -> Leadership | None:
        return self._leadership

    def incarnation(self) -> Incarnation:
        session = self.member.session
        return Incarnation(self.member.identity.node_id,
                           session.lease_id if session is not None else 0)

    def start_over(self) -> FollowerState:
        self.store.apply_flush(0)
        self.log.reset(ORIGIN)
        # From the origin the leader may replay its backlog, older epochs first: that history
        # is not a deposed leader speaking (the gap checks and following only the leader etcd
        # names guard that), so the newest epoch seen starts over too.
        self.follower = FollowerState(self.store, ORIGIN, self.log)
        return self.follower

    # -- the command path (CommandHandler.recorder) -----------------------------------------

    def committed(self, key: bytes | None) -> None:
        if not self.leading:
            return
        recorder = self.recorder
        if key is not None:
            recorder.note(key)
        mutations = recorder.commit()
        if mutations:
            insync = self.insync
            if insync is not None:
                insync.committed(mutations[-1].position, sum(map(mutation_size, mutations)))
            if self.sync:
                self.commits += 1
                self._note_unacknowledged(mutations)
            self._changed.unpark_all()

    def _note_unacknowledged(self, mutations: list[Mutation]) -> None:
        unacked = self._unacked
        for mutation in mutations:
            change = mutation.change
            if isinstance(change, ItemState | Deletion):
                unacked[change.key] = mutation.position
            elif isinstance(change, Flush):
                self._unacked_flush = mutation.position
        insync = self.insync
        if len(unacked) > UNACKED_PRUNE and insync is not None:
            mark = insync.watermark
            self._unacked = {k: p for k, p in unacked.items() if p > mark}

    def unacknowledged(self, keys: Sequence[bytes], since: Position) -> Position:
        """Sync mode: the newer of `since` and the newest mutation of `keys` (or flush_all)
        that the in-sync followers do not hold yet (ORIGIN: none). A reply that depends on
        these keys' state waits for it."""
        insync = self.insync
        unacked = self._unacked
        if insync is None or not (unacked or self._unacked_flush > ORIGIN):
            return since
        mark = insync.watermark
        newest = since
        if self._unacked_flush > mark:
            newest = max(newest, self._unacked_flush)
        else:
            self._unacked_flush = ORIGIN  # acknowledged since
        for key in keys:
            position = unacked.get(key)
            if position is None:
                continue
            if position <= mark:
                del unacked[key]  # acknowledged since
            elif position > newest:
                newest = position
        return newest

    async def settle_reads(self, position: Position) -> bool:
        """Wait until the in-sync followers hold `position`; False if they never will (this
        node stopped leading): the reply that depends on it must not be sent."""
        insync = self.insync
        if insync is None:  # stepped down since: the followers held what was acknowledged
            return position <= self._acked_when_deposed
        # A read needs the followers to hold the write, not this node's lease to be valid
        # (a leader handing over drains its writes, then resigns: reads held meanwhile go).
        if position <= insync.watermark or await insync.replicated(position) \
                or position <= insync.watermark:
            return True
        self.counters.unacknowledged += 1
        return False

    async def settle(self) -> bool:
        """Sync mode, before sending replies that follow a write: True once every in-sync
        follower holds it and this node still leads; False if it never will. A write
        admitted while the ISR was large enough, released because a follower left it, is
        not acknowledged below min_insync: only the leader may hold it."""
        insync = self.insync
        if insync is not None and await insync.replicated(self.log.newest) \
                and self.refusal() is None:
            return True
        self.counters.unacknowledged += 1
        return False

    def settle_then(self, wrote: bool, depends: Position,
                    then: Callable[[bool], object]) -> bool | None:
        """`settle()` when `wrote`, else `settle_reads(depends)`, for a caller that does not
        await (backend.server parks the connection): the verdict if it is known now, else
        None and `then(verdict)` is called once, synchronously, when it is."""
        insync = self.insync
        if wrote:
            if insync is None:
                return self._write_verdict(False)
            target = self.log.newest
            if target <= insync.watermark:
                return self._write_verdict(insync.lease_valid())
            insync.when_replicated(target, lambda ok: then(self._write_verdict(ok)))
            return None
        if insync is None:  # stepped down since: the followers held what was acknowledged
            return depends <= self._acked_when_deposed
        if depends <= insync.watermark:
            return True
        insync.when_replicated(depends, lambda ok: then(
            self._read_verdict(ok or depends <= insync.watermark)))
        return None

    def _write_verdict(self, replicated: bool) -> bool:
        if replicated and self.refusal() is None:
            return True
        self.counters.unacknowledged += 1
        return False

    def _read_verdict(self, replicated: bool) -> bool:
        if not replicated:
            self.counters.unacknowledged += 1
        return replicated

    def position(self) -> Position:
        return self.log.newest if self.leading else self.follower.position

    async def drain(self, timeout: float) -> None:
        insync = self.insync
        if insync is not None:
            with trio.move_on_after(timeout):
                await insync.replicated(self.log.newest)

    def _min_insync(self) -> int:
        view = self.member.view
        return view.config.min_insync if view is not None and view.config is not None else 1

    def refusal(self) -> bytes | None:
        """TOO_FEW_IN_SYNC when the ISR is smaller than the cluster's min_insync."""
        insync = self.insync
        if insync is None:
            return None
        min_insync = self._min_insync()
        return TOO_FEW_IN_SYNC if min_insync > 1 and len(insync.committed_isr) < min_insync \
            else None

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> list[tuple[str, object]]:
        position = self.position()
        insync = self.insync
        links = insync.links if insync is not None else {}
        counters = self.counters
        lines: list[tuple[str, object]] = [
            ("memring_replication", self.mode),
            ("memring_repl_position", f"{position.epoch}:{position.seq}"),
            ("memring_repl_followers", len(links)),
            ("memring_repl_backlog_bytes", self.log.bytes),
            ("memring_repl_snapshots_sent", counters.snapshots_sent),
            ("memring_repl_snapshots_received", counters.snapshots_received),
            ("memring_repl_peer_auth", "plain" if not self.peer_key.required else
             "optional" if self.peer_key.optional else "secret"),
            ("memring_repl_peer_tls", "yes" if self.peer_tls is not None else "no"),
            ("memring_repl_peers_refused", counters.peers_refused),
            ("memring_repl_leaders_refused", counters.leaders_refused),
            ("memring_repl_unacknowledged", counters.unacknowledged)]
        if insync is None:
            return lines
        lags = {node: insync.lag(link.acked) for node, link in sorted(links.items())}
        lines += [("memring_repl_isr", ",".join(sorted(m.node_id for m in insync.committed_isr))),
                  ("memring_repl_min_insync", self._min_insync()),
                  ("memring_repl_isr_shrinks", insync.shrinks),
                  ("memring_repl_isr_expansions", insync.expansions),
                  ("memring_repl_max_lag", max((seq for seq, _, _ in lags.values()), default=0))]
        for node, (seq, seconds, size) in lags.items():
            lines += [(f"memring_repl_lag_seq:{node}", seq),
                      (f"memring_repl_lag_s:{node}", f"{seconds:.3f}"),
                      (f"memring_repl_lag_bytes:{node}", size)]
        return lines

    # -- tasks ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve followers on the peer port and follow the leader, until `shutdown()`."""
        host, port = split_address(self.settings.peer_listen, listen=True)
        listener = nonblocking.listen(host, port)
        # a TLS peer could not read the plain-text rejection: it is only closed
        self.peers = ConnectionServer(lambda conn: serve_follower(self, conn),
                                      PEER_MAX_CONNECTIONS, self.peer_counters,
                                      rejection=PEER_FULL if self.peer_tls is None else b"",
                                      max_pending=PEER_PENDING)
        with self._scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_each_isr)
                await nursery.start(self.peers.serve, listener)
                port = listener.getsockname()[1]
                log.info("replication (%s) on peer port %s:%d, %s%s", self.settings.replication,
                         host, port,
                         "unauthenticated (no peer secret)" if not self.peer_key.required else
                         "authenticated (peer secret, optional)" if self.peer_key.optional else
                         "authenticated (peer secret)",
                         ", mutual TLS" if self.peer_tls is not None else ", not encrypted")
                if reachable_from_other_machines(host) and self.peer_tls is None:
                    log.warning("the peer port %s:%d is reachable from other machines without "
                                "TLS: the replication stream (every item written) crosses the "
                                "network in clear%s; give every member --peer-tls with a "
                                "certificate naming its node id", host, port,
                                "" if self.peer_key.required else
                                ", and without a peer secret anyone who reaches the port and "
                                "reads etcd can join the shard and read the whole store "
                                "(--peer-secret-file)")
                nursery.start_soon(follow_leader, self)
                task_status.started()

    def reload_files(self) -> None:
        """SIGHUP: the peer TLS certificates read anew (new connections use them)."""
        if self.peer_tls is not None:
            self.peer_tls.reload()

    def shutdown(self) -> None:
        if self.peers is not None:
            self.peers.shutdown(0.5)
        self._scope.cancel()
