"""The records kept in etcd and the cluster view built from them.

Each record is a small frozen dataclass stored as a JSON value under the keyspace of
`cluster.keyspace`; `ClusterView` is one consistent snapshot of them at a revision, what
proxies and backends rebuild their routing from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, TypeVar

from memring.cluster.keyspace import Entry, KeyEvent, Keyspace, WatchBatch

log = logging.getLogger("memring.cluster")

Member = TypeVar("Member")  # a `nodes/` or `proxies/` record (NodeRecord, ProxyRecord)


def _dump(record: Any) -> bytes:
    return json.dumps(asdict(record), sort_keys=True, separators=(",", ":")).encode()


def _load(raw: bytes) -> dict[str, Any]:
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {raw[:80]!r}")
    return data


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A live backend: `nodes/<node_id>`, bound to its session's lease."""

    node_id: str
    address: str
    shard: str
    peer_address: str = ""
    weight: int = 1
    version: str = ""
    started: float = 0.0  # wall-clock seconds since the epoch, for humans
    # Leases this same running process held before its current one (its session was lost and
    # re-opened; its store was kept): an ISR entry naming one of them still names this copy
    # of the data, so it may lead cleanly and counts as a live in-sync member. A restarted
    # process starts with none.
    earlier_leases: tuple[int, ...] = ()

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, raw: bytes) -> NodeRecord:
        d = _load(raw)
        return cls(str(d["node_id"]), str(d["address"]), str(d["shard"]),
                   str(d.get("peer_address", "")), int(d.get("weight", 1)),
                   str(d.get("version", "")), float(d.get("started", 0.0)),
                   tuple(int(lease) for lease in d.get("earlier_leases", ())))


HASHES = ("md5", "fnv1a_64")
READ_POLICIES = ("leader", "round_robin", "weighted")
# what a proxy answers a read whose shard cannot answer: a miss (mcrouter's default; the client
# falls back to its database) or memcached's SERVER_ERROR. Writes always answer the error.
SHARD_ERROR_POLICIES = ("miss", "error")
REPLICATION_MODES = ("sync", "async")
UNCLEAN_POLICIES = ("auto", "never")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """Cluster-wide settings: the `config` key."""

    hash: str = "md5"
    read_policy: str = "leader"
    replication: str = "sync"
    lease_ttl: float = 2.0
    min_insync: int = 1
    unclean_election: str = "auto"
    on_shard_error: str = "miss"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("hash", self.hash, HASHES),
            ("read_policy", self.read_policy, READ_POLICIES),
            ("replication", self.replication, REPLICATION_MODES),
            ("unclean_election", self.unclean_election, UNCLEAN_POLICIES),
            ("on_shard_error", self.on_shard_error, SHARD_ERROR_POLICIES),
        ):
            if value not in allowed:
                raise ValueError(f"config {name} = {value!r}: expected one of {', '.join(allowed)}")
        if not self.lease_ttl > 0:
            raise ValueError(f"config lease_ttl = {self.lease_ttl!r}: expected seconds > 0")
        if self.min_insync < 1:
            raise ValueError(f"config min_insync = {self.min_insync!r}: expected >= 1")

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, raw: bytes) -> ClusterConfig:
        d = _load(raw)
        base = cls()
        return cls(str(d.get("hash", base.hash)), str(d.get("read_policy", base.read_policy)),
                   str(d.get("replication", base.replication)),
                   float(d.get("lease_ttl", base.lease_ttl)),
                   int(d.get("min_insync", base.min_insync)),
                   str(d.get("unclean_election", base.unclean_election)),
                   str(d.get("on_shard_error", base.on_shard_error)))


@dataclass(frozen=True, slots=True)
class ShardRecord:
    """A replica set: `shards/<shard_id>`; its id is its ring point name."""

    shard_id: str
    replicas: tuple[str, ...] = ()
    weight: int = 1
    drained: tuple[str, ...] = ()  # nodes that must not lead nor serve reads (`node drain`)

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, raw: bytes) -> ShardRecord:
        d = _load(raw)
        return cls(str(d["shard_id"]), tuple(str(r) for r in d.get("replicas", ())),
                   int(d.get("weight", 1)), tuple(str(r) for r in d.get("drained", ())))


@dataclass(frozen=True, slots=True)
class ElectionHint:
    """`shards/<shard>/hint`: while it lives only `node_id` may campaign (`leader transfer`,
    `shard elect`); `unclean` lets it win without being in the ISR (`shard elect --unclean`)."""

    node_id: str
    unclean: bool = False

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, raw: bytes) -> ElectionHint:
        d = _load(raw)
        return cls(str(d["node_id"]), bool(d.get("unclean", False)))


@dataclass(frozen=True, slots=True)
class LeaderRecord:
    """`shards/<shard>/leader`: who leads, where, and under which lease (to evict it)."""

    node_id: str
    address: str
    lease_id: int

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, raw: bytes) -> LeaderRecord:
        d = _load(raw)
        return cls(str(d["node_id"]), str(d["address"]), int(d["lease_id"]))


@dataclass(frozen=True, slots=True, order=True)
class Incarnation:
    """One life of a node: a restarted node has a new lease, so it is a new incarnation."""

    node_id: str
    lease_id: int


@dataclass(frozen=True, slots=True)
class IsrRecord:
    """`shards/<shard>/isr`: the in-sync incarnations, and the epoch of the leader that wrote it
    (0 when the first leader's campaign created it)."""

    members: tuple[Incarnation, ...]
    epoch: int = 0

    @property
    def node_ids(self) -> tuple[str, ...]:
        return tuple(m.node_id for m in self.members)

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, raw: bytes) -> IsrRecord:
        d = _load(raw)
        members = tuple(Incarnation(str(m["node_id"]), int(m["lease_id"])) for m in d["members"])
        return cls(members, int(d.get("epoch", 0)))


@dataclass(frozen=True, slots=True)
class ProxyRecord:
    """A live proxy: `proxies/<proxy_id>`, bound to its session's lease."""

    proxy_id: str
    address: str
    version: str = ""

    def to_json(self) -> bytes:
        return _dump(self)

    @classmethod
    def from_json(cls, raw: bytes) -> ProxyRecord:
        d = _load(raw)
        return cls(str(d["proxy_id"]), str(d["address"]), str(d.get("version", "")))


@dataclass(frozen=True, slots=True)
class Leadership:
    """What a won campaign returns: the epoch fences every later write of this leader."""

    shard_id: str
    node_id: str
    epoch: int
    lease_id: int
    isr: tuple[Incarnation, ...] = field(default=(), compare=False)  # elected with
    isr_revision: int = field(default=0, compare=False)  # the ISR key's mod revision then


# --- the view -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardView:
    shard_id: str
    record: ShardRecord | None  # None while only a leader/isr key exists (shard being removed)
    leader: LeaderRecord | None
    epoch: int  # the leader key's create revision; 0 without a leader
    isr: IsrRecord | None
    isr_revision: int  # the ISR key's mod revision; 0 without one
    hint: ElectionHint | None = None

    def drained(self, node_id: str) -> bool:
        return self.record is not None and node_id in self.record.drained


@dataclass(frozen=True)
class ClusterView:
    """Everything under the cluster's prefix at one revision, decoded. Immutable: `apply`
    returns a new view, so a router swaps in a whole new table at once."""

    keyspace: Keyspace
    revision: int
    entries: Mapping[str, Entry]
    config: ClusterConfig | None = None
    shards: Mapping[str, ShardView] = field(default_factory=dict)
    nodes: Mapping[str, NodeRecord] = field(default_factory=dict)
    proxies: Mapping[str, ProxyRecord] = field(default_factory=dict)

    @classmethod
    def build(cls, keyspace: Keyspace, revision: int, entries: Mapping[str, Entry]) -> ClusterView:
        config: ClusterConfig | None = None
        nodes: dict[str, NodeRecord] = {}
        proxies: dict[str, ProxyRecord] = {}
        records: dict[str, ShardRecord] = {}
        leaders: dict[str, tuple[LeaderRecord, int]] = {}
        isrs: dict[str, tuple[IsrRecord, int]] = {}
        hints: dict[str, ElectionHint] = {}
        for key, entry in entries.items():
            ref = keyspace.parse(key)
            if ref is None:
                continue
            try:
                if ref.kind == "config":
                    config = ClusterConfig.from_json(entry.value)
                elif ref.kind == "node":
                    nodes[ref.ident] = NodeRecord.from_json(entry.value)
                elif ref.kind == "proxy":
                    proxies[ref.ident] = ProxyRecord.from_json(entry.value)
                elif ref.kind == "shard":
                    records[ref.ident] = ShardRecord.from_json(entry.value)
                elif ref.kind == "leader":
                    leaders[ref.ident] = (LeaderRecord.from_json(entry.value),
                                          entry.create_revision)
                elif ref.kind == "hint":
                    hints[ref.ident] = ElectionHint.from_json(entry.value)
                else:
                    isrs[ref.ident] = (IsrRecord.from_json(entry.value), entry.mod_revision)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("ignoring malformed value of %s: %s", key, exc)
        shards: dict[str, ShardView] = {}
        for shard_id in sorted(records.keys() | leaders.keys() | isrs.keys()):
            leader, epoch = leaders.get(shard_id, (None, 0))
            isr, isr_rev = isrs.get(shard_id, (None, 0))
            shards[shard_id] = ShardView(shard_id, records.get(shard_id), leader, epoch, isr,
                                         isr_rev, hints.get(shard_id))
        return cls(keyspace, revision, dict(entries), config, shards, nodes, proxies)

    def apply(self, batch: WatchBatch) -> ClusterView:
        """The view after a watch batch (events of revisions after this view's). Only the
        changed keys are decoded (`_changed`): every backend and proxy applies every batch, and
        decoding the whole cluster for each took ~1 ms at 24 x 2 (docs/scaling.md, round
        eight), 49 processes at once in a failover storm. What `_changed` does not cover is
        built whole, as a snapshot is."""
        entries = dict(self.entries)
        changed: list[KeyEvent] = []
        for event in batch.events:
            if event.entry.mod_revision <= self.revision:
                continue  # already in this view
            changed.append(event)
            if event.kind == "put":
                entries[event.entry.key] = event.entry
            else:
                entries.pop(event.entry.key, None)
        revision = max(self.revision, batch.revision)
        view = self._changed(revision, entries, changed)
        return view if view is not None else ClusterView.build(self.keyspace, revision, entries)

    def _changed(self, revision: int, entries: dict[str, Entry],
                 events: list[KeyEvent]) -> ClusterView | None:
        """This view with `events` decoded into it, when each is a node's or a proxy's key, or
        the leader or ISR key of a shard the view has and keeps; None for anything else
        (config, shard records, hints, unknown or malformed values, a shard added or gone):
        `build` decodes those as it always did."""
        nodes: dict[str, NodeRecord] | None = None
        proxies: dict[str, ProxyRecord] | None = None
        shards: dict[str, ShardView] | None = None
        try:
            for event in events:
                ref = self.keyspace.parse(event.entry.key)
                if ref is None:
                    return None
                put = event.kind == "put"
                if ref.kind == "node":
                    nodes = dict(self.nodes) if nodes is None else nodes
                    if not self._member_changed(nodes, ref.ident, event, NodeRecord.from_json):
                        return None
                elif ref.kind == "proxy":
                    proxies = dict(self.proxies) if proxies is None else proxies
                    if not self._member_changed(proxies, ref.ident, event,
                                                ProxyRecord.from_json):
                        return None
                elif ref.kind in ("leader", "isr"):
                    if shards is None:
                        shards = dict(self.shards)
                    shard = shards.get(ref.ident)
                    if shard is None:
                        return None
                    if ref.kind == "leader":
                        leader = LeaderRecord.from_json(event.entry.value) if put else None
                        shard = replace(shard, leader=leader,
                                        epoch=event.entry.create_revision if put else 0)
                    else:
                        isr = IsrRecord.from_json(event.entry.value) if put else None
                        shard = replace(shard, isr=isr,
                                        isr_revision=event.entry.mod_revision if put else 0)
                    if shard.record is None and shard.leader is None and shard.isr is None:
                        return None  # the shard is gone (its hint with it)
                    shards[ref.ident] = shard
                else:
                    return None
        except (ValueError, KeyError, TypeError):
            return None  # `build` logs it and leaves it out
        return ClusterView(self.keyspace, revision, entries, self.config,
                           self.shards if shards is None else shards,
                           self.nodes if nodes is None else nodes,
                           self.proxies if proxies is None else proxies)

    def _member_changed(self, records: dict[str, Member], ident: str, event: KeyEvent,
                        decode: Callable[[bytes], Member]) -> bool:
        """A node's or proxy's event applied to `records` (a copy of this view's); False
        when a put adds a record whose key this view's entries already had: its place in
        `records` must be its key's in `entries`, which only `build` gives."""
        if event.kind != "put":
            records.pop(ident, None)
            return True
        if ident not in records and event.entry.key in self.entries:
            return False
        records[ident] = decode(event.entry.value)  # an existing key keeps its place
        return True

    def lease_of(self, key: str) -> int:
        entry = self.entries.get(key)
        return entry.lease if entry else 0

    def live_incarnations(self) -> set[Incarnation]:
        """Every registered node's current incarnation and the earlier ones of the same
        running process (`NodeRecord.earlier_leases`): the copies of the data alive now."""
        live = set()
        for node_id, record in self.nodes.items():
            lease = self.lease_of(self.keyspace.node(node_id))
            if lease:
                live.add(Incarnation(node_id, lease))
                live.update(Incarnation(node_id, earlier) for earlier in record.earlier_leases)
        return live


# --- sessions -----------------------------------------------------------------------------
