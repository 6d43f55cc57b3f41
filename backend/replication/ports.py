"""What the two sides of replication may ask of the node they run on.

Theory of operation: the Replicator owns a node's replication state (the log, the apply
state of the follower role, the current leadership's InSyncReplicas, the counters) and
changes it when the node's role changes. The leader side (one task per follower connection)
and the follower side (one task following the leader) never reach into it: each is handed a
host satisfying one protocol below, which names exactly what that side reads, waits for and
changes. The Replicator is both hosts (mypy checks it where it hands itself over); a test
can hand either side a small fake instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from memring.backend.cluster_member import LeaderPeer
from memring.backend.replication.follower_apply import FollowerState
from memring.backend.replication.in_sync import InSyncReplicas
from memring.backend.replication.mutation_log import ReplicationLog
from memring.backend.replication.peer_auth import PeerKey
from memring.backend.replication.peer_tls import PeerTls
from memring.backend.replication.snapshot import StoreSnapshot
from memring.cluster.coordinator import Incarnation, Leadership


@dataclass(slots=True)
class ReplicationCounters:
    """What the sides count and the Replicator's `stats` reports."""

    snapshots_sent: int = 0
    snapshots_received: int = 0
    applied: int = 0  # messages applied as a follower
    unacknowledged: int = 0  # sync writes whose connection closed unanswered
    # HELLOs refused as leader: no proof or a wrong one, not a member; with peer TLS also
    # failed TLS handshakes and certificates naming another node
    peers_refused: int = 0
    leaders_refused: int = 0  # leaders refused as follower: not etcd's, a wrong proof, TLS


class LeaderSideHost(Protocol):
    """What serving a follower needs: the log to stream, snapshots, the followers' tracker."""

    @property
    def leading(self) -> bool: ...

    @property
    def log(self) -> ReplicationLog:
        """The numbered mutations; its newest epoch is the leadership being served."""

    @property
    def insync(self) -> InSyncReplicas | None:
        """The current leadership's followers (acks, lag, ISR); None when not leading."""

    @property
    def leadership(self) -> Leadership | None:
        """This node's leader key (node id, lease, epoch) as WELCOME names it."""

    @property
    def peer_key(self) -> PeerKey:
        """The peer secret and what proofs bind (cluster, shard)."""

    @property
    def peer_tls(self) -> PeerTls | None:
        """The peer link's TLS contexts; None: the link is plain."""

    @property
    def counters(self) -> ReplicationCounters: ...

    def snapshot(self) -> StoreSnapshot:
        """A snapshot of the store at the log's newest position."""

    async def next_change(self) -> None:
        """Return once a write was committed or the role changed."""


class FollowerSideHost(Protocol):
    """What following the leader needs: where it is, who this node is, the apply state."""

    @property
    def leading(self) -> bool: ...

    @property
    def follower(self) -> FollowerState:
        """The state applying the leader's stream; a new one after every change of role."""

    @property
    def counters(self) -> ReplicationCounters: ...

    @property
    def peer_key(self) -> PeerKey:
        """The peer secret and what proofs bind (cluster, shard)."""

    @property
    def peer_tls(self) -> PeerTls | None:
        """The peer link's TLS contexts; None: the link is plain."""

    def leader_peer(self) -> LeaderPeer | None:
        """The shard's leader (peer address, epoch, node id, lease) when another node
        leads, else None."""

    def incarnation(self) -> Incarnation:
        """This node as it introduces itself to the leader (lease id 0 without a session)."""

    def start_over(self) -> FollowerState:
        """Empty the store and the log; the new state follows from the origin."""

    async def next_role_change(self) -> None:
        """Return once this node started or stopped leading."""
