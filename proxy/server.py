"""The proxy's TCP server: client sessions, backend pools, topology reloads.

Structured concurrency: `ProxyServer.serve` owns two nurseries, one for the backend
pools (each pool runs its connection slots) and one for client sessions. A topology
change builds a new `ShardRouter` and swaps it in with one assignment; pools are kept
per node address, so nodes present before and after keep their connections, and pools
of removed nodes are closed once the new router is in place.

TLS (`--tls`, `--tls-listen`): as the backend's, one `ServerTls` (the proxy's own
certificates: SIGHUP and `refresh_certs` reload them) for the main listener with `--tls`, or
for a second listener beside a plain main one with `--tls-listen`; sessions read and write
through `conn.stream`.

Shutdown (SIGTERM/SIGINT): stop accepting, close idle sessions, give busy ones a grace
period, then close the pools.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time

import trio

from memring.cluster.auth_file import load_credentials, reload_credentials
from memring.netio import nonblocking
from memring.netio.client_listeners import open_client_listeners
from memring.netio.connection import Connection
from memring.netio.connection_server import ConnectionServer
from memring.netio.streams import PlainStream
from memring.netio.tls import ServerTls, TlsSettings, client_context
from memring.protocol import NEED_DATA, RequestParser
from memring.protocol.ascii_auth import AuthenticatingParser, Authenticator, Login
from memring.protocol.binary_parser import BinaryRequestParser
from memring.protocol.negotiation import NegotiatingParser, TextParser
from memring.protocol.requests import ProtocolError
from memring.protocol.write_points import WritePoints, block_of
from memring.proxy.binary_batches import BatchingParser
from memring.proxy.buffer_budget import OUT_OF_MEMORY_READING, BufferBudget
from memring.proxy.edge_reads import EdgePoller
from memring.proxy.pool import NodePool
from memring.proxy.reply_stream import ReplyStream
from memring.proxy.router import Shard, ShardRouter
from memring.proxy.session import ClientSession
from memring.proxy.settings import ProxySettings
from memring.proxy.slots import Ready
from memring.proxy.state import ProxyState
from memring.proxy.stats import ProxyStats

log = logging.getLogger("memring.proxy")


class ProxyServer:
    def __init__(self, settings: ProxySettings, reuse_port: bool = False) -> None:
        self.settings = settings
        self.reuse_port = reuse_port
        self.state = ProxyState(settings, ShardRouter([], settings.hash, settings.read_policy),
                                ProxyStats(settings.version),
                                BufferBudget(settings.max_buffered_bytes))
        self.state.tls = ServerTls(settings.tls_settings) if settings.tls_enabled else None
        self.connections = ConnectionServer(self._converse, settings.max_connections,
                                            self.state.stats.connections,
                                            idle_timeout=settings.idle_timeout,
                                            tls=self.state.tls if settings.tls else None)
        # --tls-listen: TLS on a second port, the same connection limit and counters
        self.tls_connections = ConnectionServer(
            self._converse, settings.max_connections, self.state.stats.connections,
            idle_timeout=settings.idle_timeout,
            tls=self.state.tls) if settings.tls_listen else None
        self.tls_port = 0
        self._pool_nursery: trio.Nursery | None = None
        self._drainers: trio.Nursery | None = None
        self._backend_tls: tuple[TlsSettings | None, ssl.SSLContext | None] = (None, None)
        # memcached's -Y: clients authenticate first (None: off); AuthFileError if unreadable
        self.auth = Authenticator(load_credentials(settings.auth_file)) \
            if settings.auth_file else None
        self.state.stats.auth = self.auth
        # the proxy's own user for backends that want one (the file's first entry)
        self._backend_users = Authenticator(load_credentials(settings.backend_auth_file)) \
            if settings.backend_auth_file else None
        self.state.stats.backend_auth = self._backend_users is not None

    def backend_login(self) -> Login | None:
        """The user and password new backend connections authenticate with (None: none)."""
        return self._backend_users.credentials.first() if self._backend_users else None

    def reload_auth(self) -> None:
        """SIGHUP: read the auth files again; one that cannot be loaded is kept as it was.
        Connections already authenticated stay so (as in memcached)."""
        if self.auth is not None:
            reload_credentials(self.auth, self.state.settings.auth_file)
        if self._backend_users is not None:
            reload_credentials(self._backend_users, self.state.settings.backend_auth_file,
                               "SIGHUP (backend credentials)")

    # -- topology ----------------------------------------------------------------------

    def apply_topology(self, settings: ProxySettings) -> None:
        """Build the router for `settings` and swap it in; reuse pools by address."""
        assert self._pool_nursery is not None
        old = self.state.pools_by_address
        pools: dict[str, NodePool] = {}
        shards = []
        tls = self._backend_context(settings)
        for spec in settings.shards:
            nodes = []
            for node in spec.nodes:
                pool = pools.get(node.address) or old.get(node.address)
                if pool is None:
                    pool = NodePool(node, settings, self.backend_login, tls)
                    self._pool_nursery.start_soon(pool.run)
                pool.tls = tls  # a kept pool's next connections follow a changed setting
                pools[node.address] = pool
                nodes.append(pool)
            shards.append(Shard(spec.name, nodes, spec.weight, spec.has_leader))
        router = ShardRouter(shards, settings.hash, settings.read_policy,
                             leader_writes=bool(settings.etcd),
                             miss_on_shard_error=settings.on_shard_error == "miss",
                             previous=self.state.router)
        self.state.router = router
        self.state.pools_by_address = pools
        self.state.settings = settings
        changed, self.state.topology_changed = self.state.topology_changed, trio.Event()
        changed.set()
        for address, pool in old.items():
            if address not in pools:
                pool.close()
        log.info("topology: %d shard(s), %d node(s), hash %s, read policy %s, reads of a "
                 "shard that cannot answer: %s", len(shards), len(pools), settings.hash,
                 settings.read_policy,
                 "a miss" if settings.on_shard_error == "miss" else "SERVER_ERROR")

    def _backend_context(self, settings: ProxySettings) -> ssl.SSLContext | None:
        """The client context for new backend connections, built again only when the
        backend TLS settings change (the files were checked when the settings loaded)."""
        wanted = settings.backend_tls_settings
        self.state.stats.backend_tls = wanted.verify if wanted is not None else "off"
        if wanted != self._backend_tls[0]:
            self._backend_tls = (wanted, client_context(wanted) if wanted else None)
        return self._backend_tls[1]

    # -- serving -----------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        settings = self.settings
        listener, tls_listener = open_client_listeners(settings, 4096, self.reuse_port)
        port = listener.getsockname()[1]
        if tls_listener is not None:
            self.tls_port = tls_listener.getsockname()[1]
        async with trio.open_nursery() as pool_nursery:
            self._pool_nursery = pool_nursery
            # Pools connect on their first request (proxy.pool), which waits for the
            # handshake (TLS, auth, the version probe): nothing to wait for before accepting.
            self.apply_topology(self.settings)
            if self.settings.metrics_listen:  # stopped with the pools below
                from memring.proxy.metrics import endpoint_for  # prometheus_client only when asked

                await pool_nursery.start(endpoint_for(self.state).serve)
            async with trio.open_nursery() as serving:
                self._drainers = serving  # reply drainers (see reply_stream)
                await serving.start(self.connections.serve, listener)
                if self.tls_connections is not None:
                    await serving.start(self.tls_connections.serve, tls_listener)
                task_status.started(port)
            for pool in self.state.pools():
                pool.close()
            pool_nursery.cancel_scope.cancel()

    def reload_files(self) -> None:
        """SIGHUP: read again what the proxy loaded from files besides its topology (the TLS
        certificates, the auth files; a file that does not load leaves the old one in place,
        logged)."""
        if self.state.tls is not None:
            self.state.tls.reload()
        self.reload_auth()

    def shutdown(self, grace: float = 5.0) -> None:
        self.connections.shutdown(grace)
        if self.tls_connections is not None:
            self.tls_connections.shutdown(grace)

    async def _converse(self, conn: Connection) -> None:
        assert self._drainers is not None
        settings = self.state.settings
        auth = self.auth

        def text() -> RequestParser | AuthenticatingParser:
            requests = RequestParser(max_line=settings.max_line,
                                     max_item_size=settings.max_item_size)
            # in front of the requests until the client authenticated (--auth-file)
            return requests if auth is None else AuthenticatingParser(requests, auth)

        def binary() -> BinaryRequestParser:
            # with --auth-file: SASL PLAIN against the same users first
            return BinaryRequestParser(max_item_size=settings.max_item_size, auth=auth)

        # memcached's -B auto: the first byte chooses text or binary for the connection
        # ... and a binary client's consecutive gets become one multi-get (binary_batches)
        negotiating = NegotiatingParser(text, binary)
        parser = BatchingParser(negotiating)
        chosen: TextParser | None = None  # write points: text only (protocol.write_points)
        replies = ReplyStream(conn, self.connections, self.state.stats, self._drainers,
                              self.state.buffers, settings.client_buffer_bytes,
                              settings.client_write_timeout_ms / 1000)
        client = ClientSession(self.state, replies)
        server = self.connections
        idle_timeout = server.idle_timeout
        conn.busy = lambda: not replies.answered  # replies on their way: not idle
        clients = self.state.clients
        clients[conn] = None  # for `stats conns`
        queue = replies.queue
        refused = False  # the client's partial requests would pass the proxy's budget
        # plain or TLS (set before the handler runs); plain reads need no epoll re-arm each
        reader = EdgePoller.reader(conn.sock) if type(conn.stream) is PlainStream else None
        recv = conn.stream.recv if reader is None else reader.recv
        try:
            while not server.closing:
                # Replies of the last batch may still be on their way: the backends' readers
                # send them (see reply_stream).
                buffered = parser.buffered
                if buffered != replies.held_input and not replies.hold_input(buffered):
                    refused = True
                    break
                replies.idle_when_answered = buffered == 0
                conn.idle = replies.idle_when_answered and replies.answered
                replies.waiting_for_client = conn.reading = True  # --idle-timeout may close it
                data = await recv(nonblocking.READ_SIZE)
                replies.waiting_for_client = conn.reading = False
                conn.idle = False
                if not data:
                    await replies.wait_answered()  # the held ones never go, as in memcached
                    return
                block = block_of(chosen.in_data_block, chosen.swallowing) if chosen else ""
                parser.receive_data(data)
                if chosen is None and not isinstance(negotiating.chosen, BinaryRequestParser):
                    chosen = negotiating.chosen
                started = time.perf_counter()
                if not replies.answered:  # a pipelining client: the last batch first
                    if not replies.hold_input(parser.buffered):  # held while it waits
                        refused = True
                        break
                    await replies.wait_answered()
                replies.started = started
                issued = False
                # which replies memcached would hold (write_points); the held ones of the last
                # read are still unwritten
                points = WritePoints(unwritten=replies.held, block=block)
                while not client.closing:
                    event = parser.next_event()
                    if event is NEED_DATA:
                        break
                    issued = True
                    if points.before():
                        replies.held = 0
                    if type(event) is ProtocolError and event.close and chosen:
                        # memcached closes without writing what it had not written yet
                        del queue[max(0, len(queue) - points.unwritten):]
                    queue.append(client.issue(event))
                    points.after(event, chosen.swallow_left if chosen else 0)
                    if chosen:  # replies go out only where memcached writes them (or at the end)
                        replies.held = points.unwritten
                    if len(queue) - replies.held >= replies.window:
                        # Bound what one client can have in flight (and buffered here):
                        # answer these before reading on; a client that stops reading
                        # stops here. (The held ones are at most REQUESTS_PER_EVENT + 1.)
                        replies.send_ready()
                        await replies.wait_answered()
                        replies.adjust_window()
                if chosen is None or not chosen.in_data_block or client.closing:
                    replies.held = 0
                # else they wait until the block is complete, unsent if the client closes first
                replies.send_ready()
                if client.closing:
                    await replies.wait_answered()
                    return
                if issued and idle_timeout:
                    server.rearm(conn)  # idle from here (or from its last reply: conn.busy)
            if refused:
                del parser  # its bytes are not held while the client gets its last replies
                replies.hold_input(0)
                await self._refuse(replies, conn.sock)
        finally:
            if reader is not None:
                reader.close()  # before the connection server closes the socket
            conn.busy = None  # it refers to replies, which refer to conn: no cycle left
            clients.pop(conn, None)
            conn.held = replies.close()  # the most it held (netio.heap trims after big ones)

    async def _refuse(self, replies: ReplyStream, sock: socket.socket) -> None:
        """The client's partial requests would pass --max-buffered-bytes: after the replies
        it is owed, memcached's answer to a read buffer it cannot allocate, then close."""
        self.state.buffers.log_refusal("input")
        replies.queue.append(Ready(OUT_OF_MEMORY_READING))
        replies.send_ready()
        await replies.wait_answered()
        with contextlib.suppress(OSError):
            # EOF after the answer: closing with its unread input resets the connection,
            # and a reset that overtakes the answer would lose it.
            sock.shutdown(socket.SHUT_WR)
