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

import errno
import logging
import socket
import time
from dataclasses import dataclass, field

import trio

from netio import nonblocking
from protocol import NEED_DATA, RequestParser
from proxy.pool import NodePool
from proxy.router import Shard, ShardRouter
from proxy.session import ClientSession, Slot, resolve
from proxy.settings import ProxySettings
from proxy.stats import ProxyStats

log = logging.getLogger("memring.proxy")

READ_SIZE = 65536
CLIENT_WRITE_TIMEOUT = 30.0  # a client that stops reading its replies is dropped after this
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"


@dataclass
class ProxyState:
    """What every session reads: settings, the current router (swapped whole), stats."""

    settings: ProxySettings
    router: ShardRouter
    stats: ProxyStats
    pools_by_address: dict[str, NodePool] = field(default_factory=dict)

    def pools(self) -> list[NodePool]:
        return list(self.pools_by_address.values())


@dataclass(eq=False)
class _Session:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: bool = True


class ProxyServer:
    def __init__(self, settings: ProxySettings, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.state = ProxyState(settings, ShardRouter([], settings.hash, settings.read_policy),
                                ProxyStats(settings.version))
        self._pool_nursery: trio.Nursery | None = None
        self._sessions: set[_Session] = set()
        self._accepting = trio.CancelScope()
        self._closing = False
        self._session_nursery: trio.Nursery | None = None

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
            shards.append(Shard(spec.name, nodes, spec.weight))
        router = ShardRouter(shards, settings.hash, settings.read_policy)
        self.state.router = router
        self.state.pools_by_address = pools
        self.state.settings = settings
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
            async with trio.open_nursery() as sessions:
                self._session_nursery = sessions
                task_status.started(port)
                try:
                    with self._accepting:
                        await self._accept_forever(listener, sessions)
                finally:
                    nonblocking.close(listener)
            for pool in self.state.pools():
                pool.close()
            pool_nursery.cancel_scope.cancel()

    def shutdown(self, grace: float = 5.0) -> None:
        self._closing = True
        self._accepting.cancel()
        for session in list(self._sessions):
            if session.idle:
                session.scope.cancel()
        if self._session_nursery is not None:
            self._session_nursery.cancel_scope.deadline = trio.current_time() + grace

    async def _accept_forever(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        stats = self.state.stats
        while True:
            try:
                sock = await nonblocking.accept(listener)
            except OSError as exc:
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            stats.total_connections += 1
            if stats.curr_connections >= self.state.settings.max_connections:
                stats.rejected_connections += 1
                nursery.start_soon(self._reject, sock)
                continue
            stats.curr_connections += 1
            nursery.start_soon(self._serve_client, sock)

    async def _reject(self, sock: socket.socket) -> None:
        try:
            nonblocking.send_now(sock, TOO_MANY_CONNECTIONS)
        except OSError:
            pass
        nonblocking.close(sock)

    async def _serve_client(self, sock: socket.socket) -> None:
        session = _Session()
        self._sessions.add(session)
        try:
            with session.scope:
                await self._converse(sock, session)
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                log.info("client connection error: %s", exc)
        finally:
            nonblocking.close(sock)
            self._sessions.discard(session)
            self.state.stats.curr_connections -= 1

    async def _converse(self, sock: socket.socket, session: _Session) -> None:
        settings = self.state.settings
        parser = RequestParser(max_line=settings.max_line, max_item_size=settings.max_item_size)
        client = ClientSession(self.state)
        stats = self.state.stats
        while not self._closing:
            session.idle = parser.buffered == 0
            data = await nonblocking.recv(sock, READ_SIZE)
            session.idle = False
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
            if not slots:
                continue
            reply = await resolve(slots)
            stats.observe_latency((time.perf_counter() - started) / len(slots))
            if reply:
                sent = nonblocking.send_now(sock, reply)
                if sent < len(reply):
                    with trio.move_on_after(CLIENT_WRITE_TIMEOUT) as scope:
                        await nonblocking.send_all(sock, reply[sent:])
                    if scope.cancelled_caught:
                        log.info("dropping a client that did not read its replies "
                                 "for %.0f s", CLIENT_WRITE_TIMEOUT)
                        return
            if client.closing:
                return
