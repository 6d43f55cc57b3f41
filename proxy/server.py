"""The proxy's TCP server: client sessions, backend pools, topology reloads.

Structured concurrency: `ProxyServer.serve` owns two nurseries, one for the backend
pools (each pool runs its connection slots) and one for client connections (the
ConnectionServers: plain clients served from one ReadyLoop task by their `ClientConversation`,
proxy/conversation.py; TLS ones a task each) and reply drainers. A topology
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

import logging
import ssl

import trio

from memring.cluster.auth_file import load_credentials, reload_credentials
from memring.netio.client_listeners import open_client_listeners
from memring.netio.connection import Connection, Receiver
from memring.netio.connection_server import ConnectionServer
from memring.netio.tls import ServerTls, TlsSettings, client_context
from memring.protocol import RequestParser
from memring.protocol.ascii_auth import AuthenticatingParser, Authenticator, Login
from memring.protocol.binary_parser import BinaryRequestParser
from memring.protocol.negotiation import NegotiatingParser
from memring.proxy.buffer_budget import BufferBudget
from memring.proxy.conversation import ClientConversation
from memring.proxy.pool import NodePool
from memring.proxy.reply_stream import ReplyStream
from memring.proxy.router import Shard, ShardRouter
from memring.proxy.session import ClientSession
from memring.proxy.settings import ProxySettings
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
        self.connections = ConnectionServer(self, settings.max_connections,
                                            self.state.stats.connections,
                                            idle_timeout=settings.idle_timeout,
                                            tls=self.state.tls if settings.tls else None)
        # --tls-listen: TLS on a second port, the same connection limit and counters
        self.tls_connections = ConnectionServer(
            self, settings.max_connections, self.state.stats.connections,
            idle_timeout=settings.idle_timeout,
            tls=self.state.tls) if settings.tls_listen else None
        self.tls_port = 0
        self._conversations: dict[Connection, ClientConversation] = {}
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

    # -- ReadyHandler: the client connections ---------------------------------------

    def opened(self, conn: Connection) -> Receiver:
        """A client connection: its parser (text or binary by the first byte), session and
        replies; plain ones are then served by the ReadyLoop (proxy.conversation)."""
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

        # `closing` and `end` hold for either listener's connections (shut down together;
        # one not in a ReadyLoop is ended by cancelling its task)
        server = self.connections
        replies = ReplyStream(conn, server, self.state.stats, self._drainers,
                              self.state.buffers, settings.client_buffer_bytes,
                              settings.client_write_timeout_ms / 1000)
        conversation = ClientConversation(conn, NegotiatingParser(text, binary),
                                          ClientSession(self.state, replies), replies, server,
                                          self.state.buffers)
        conn.busy = lambda: not replies.answered  # replies on their way: not idle
        conn.at_end_of_input = conversation.at_end_of_input
        self._conversations[conn] = conversation
        self.state.clients[conn] = None  # for `stats conns`
        return conversation.received

    def holds_input(self, conn: Connection) -> bool:
        """ReadyHandler: part of a request buffered, or replies on their way."""
        return self._conversations[conn].holds_input()

    def closed(self, conn: Connection) -> None:
        """ReadyHandler: `conn` closes; what its replies held goes back to the budget."""
        self.state.clients.pop(conn, None)
        # the conversation's bound methods: conn and conversation refer to each other, and a
        # cycle would keep a closed client's buffers until the cyclic GC runs
        conn.receiver = conn.at_end_of_input = None
        conversation = self._conversations.pop(conn, None)
        if conversation is not None:
            conn.held = conversation.close()  # the most it held (netio.heap trims after big ones)
