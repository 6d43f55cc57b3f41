"""The proxy in cluster mode: routing follows the cluster's records in etcd.

Theory of operation. `shard_specs(view)` turns one `ClusterView` into the proxy's topology:
the `shards/*` records sorted by id, each shard's ring point name being its id (so a failover
never moves keys) and its weight the record's; its nodes are the elected leader first, then the
other live members (`nodes/*` whose shard is this one) that are in the shard's ISR (their current
incarnation: a follower catching up or dropped for lag would serve stale reads; only when
neither a leader nor an in-sync replica is alive do the others serve reads) and that the
shard record does not list as drained (`memring node drain`: no reads; a drained leader resigns
on its own). A shard with no live node keeps its
place on the ring with no nodes: its keys get SERVER_ERROR, never another shard's. The cluster's
`config` key, when present, sets the key hash and the read policy.

`run_cluster` takes a first snapshot (retrying with backoff while etcd cannot be reached; a
refusal, `AccessDenied`, ends the proxy with its message), starts
the proxy on it, then applies later views from `Coordinator.follow()` with
`ProxyServer.apply_topology`, which swaps in a whole new router at once and keeps the pools of
addresses present before and after; of several views waiting, only the newest (`newest`).
While etcd is down `follow()` stays quiet and the last routing table stands. The proxy registers itself as `proxies/<id>` under a session of its own,
re-registering with a new session if that one is lost. With several etcd members, the one it
watches is asked for its status every WATCH_CHECK_INTERVAL; a member that does not answer is
left for the next (`Coordinator.follow(check_interval=...)`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
from dataclasses import replace

import trio

from memring.cluster.coordinator import (
    AccessDenied,
    ClusterView,
    Coordinator,
    CoordinatorError,
    Incarnation,
    ProxyRecord,
)
from memring.netio import nonblocking
from memring.netio.settings import SettingsError, split_address
from memring.proxy.server import ProxyServer
from memring.proxy.settings import NodeSpec, ProxySettings, ShardSpec
from memring.proxy.stats import MEMRING_VERSION

log = logging.getLogger("memring.proxy")

FIRST_VIEW_BACKOFF_MAX = 5.0  # seconds between attempts to reach etcd at start, at most
SESSION_TTL = 2.0             # the proxy's own registration lease (default: the cluster's)
# How often the etcd member the proxy watches must answer a Status (one call, ~1 ms): a frozen
# member sends the watch nothing, and writes to a shard wait for the view naming its new
# leader; without this only the proxy's keepalive, every TTL/3, found such a member.
WATCH_CHECK_INTERVAL = 0.2


def _node(address: str, weight: int = 1) -> NodeSpec | None:
    try:
        host, port = split_address(address)
    except SettingsError:  # a malformed record names no reachable node
        log.warning("ignoring a node with a bad address %r", address)
        return None
    return NodeSpec(host, port, max(1, weight))


def shard_specs(view: ClusterView) -> tuple[ShardSpec, ...]:
    """The proxy's shards for one view of the cluster (see the module's docstring)."""
    members: dict[str, list[tuple[str, NodeSpec]]] = {}
    for node_id, record in view.nodes.items():
        spec = _node(record.address, record.weight)
        if spec is not None:
            members.setdefault(record.shard, []).append((node_id, spec))
    shards = []
    for shard_id in sorted(view.shards):
        shard = view.shards[shard_id]
        if shard.record is None:
            continue  # only a leftover leader/ISR key: the shard is being removed
        nodes: list[NodeSpec] = []
        leader = _node(shard.leader.address) if shard.leader is not None else None
        if leader is not None:
            live = dict(members.get(shard_id, ()))
            if shard.leader is not None and shard.leader.node_id in live:
                leader = live[shard.leader.node_id]  # its weight for weighted reads
            nodes.append(leader)
        isr = set(shard.isr.members) if shard.isr is not None else None
        stale: list[NodeSpec] = []
        for node_id, spec in sorted(members.get(shard_id, ())):
            if shard.drained(node_id) or (leader is not None and spec.address == leader.address):
                continue
            if isr is not None and Incarnation(
                    node_id, view.lease_of(view.keyspace.node(node_id))) not in isr:
                stale.append(spec)  # not in sync (catching up, or dropped): may be stale
            else:
                nodes.append(spec)
        if not nodes:  # no leader and no in-sync replica alive: any answer beats none
            nodes = stale
        shards.append(ShardSpec(shard_id, tuple(nodes), max(1, shard.record.weight),
                                has_leader=leader is not None))
    return tuple(shards)


def settings_for(base: ProxySettings, view: ClusterView) -> ProxySettings:
    """`base` with the view's shards, and its config's hash, read policy and shard error
    policy if it has one."""
    settings = replace(base, shards=shard_specs(view))
    if view.config is not None:
        settings = replace(settings, hash=view.config.hash,
                           read_policy=view.config.read_policy,
                           on_shard_error=view.config.on_shard_error)
    return settings


def _routing(settings: ProxySettings) -> tuple[object, ...]:
    return (settings.shards, settings.hash, settings.read_policy, settings.on_shard_error)


def default_proxy_id(settings: ProxySettings, port: int) -> str:
    host = re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "proxy"
    ident = f"{host}-{port}"
    if settings.workers > 1 or os.environ.get("MEMRING_PROXY_WORKER") == "1":
        ident += f"-{os.getpid()}"  # SO_REUSEPORT workers register one by one
    return ident.lstrip("-_.") or f"proxy-{port}"


def _log_new_leaders(before: ClusterView | None, after: ClusterView) -> None:
    """One line per shard whose leader changed: when the proxy's writes could follow a
    failover (bench/many_failovers.py reads these lines from a kept log)."""
    if before is None:
        return
    for shard_id, shard in after.shards.items():
        earlier = before.shards.get(shard_id)
        if shard.leader is not None and (earlier is None or earlier.epoch != shard.epoch):
            log.info("shard %s: leader %s (epoch %d) in the view of revision %d", shard_id,
                     shard.leader.node_id, shard.epoch, after.revision)


def epochs(view: ClusterView) -> dict[str, int]:
    """Each shard's leader epoch in `view` (0: none): a claim must be newer to be taken."""
    return {shard_id: shard.epoch for shard_id, shard in view.shards.items()}


def newest(view: ClusterView, views: trio.MemoryReceiveChannel[ClusterView]) -> ClusterView:
    """The last of the views already waiting after `view`: when a failover storm's events
    arrive faster than the proxy rebuilds its router (each leader, node and ISR change is a
    view), only the newest is routed by (measured: 12 router builds one after another, the
    view naming a new leader routed 350 ms after etcd held it, load 12)."""
    while True:
        try:
            view = views.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):  # (ended: the next receive says so)
            return view


class ClusterTopology:
    """Keeps a ProxyServer's routing in step with the cluster and registers the proxy."""

    def __init__(self, coordinator: Coordinator, settings: ProxySettings) -> None:
        self.coordinator = coordinator
        self.settings = settings
        self.view: ClusterView | None = None
        self.swaps = 0

    async def first_view(self) -> ClusterView:
        """A snapshot of the cluster, retried with backoff (logged) until etcd answers. A
        refusal (AccessDenied: TLS files, user, password or role) is raised at once: no
        retry cures it, and the proxy exits naming the setting to fix (proxy.cli), as at
        `check_access` when etcd was up at the start."""
        delay = 0.1
        while True:
            try:
                self.view = await self.coordinator.snapshot()
                return self.view
            except AccessDenied:
                raise
            except CoordinatorError as exc:
                log.error("cannot read the cluster from etcd: %s; retrying in %.1fs", exc, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, FIRST_VIEW_BACKOFF_MAX)

    async def follow(self, server: ProxyServer) -> None:
        """Apply the newest view to `server` whenever views come (only when routing
        changed)."""
        async with self.coordinator.follow(check_interval=WATCH_CHECK_INTERVAL) as views:
            async for view in views:
                self.apply(server, newest(view, views))

    def apply(self, server: ProxyServer, view: ClusterView) -> None:
        """Route by `view` from now on, if its routing differs from the server's."""
        _log_new_leaders(self.view, view)
        self.view = view
        current = server.state.settings
        wanted = settings_for(current, view)
        if _routing(wanted) != _routing(current):
            server.apply_topology(wanted)
            self.swaps += 1
        # after the swap: a claim the view caught up with ends, waiting writes look again
        server.state.claims.follow_view(epochs(view))

    async def register(self, address: str, proxy_id: str) -> None:
        """Keep `proxies/<proxy_id>` in etcd while the proxy runs; revoked on exit."""
        delay = 0.1
        while True:
            ttl = self.view.config.lease_ttl if self.view and self.view.config else SESSION_TTL
            try:
                async with self.coordinator.open_session(ttl) as session:
                    await self.coordinator.register_proxy(
                        session, ProxyRecord(proxy_id, address, MEMRING_VERSION))
                    log.info("registered as proxies/%s (%s)", proxy_id, address)
                    delay = 0.1
                    await session.lost.wait()
                    log.warning("proxy registration lost (%s); registering again",
                                session.lost_reason)
            except CoordinatorError as exc:
                log.warning("cannot register the proxy in etcd: %s; retrying in %.1fs",
                            exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, FIRST_VIEW_BACKOFF_MAX)


async def run_cluster(settings: ProxySettings, reuse_port: bool) -> None:
    """The proxy in cluster mode, until SIGTERM/SIGINT (SIGHUP reloads only the auth files:
    etcd is the topology's source)."""
    from memring.cluster.etcd_coordinator import EtcdCoordinator  # grpc: only in cluster mode

    async with EtcdCoordinator.connect(settings.etcd, settings.cluster, probe=False,
                                       security=settings.etcd_security) as etcd:
        await etcd.check_access()  # AccessDenied: exit 1 (proxy.cli)
        topology = ClusterTopology(etcd, settings)
        view = await topology.first_view()
        settings = settings_for(settings, view)
        nonblocking.raise_fd_limit(settings.max_connections + 64 + 8 * len(settings.shards))
        server = ProxyServer(settings, reuse_port=reuse_port)
        server.state.claims.follow_view(epochs(view))
        background = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            port = await nursery.start(server.serve)
            advertise = settings.advertise or f"{settings.host}:{port}"
            proxy_id = settings.proxy_id or default_proxy_id(settings, port)
            log.info("proxy listening on %s:%d (pid %d), following cluster %r at %s: "
                     "%d shard(s)", settings.host, port, os.getpid(), settings.cluster,
                     settings.etcd, len(settings.shards))

            async def keep_in_step() -> None:
                with background:
                    async with trio.open_nursery() as tasks:
                        tasks.start_soon(topology.follow, server)
                        tasks.start_soon(topology.register, advertise, proxy_id)

            nursery.start_soon(keep_in_step)
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT,
                                           signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:  # the topology follows etcd; files reload
                        server.reload_files()
                        continue
                    log.info("%s received: shutting down", signal.Signals(signum).name)
                    background.cancel()  # deregisters: the session's lease is revoked
                    server.shutdown()
                    break
