"""Leader -> follower replication of one shard over the peer port.

Theory of operation: `replicator.Replicator` (one per backend in cluster mode) switches the
node between the leader and the follower role as its ClusterMember reports them, and owns the
tasks of both: the peer server whose connections `leader_side` serves, `follower_side`
following the shard's leader, and the task that keeps the ISR of each leadership
(`in_sync`). The leader numbers every change in `mutation_log` and streams it, or a
`snapshot` and then the tail; a follower applies the stream with `follower_apply`.

This file imports nothing, so that importing one module of the package does not import the
rest.
"""
