"""The proxy's TCP server: client sessions, backend pools, topology reloads.

Structured concurrency: `ProxyServer.serve` owns two nurseries, one for the backend
pools (each pool runs its connection slots) and one for client sessions. A topology
change builds a new `ShardRouter` and swaps it in with one assignment; pools are kept
per node address, so nodes present before and after keep their connections, and pools
of removed nodes are closed once the new router is in place.

Shutdown (SIGTERM/SIGINT): stop accepting, close idle sessions, give busy ones a grace
period, then close the pools.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass, field

import trio

from netio import nonblocking
from netio.connection_server import Connection, ConnectionServer
from protocol import NEED_DATA, RequestParser
from proxy.pool import NodePool
from proxy.router import Shard, ShardRouter
from proxy.session import ClientSession, Ready, Slot
from proxy.settings import ProxySettings
from proxy.stats import ProxyStats

log = logging.getLogger("memring.proxy")

READ_SIZE = 65536
CLIENT_WRITE_TIMEOUT = 30.0  # a client that stops reading its replies is dropped after this
FLUSH_SIZE = 1 << 20        # replies waiting past this are sent before resolving more
MAX_OUTSTANDING = 32        # requests of one client in flight before the proxy reads on


@dataclass
class ProxyState:
    """What every session reads: settings, the current router (swapped whole), stats."""

    settings: ProxySettings
    router: ShardRouter
    stats: ProxyStats
    pools_by_address: dict[str, NodePool] = field(default_factory=dict)
    # set (and replaced) on every topology swap: writes waiting for a leader wake on it
    topology_changed: trio.Event = field(default_factory=trio.Event)

    def pools(self) -> list[NodePool]:
        return list(self.pools_by_address.values())


class ProxyServer:
    def __init__(self, settings: ProxySettings, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.state = ProxyState(settings, ShardRouter([], settings.hash, settings.read_policy),
                                ProxyStats(settings.version))
        self.connections = ConnectionServer(self._converse, settings.max_connections,
                                            self.state.stats.connections)
        self._pool_nursery: trio.Nursery | None = None

    # -- topology ----------------------------------------------------------------------

    def apply_topology(self, settings: ProxySettings) -> None:
        """Build the router for `settings` and swap it in; reuse pools by address."""
        assert self._pool_nursery is not None
        old = self.state.pools_by_address
        pools: dict[str, NodePool] = {}
        shards = []
        for spec in settings.shards:
            nodes = []
            for node in spec.nodes:
                pool = pools.get(node.address) or old.get(node.address)
                if pool is None:
                    pool = NodePool(node, settings)
                    self._pool_nursery.start_soon(pool.run)
                pools[node.address] = pool
                nodes.append(pool)
            shards.append(Shard(spec.name, nodes, spec.weight, spec.has_leader))
        router = ShardRouter(shards, settings.hash, settings.read_policy,
                             leader_writes=bool(settings.etcd))
        self.state.router = router
        self.state.pools_by_address = pools
        self.state.settings = settings
        changed, self.state.topology_changed = self.state.topology_changed, trio.Event()
        changed.set()
        for address, pool in old.items():
            if address not in pools:
                pool.close()
        log.info("topology: %d shard(s), %d node(s), hash %s, read policy %s",
                 len(shards), len(pools), settings.hash, settings.read_policy)

    # -- serving -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listener = nonblocking.listen(self.settings.host, self.settings.port, 4096,
                                      self.reuse_port)
        port = listener.getsockname()[1]
        async with trio.open_nursery() as pool_nursery:
            self._pool_nursery = pool_nursery
            self.apply_topology(self.settings)
            if self.settings.metrics_listen:  # stopped with the pools below
                from proxy.metrics import endpoint_for  # prometheus_client only when asked

                await pool_nursery.start(endpoint_for(self.state).serve)
            async with trio.open_nursery() as serving:
                await serving.start(self.connections.serve, listener)
                task_status.started(port)
            for pool in self.state.pools():
                pool.close()
            pool_nursery.cancel_scope.cancel()

    def shutdown(self, grace: float = 5.0) -> None:
        self.connections.shutdown(grace)

    async def _answer(self, sock: socket.socket, slots: list[Slot], started: float) -> bool:
        """Send the replies of `slots` in order, streaming past FLUSH_SIZE; False if the
        client stopped reading for CLIENT_WRITE_TIMEOUT and must be dropped. Each reply's
        latency since `started` goes into the stats' histogram."""
        out: list[bytes] = []
        size = 0
        observe = self.state.stats.observe_reply
        for slot in slots:
            reply = slot.data if type(slot) is Ready else await slot.reply()
            observe(started)
            out.append(reply)
            size += len(reply)
            if size >= FLUSH_SIZE:
                if not await self._send(sock, b"".join(out)):
                    return False
                out.clear()
                size = 0
        return not out or await self._send(sock, b"".join(out))

    async def _send(self, sock: socket.socket, data: bytes) -> bool:
        if not data:
            return True
        sent = nonblocking.send_now(sock, data)
        if sent < len(data):
            with trio.move_on_after(CLIENT_WRITE_TIMEOUT) as scope:
                await nonblocking.send_all(sock, data[sent:])
            if scope.cancelled_caught:
                log.info("dropping a client that did not read its replies for %.0f s",
                         CLIENT_WRITE_TIMEOUT)
                return False
        return True

    async def _converse(self, conn: Connection) -> None:
        sock = conn.sock
        settings = self.state.settings
        parser = RequestParser(max_line=settings.max_line, max_item_size=settings.max_item_size)
        client = ClientSession(self.state)
        server = self.connections
        while not server.closing:
            conn.idle = parser.buffered == 0
            data = await nonblocking.recv(sock, READ_SIZE)
            conn.idle = False
            if not data:
                return
            parser.receive_data(data)
            started = time.perf_counter()
            slots: list[Slot] = []
            while not client.closing:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                slots.append(client.issue(event))  # type: ignore[arg-type]
                if len(slots) >= MAX_OUTSTANDING:
                    # Bound what one client can have in flight (and buffered here): answer
                    # these before reading on; a client that stops reading stops here.
                    if not await self._answer(sock, slots, started):
                        return
                    slots = []
            if slots and not await self._answer(sock, slots, started):
                return
            if client.closing:
                return
