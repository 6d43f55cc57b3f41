"""Asynchronous leader -> follower replication of one shard (opt-in: `--replication async`).

Theory of operation: one `Replicator` per backend owns the node's ReplicationLog and its
FollowerState, and switches between the two roles as ClusterMember reports them
(`became_leader`/`stepped_down`, called synchronously when the member starts or stops
acknowledging writes, so no write escapes numbering):

- leader: the StoreRecorder is attached to the store; the command handler calls
  `committed(key)` after every mutating command, which numbers the changes in the log and
  wakes the follower tasks of backend.replication_server (a ParkingLot). Replies are not
  delayed (async mode: a failover may lose the tail a follower had not received).
- follower: backend.replication_client connects to the leader's peer address (from the
  cluster view), sends HELLO with the position of the last mutation applied, and applies
  the stream through FollowerState, which mirrors it into the same log, so the node can
  serve followers as soon as it is promoted: its new epoch continues from that position.

Stores change only through one role at a time: on promotion the client is cancelled and
refuses to apply anything more before the recorder is attached.
"""

from __future__ import annotations

import logging

import trio

from backend.cluster_member import ClusterMember
from backend.follower_state import FollowerState
from backend.replication_log import ReplicationLog, StoreRecorder
from backend.settings import BackendSettings, split_address
from backend.store import Store
from netio import nonblocking
from netio.connection_server import ConnectionCounters, ConnectionServer
from protocol.replication import ORIGIN, Position

log = logging.getLogger("memring.backend.replication")

# A leader promoted in the middle of a snapshot holds a partial store: its log restarts from
# a position no follower can hold, so every follower takes a snapshot from it.
NOWHERE = Position(0, (1 << 64) - 1)
MAX_FOLLOWERS = 64


class Replicator:
    def __init__(self, store: Store, member: ClusterMember, settings: BackendSettings) -> None:
        self.store = store
        self.member = member
        self.settings = settings
        self.log = ReplicationLog(max_bytes=settings.replication_backlog)
        self.recorder = StoreRecorder(store, self.log)
        self.follower = FollowerState(store, ORIGIN, self.log)
        self.leading = False
        self.changed = trio.lowlevel.ParkingLot()  # new mutations or a change of role
        self.role_changed = trio.lowlevel.ParkingLot()
        # leader side: node id -> acked position of each connected follower
        self.acked: dict[str, Position] = {}
        self.snapshots_sent = 0
        self.snapshots_received = 0
        self.applied = 0  # messages applied as a follower
        self.counters = ConnectionCounters()
        self.peers: ConnectionServer | None = None
        self._scope = trio.CancelScope()

    # -- roles (ClusterMember.listener) -----------------------------------------------------

    def became_leader(self, epoch: int) -> None:
        follower = self.follower
        if follower.in_snapshot:
            log.warning("promoted during a snapshot: followers will take a full snapshot")
            self.log.reset(NOWHERE)
        if epoch <= self.log.newest.epoch:  # cannot happen with etcd revisions; be safe
            self.log.reset(Position(0, NOWHERE.seq - 1))
        self.log.begin_epoch(epoch)
        self.follower = FollowerState(self.store, self.log.newest, self.log)
        self.recorder.attach()
        self.leading = True
        log.info("replication: leading epoch %d from %s", epoch, tuple(self.log.newest))
        self._wake_roles()

    def stepped_down(self) -> None:
        self.recorder.detach()
        self.leading = False
        self.acked.clear()
        self._wake_roles()

    def _wake_roles(self) -> None:
        self.changed.unpark_all()
        self.role_changed.unpark_all()

    # -- the command path (CommandHandler.recorder) -----------------------------------------

    def committed(self, key: bytes | None) -> None:
        if not self.leading:
            return
        recorder = self.recorder
        if key is not None:
            recorder.note(key)
        if recorder.commit():
            self.changed.unpark_all()

    # -- stats -------------------------------------------------------------------------------

    def stats(self) -> list[tuple[str, object]]:
        position = self.log.newest if self.leading else self.follower.position
        newest = self.log.newest.seq
        lag = max((newest - p.seq for p in self.acked.values()
                   if p.epoch == self.log.newest.epoch), default=0)
        return [("memring_replication", self.settings.replication),
                ("memring_repl_position", f"{position.epoch}:{position.seq}"),
                ("memring_repl_followers", len(self.acked)),
                ("memring_repl_max_lag", lag),
                ("memring_repl_backlog_bytes", self.log.bytes),
                ("memring_repl_snapshots_sent", self.snapshots_sent),
                ("memring_repl_snapshots_received", self.snapshots_received)]

    # -- tasks ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Serve followers on the peer port and follow the leader, until `shutdown()`."""
        from backend.replication_client import follow_leader
        from backend.replication_server import serve_follower

        host, port = split_address(self.settings.peer_listen)
        listener = nonblocking.listen(host, port)
        self.peers = ConnectionServer(lambda conn: serve_follower(self, conn), MAX_FOLLOWERS,
                                      self.counters)
        with self._scope:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.peers.serve, listener)
                log.info("replication (%s) on peer port %s:%d", self.settings.replication,
                         host, listener.getsockname()[1])
                nursery.start_soon(follow_leader, self)
                task_status.started()

    def shutdown(self) -> None:
        if self.peers is not None:
            self.peers.shutdown(0.5)
        self._scope.cancel()
