"""Leader -> follower replication of one shard over the peer port.

Theory of operation: `replicator.Replicator` (one per backend in cluster mode) switches the
node between the leader and the follower role as its ClusterMember reports them, and owns the
tasks of both: the peer server whose connections `leader_side` serves, `follower_side`
following the shard's leader, and the task that keeps the ISR of each leadership
(`in_sync`). The leader numbers every change in `mutation_log` and streams it, or a
`snapshot` and then the tail; a follower applies the stream with `follower_apply`. The two
sides see the Replicator only through the narrow protocols of `ports`.

Imports go one way: replicator -> leader_side, follower_side -> ports -> in_sync,
follower_apply, snapshot -> mutation_log. This file imports nothing, so that importing one
module does not import the rest (and no module imports its own package back).
"""
