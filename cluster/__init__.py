"""memring's coordination: the etcd keyspace, leases, membership, elections, topology records.

One interface, `Coordinator` (cluster.coordinator), with an etcd implementation
(`EtcdCoordinator`, cluster.etcd_coordinator) and an in-memory fake for unit tests
(`MemoryCoordinator`, cluster.memory_coordinator); the same contract tests run against both.
`StaticCoordinator` (cluster.static_coordinator) serves the same read side (snapshot, follow)
from the proxy's static TOML topology, parsed by cluster.static_topology, and refuses writes.
`cluster.etcd_process` starts a local etcd for tests and `memring up`. The keyspace is described
in cluster.keyspace. The etcd client (and grpc) is imported only by cluster.etcd_coordinator.
"""

from memring.cluster.coordinator import (
    ClusterConfig,
    ClusterView,
    Coordinator,
    CoordinatorError,
    CoordinatorUnavailable,
    FencedOut,
    Incarnation,
    IsrRecord,
    LeaderRecord,
    Leadership,
    LeaseNotFound,
    NodeRecord,
    ProxyRecord,
    Session,
    ShardExists,
    ShardRecord,
    ShardView,
    WatchCompacted,
    WatchStream,
)
from memring.cluster.keyspace import Keyspace, WatchBatch

__all__ = [
    "ClusterConfig",
    "ClusterView",
    "Coordinator",
    "CoordinatorError",
    "CoordinatorUnavailable",
    "FencedOut",
    "Incarnation",
    "IsrRecord",
    "Keyspace",
    "LeaderRecord",
    "Leadership",
    "LeaseNotFound",
    "NodeRecord",
    "ProxyRecord",
    "Session",
    "ShardExists",
    "ShardRecord",
    "ShardView",
    "WatchBatch",
    "WatchCompacted",
    "WatchStream",
]
