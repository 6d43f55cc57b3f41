"""Which node serves a key: the ketama ring over shards, then the shard's read policy.

A `ShardRouter` is immutable: a topology change (SIGHUP, later etcd) builds a new one and
the proxy swaps it in with one assignment, so a request never sees half a change. A shard
whose nodes are all down stays on the ring: its keys get SERVER_ERROR, never a silent
remap to another shard (twemproxy's remap-on-eject serves stale data).

In cluster mode (`leader_writes`) a shard's nodes are its live members, the elected leader
first (`has_leader`); a shard may then have no node at all, or no leader during an election.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from memring.proxy.ketama import KetamaRing
from memring.proxy.pool import NodePool

# Keys whose shard a router remembers, so a hot key costs one dict lookup, not an md5 and a
# bisect (ketama was 7% of the proxy's CPU on 10-key multi-gets); all forgotten at once past
# this many (at most ~6 MiB with 250-byte keys; the ring is immutable, so never stale).
PLACED_KEYS: Final = 16384


class NoShards(LookupError):
    """A cluster with no shard yet: nothing can be routed."""


@dataclass(eq=False)
class Shard:
    name: str
    nodes: list[NodePool]     # the first is the leader (unless has_leader is False)
    weight: int = 1
    has_leader: bool = True
    _turn: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def leader(self) -> NodePool:
        return self.nodes[0]


class ShardRouter:
    def __init__(self, shards: Sequence[Shard], hash_name: str, read_policy: str, *,
                 leader_writes: bool = False, miss_on_shard_error: bool = False,
                 previous: ShardRouter | None = None) -> None:
        self.shards = list(shards)
        self.by_name = {s.name: s for s in self.shards}
        self.read_policy = read_policy
        self.leader_writes = leader_writes  # cluster mode: writes go to the leader alone
        # on_shard_error = miss: a read whose shard cannot answer is a miss (session.py)
        self.miss_on_shard_error = miss_on_shard_error
        servers = tuple((s.name, s.weight) for s in self.shards)
        ring: KetamaRing | None = previous.ring if previous is not None else None
        if ring is None or ring.servers != servers or ring.hash_name != hash_name:
            # a leader change or a replica's keeps the ring (it is immutable): no rebuild
            ring = KetamaRing(servers, hash_name) if servers else None
        self.ring: KetamaRing | None = ring
        self._single = self.shards[0] if len(self.shards) == 1 else None
        self._placed: dict[bytes, Shard] = {}  # key -> shard, for hot keys (PLACED_KEYS)

    def shard_for(self, key: bytes) -> Shard:
        shard = self._placed.get(key)
        if shard is not None:
            return shard
        if self._single is not None:
            return self._single
        if self.ring is None:
            raise NoShards("no shards configured")
        shard = self.shards[self.ring.server_for(key)]
        placed = self._placed
        if len(placed) >= PLACED_KEYS:
            placed.clear()
        placed[key] = shard
        return shard

    def by_shard(self, keys: Iterable[bytes]) -> dict[Shard, list[bytes]]:
        """`keys` grouped by their shard, in order within each (a multi-get's parts): the
        memo looked up inline, as a multi-get's ten keys made ten calls of shard_for."""
        groups: dict[Shard, list[bytes]] = {}  # shards hash by identity (eq=False)
        placed = self._placed
        shard_for = self.shard_for
        for key in keys:
            shard = placed.get(key)
            if shard is None:
                shard = shard_for(key)
            part = groups.get(shard)
            if part is None:
                groups[shard] = [key]
            else:
                part.append(key)
        return groups

    def read_order(self, shard: Shard) -> list[NodePool]:
        """Nodes to try for a read, best first: the policy's pick, then the others."""
        nodes = shard.nodes
        if len(nodes) == 1:
            return nodes
        if self.read_policy == "round_robin":
            start = next(shard._turn) % len(nodes)
            ordered = nodes[start:] + nodes[:start]
        elif self.read_policy == "weighted":
            pick = random.choices(nodes, weights=[n.weight for n in nodes])[0]
            ordered = [pick, *(n for n in nodes if n is not pick)]
        else:
            ordered = nodes
        # Ejected or disconnected nodes go last: tried only when nothing better is left.
        return sorted(ordered, key=lambda n: not n.available)
