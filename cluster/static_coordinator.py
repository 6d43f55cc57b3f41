"""`StaticCoordinator`: the read side of the Coordinator interface over a static TOML file.

Theory of operation. The proxy's static topology file (etc/memring.toml: a `[proxy]` table and
`[[shards]]`) is turned into the same `ClusterView` that etcd's records give, so one code path
(proxy.cluster_topology.shard_specs) can build the proxy's routing from either source:

- each `[[shards]]` table is a shard whose id is its ring point name (`name`, or the first
  node's "host" / "host:port" as cluster.static_topology.default_point_name computes it), with
  a `ShardRecord` listing its nodes and carrying its ring weight;
- each node is a `NodeRecord` with id "<shard>-<i>" (i from 1, zero-padded so the ids sort in
  file order), its address and its weight;
- the first node is the shard's leader: a `LeaderRecord` with no lease (0) and epoch 0, since
  nothing is ever elected;
- the `[proxy]` table's `hash`, `read_policy` and `on_shard_error` are the view's
  `ClusterConfig`.

The file is read when the coordinator is made and again on every `reload()` (the proxy's SIGHUP
handler calls it); each good reload is a new view at the next revision, sent to every
`follow()`er. A bad file raises `SettingsError` (and is logged) and the last good view stands.

There is no store behind it: sessions, elections, membership and every other write raise
`CoordinatorError("static topology: no elections or membership; use --etcd")`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import trio

from memring.cluster.coordinator import (
    ClusterConfig,
    ClusterView,
    Coordinator,
    CoordinatorError,
    Incarnation,
    LeaderRecord,
    Leadership,
    NodeRecord,
    Session,
    ShardRecord,
    ShardView,
    WatchStream,
)
from memring.cluster.keyspace import Compare, Entry, Op, TxnResult
from memring.cluster.static_topology import ShardSpec, parse_shards, read_toml
from memring.netio.settings import SettingsError

log = logging.getLogger("memring.cluster")

READ_ONLY = "static topology: no elections or membership; use --etcd"


def _refuse() -> NoReturn:
    raise CoordinatorError(READ_ONLY)


def _config(table: Any, path: str) -> ClusterConfig:
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [proxy] must be a table")
    values: dict[str, str] = {"hash": "md5", "read_policy": "leader", "on_shard_error": "miss"}
    for key in values:
        if key in table:
            if not isinstance(table[key], str):
                raise SettingsError(f"{path}: [proxy] {key} must be a string")
            values[key] = table[key]
    try:
        return ClusterConfig(hash=values["hash"], read_policy=values["read_policy"],
                             on_shard_error=values["on_shard_error"])
    except ValueError as exc:
        raise SettingsError(f"{path}: [proxy] {exc}") from None


def node_ids(shard: ShardSpec) -> list[str]:
    """The ids of a static shard's nodes: "<shard>-<i>", zero-padded to sort in file order."""
    width = len(str(len(shard.nodes)))
    return [f"{shard.name}-{i:0{width}d}" for i in range(1, len(shard.nodes) + 1)]


def build_view(coordinator: Coordinator, revision: int, config: ClusterConfig,
               shards: Iterable[ShardSpec]) -> ClusterView:
    """The ClusterView of a parsed static topology (see the module's docstring)."""
    ks = coordinator.keyspace
    prefix = ks.prefix
    entries: dict[str, Entry] = {}

    def put(key: str, value: bytes) -> None:
        entries[key] = Entry(key, value, revision, revision, 1, 0)

    put(ks.config(), config.to_json())
    views: dict[str, ShardView] = {}
    nodes: dict[str, NodeRecord] = {}
    for shard in shards:
        ids = node_ids(shard)
        record = ShardRecord(shard.name, tuple(ids), shard.weight)
        for node_id, spec in zip(ids, shard.nodes, strict=True):
            nodes[node_id] = NodeRecord(node_id, spec.address, shard.name, weight=spec.weight)
            put(f"{prefix}nodes/{node_id}", nodes[node_id].to_json())
        leader = LeaderRecord(ids[0], shard.nodes[0].address, 0)
        # Keys are built without Keyspace's id check: a static ring point name may be any
        # string (e.g. an IPv6 "host:port"); these entries only serve `_read`.
        put(f"{prefix}shards/{shard.name}", record.to_json())
        put(f"{prefix}shards/{shard.name}/leader", leader.to_json())
        views[shard.name] = ShardView(shard.name, record, leader, 0, None, 0)
    return ClusterView(ks, revision, entries, config,
                       {sid: views[sid] for sid in sorted(views)}, nodes, {})


class StaticCoordinator(Coordinator):
    """The Coordinator's read side over a static TOML topology file; writes are refused."""

    def __init__(self, path: str | Path, cluster: str = "memring", *,
                 call_timeout: float = 1.0) -> None:
        super().__init__(cluster, call_timeout=call_timeout)
        self.path = str(path)
        self._view = self._load(1)  # SettingsError if the file is bad at start
        self._followers: list[trio.MemorySendChannel[ClusterView]] = []

    def _load(self, revision: int) -> ClusterView:
        data = read_toml(self.path)
        config = _config(data.get("proxy", {}), self.path)
        try:
            shards = parse_shards(data.get("shards"))
        except SettingsError as exc:
            raise SettingsError(f"{self.path}: {exc}") from None
        return build_view(self, revision, config, shards)

    @property
    def view(self) -> ClusterView:
        return self._view

    def reload(self) -> ClusterView:
        """Re-read the file: the new view (also sent to every follower), or SettingsError with
        the last good view kept."""
        try:
            view = self._load(self._view.revision + 1)
        except SettingsError as exc:
            log.error("static topology: keeping the last view (revision %d): %s",
                      self._view.revision, exc)
            raise
        self._view = view
        for send in list(self._followers):
            try:
                send.send_nowait(view)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self._followers.remove(send)
        return view

    # The read side ------------------------------------------------------------------------

    async def snapshot(self) -> ClusterView:
        await trio.lowlevel.checkpoint()
        return self._view

    async def _read(self, key: str, *, prefix: bool = False) -> tuple[int, dict[str, Entry]]:
        await trio.lowlevel.checkpoint()
        view = self._view
        return view.revision, {k: e for k, e in view.entries.items()
                               if k == key or (prefix and k.startswith(key))}

    @asynccontextmanager
    async def follow(self, *, retry_interval: float = 0.5, check_interval: float = 0.0
                     ) -> AsyncIterator[trio.MemoryReceiveChannel[ClusterView]]:
        """The current view at once, then a new one after every successful `reload()` (no
        watch: nothing to retry or check)."""
        send, receive = trio.open_memory_channel[ClusterView](math.inf)
        send.send_nowait(self._view)
        self._followers.append(send)
        try:
            async with receive:
                yield receive
        finally:
            if send in self._followers:
                self._followers.remove(send)
            send.close()

    @asynccontextmanager
    async def _watch_raw(self, prefix: str, from_revision: int) -> AsyncIterator[WatchStream]:
        raise CoordinatorError("static topology: no watch stream; follow() yields a view "
                               "after each reload()")
        yield  # pragma: no cover  (makes this an async generator)

    async def aclose(self) -> None:
        for send in self._followers:
            send.close()
        self._followers.clear()
        await trio.lowlevel.checkpoint()

    # The write side: refused ----------------------------------------------------------------

    async def _txn(self, compares: Sequence[Compare], success: Sequence[Op],
                   failure: Sequence[Op] = (), *, resend: bool = False) -> TxnResult:
        _refuse()

    async def _grant(self, ttl: float) -> tuple[int, float]:
        _refuse()

    async def _keepalive(self, lease_id: int, *, timeout: float) -> float:
        _refuse()

    async def revoke(self, lease_id: int) -> bool:
        _refuse()

    async def ensure_shard(self, shard_id: str, *, member: str | None = None,
                           weight: int = 1) -> ShardRecord:
        _refuse()

    async def campaign(self, session: Session, shard_id: str, node_id: str, address: str, *,
                       unclean: bool = False, earlier_leases: Iterable[int] = (),
                       alone: bool = False) -> Leadership | None:
        _refuse()

    async def update_isr(self, leadership: Leadership, members: Iterable[Incarnation], *,
                         expected_revision: int | None = None) -> int:
        _refuse()

    async def drain_node(self, node_id: str, drained: bool = True) -> ShardRecord:
        _refuse()

    async def remove_node(self, node_id: str) -> tuple[str, bool]:
        _refuse()
