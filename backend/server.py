"""The backend's TCP server: a ReadyHandler for netio's ConnectionServer.

Theory of operation: a connection's read goes to its `Conversation`, which feeds the parser,
runs every complete request against the store in order, and writes all their replies in one
send, so a pipelined burst costs one recv and one send. Plain connections are read by the
ConnectionServer's one `netio.ready_loop.ReadyLoop` task, which calls the conversation
synchronously; only a conversation that must await (a send the kernel did not take whole, a
large multi-get, a dump, `watch`) hands the rest of its batch to a task of its own, and one
whose replies wait for sync replication parks until the gate's callback resumes it. TLS connections have a task each that drives the same conversation. Sockets are
never trio streams, whose layer costs more than the codec and the store together, nor
`trio.socket` (3% slower here; see docs/benchmarks.md).

Replies leave when memcached's would (protocol.write_points): after each read, except those
it holds while it waits for the rest of a data block, which go with the next write, or never
if the client closes first; a bad line that closes the connection drops them too.

Memory stays bounded: one read is at most nonblocking.READ_SIZE bytes, the parser bounds
lines and values, and replies are flushed whenever FLUSH_SIZE bytes are waiting, so a get of
many large values streams instead of piling up.

TLS (`--tls`, `--tls-listen`): one `ServerTls` for the node (its certificates, reloaded by
SIGHUP and `refresh_certs`, and its handshake counter); the main listener is TLS with `--tls`,
and `--tls-listen` adds a second `ConnectionServer` that is TLS while the main one stays
plain. Requests are read and replies written through `conn.stream` either way.

Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections at once, let busy
ones finish the batch in hand, and cancel whatever is left after the grace period.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Generator

import trio

from memring.backend.commands import (
    CloseConnection,
    CommandHandler,
    WriteFence,
)
from memring.backend.conversation import FLUSH_SIZE, GET_SLICE, Conversation, ReplicationGate
from memring.backend.settings import BackendSettings
from memring.backend.stats import ConnectionEntry, ServerCounters, StatsReport, socket_text
from memring.backend.store import Store
from memring.netio import nonblocking
from memring.netio.client_listeners import open_client_listeners
from memring.netio.connection import (
    Connection,
    Receiver,
)
from memring.netio.connection_server import ConnectionServer
from memring.netio.heap import TRIM_THRESHOLD, heap_trim
from memring.netio.tls import ServerTls
from memring.protocol.ascii_auth import AuthenticatingParser, Authenticator
from memring.protocol.binary_parser import BinaryRequestParser
from memring.protocol.negotiation import NegotiatingParser
from memring.protocol.replication import ORIGIN, Position
from memring.protocol.request_parser import RequestParser
from memring.protocol.requests import Get
from memring.protocol.sizes import limit_repeats

log = logging.getLogger("memring.backend")

CRAWL_INTERVAL = 30.0  # seconds between crawls for expired items (Store.crawl_expired)


class BackendServer:
    def __init__(self, settings: BackendSettings, fence: WriteFence | None = None,
                 auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.auth = auth  # memcached's -Y: clients authenticate first (None: off)
        self.store = Store(memory_limit=settings.memory << 20,
                           max_item_size=settings.max_item_size)
        self.counters = ServerCounters()
        self.stats = StatsReport(settings, self.store, self.counters, auth=auth)
        self.handler = CommandHandler(self.store, self.stats, fence)
        self.tls = ServerTls(settings.tls_settings) if settings.tls_enabled else None
        self.stats.tls = self.tls
        self.connections = ConnectionServer(self, settings.max_connections,
                                            self.counters, idle_timeout=settings.idle_timeout,
                                            tls=self.tls if settings.tls else None)
        # --tls-listen: TLS on a second port, the same connection limit and counters
        self.tls_connections = ConnectionServer(
            self, settings.max_connections, self.counters,
            idle_timeout=settings.idle_timeout, tls=self.tls) if settings.tls_listen else None
        self.tls_port = 0
        self._reaper = trio.CancelScope()
        self.gate: ReplicationGate | None = None
        self._parsers: dict[Connection, RequestParser] = {}
        self._conversations: dict[Connection, Conversation] = {}
        self._watchers: set[Connection] = set()
        self._dump_turn = trio.Lock()  # one dump at a time (_stream)
        self.stats.connections = self._connection_entries

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        settings = self.settings
        listener, tls_listener = open_client_listeners(settings)
        port = listener.getsockname()[1]
        self.stats.port = port
        self.counters.total_connections = 1  # memcached counts its listening socket too
        if tls_listener is not None:
            self.tls_port = tls_listener.getsockname()[1]
        async with trio.open_nursery() as services:
            services.start_soon(self._reap_forever)
            await services.start(self.connections.serve, listener)
            if self.tls_connections is not None:
                await services.start(self.tls_connections.serve, tls_listener)
            task_status.started(port)
        # (the nursery exits when shutdown() has stopped the connection server)

    def reload_files(self) -> None:
        """SIGHUP: read again what the node loaded from files (the TLS certificates; a file
        that does not load leaves the old one in place, logged)."""
        if self.tls is not None:
            self.tls.reload()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle connections now and the rest after `grace` s."""
        self.connections.shutdown(grace)
        if self.tls_connections is not None:
            self.tls_connections.shutdown(grace)
        self._reaper.cancel()

    async def _reap_forever(self) -> None:
        """Expired items: the LRU's cold end every reap interval while some may have expired,
        and every CRAWL_INTERVAL then a crawl of all of them (Store.crawl_expired; off with
        `lru_crawler disable`), a chunk at a time with other connections served between
        chunks. Until the store's earliest expiry (or delayed flush) comes, it sleeps, and
        while no item has an expiry for good: an idle node runs no timer for it
        (docs/scaling.md, "round four")."""
        runtime = self.stats.runtime
        store = self.store
        crawled = trio.current_time()
        sooner = trio.Event()

        def expiry_moved() -> None:
            sooner.set()

        store.on_expiry = expiry_moved
        with self._reaper:
            while True:
                await trio.sleep(self.settings.reap_interval)
                while True:
                    sooner = trio.Event()
                    due = min(filter(None, (store.next_expiry, store.flush_before)),
                              default=math.inf)
                    if due <= store.clock():
                        break
                    # (at most a crawl interval at a time: expiry is wall-clock time,
                    # which may be stepped)
                    wait = math.inf if due == math.inf else min(due - store.clock(),
                                                                    CRAWL_INTERVAL)
                    with trio.move_on_after(wait):
                        await sooner.wait()
                store.reap()
                if trio.current_time() - crawled < CRAWL_INTERVAL:
                    continue
                crawled = trio.current_time()
                if runtime.lru_crawler and self.store.items:
                    held = self.store.record_bytes
                    for _dropped in self.store.crawl_expired():
                        await trio.lowlevel.checkpoint()
                    # what the crawl freed goes back to the system, as after flush_all
                    if (held - self.store.record_bytes >= TRIM_THRESHOLD
                            and heap_trim.malloc_trim is not None):
                        heap_trim.trim()

    def opened(self, conn: Connection) -> Receiver:
        """ReadyHandler: a new connection, its parser chosen by the first byte."""
        settings = self.settings
        auth = self.auth

        def text() -> RequestParser | AuthenticatingParser:
            requests = RequestParser(max_line=settings.max_line,
                                     max_item_size=settings.max_item_size)
            self._parsers[conn] = requests  # stats conns: conn_nread while a data block comes
            # in front of the requests until the client authenticated (--auth-file)
            return requests if auth is None else AuthenticatingParser(requests, auth)

        def binary() -> BinaryRequestParser:
            # with --auth-file: SASL PLAIN against the same file first
            return BinaryRequestParser(max_item_size=settings.max_item_size, auth=auth)

        # memcached's -B auto: the first byte chooses text or binary for the connection
        conversation = Conversation(self, conn, NegotiatingParser(text, binary),
                                    self.connections.ready_loop)
        self._conversations[conn] = conversation
        return conversation.received

    def holds_input(self, conn: Connection) -> bool:
        """ReadyHandler: part of a request is buffered."""
        return self._conversations[conn].parser.buffered > 0

    def closed(self, conn: Connection) -> None:
        """ReadyHandler: `conn` closes; its parser's buffer is freed with it (netio.heap)."""
        self._parsers.pop(conn, None)  # a binary connection has none
        conversation = self._conversations.pop(conn, None)
        if conversation is not None:
            conn.held = conversation.parser.buffered

    async def flush_replies(self, conn: Connection, out: list[bytes],
                     depends: Position = ORIGIN) -> None:
        """Send `out`; in sync mode, first wait until this connection's writes replicated,
        and the newest mutation the replies depend on (`depends`, any connection's)."""
        gate = self.gate
        if gate is not None and (
                (gate.commits != conn.mark and not await gate.settle())
                or (depends > ORIGIN and not await gate.settle_reads(depends))):
            # This node stopped leading before its in-sync followers held the write: no
            # answer is true, so none is given (the client sees the connection close).
            out.clear()
            raise CloseConnection
        data = b"".join(out)
        out.clear()
        self.counters.bytes_written += len(data)
        conn.writing = True
        try:
            await conn.stream.send_all(data)
        finally:
            conn.writing = False
        if gate is not None:
            conn.mark = gate.commits  # committed while we waited: other connections'

    async def stream_dump(self, conn: Connection, chunks: Generator[bytes, None, None],
                      out: list[bytes], depends: Position) -> None:
        """A dump (stats cachedump, lru_crawler metadump) after the replies before it in `out`:
        chunk by chunk, flushed whenever FLUSH_SIZE bytes wait, other connections running
        between chunks. The last chunk stays in `out`, sent with the rest of the batch. One
        dump runs at a time (the others wait their turn): each holds a snapshot of the keys
        (8 bytes a key), which must not be multiplied by the number of clients asking."""
        try:
            async with self._dump_turn:
                for chunk in chunks:  # the generator takes its snapshot on the first chunk
                    out.append(chunk)
                    if sum(map(len, out)) >= FLUSH_SIZE:
                        await self.flush_replies(conn, out, depends)
                        depends = ORIGIN
                    await trio.lowlevel.checkpoint()
        finally:
            chunks.close()  # a connection gone mid-dump ends the walk (and the crawl's BUSY)
        if depends > ORIGIN:
            await self.flush_replies(conn, out, depends)

    async def hold_watching(self, conn: Connection) -> None:
        """memcached's conn_watch: OK, then the connection is only held (its input dropped)
        until the client closes it or the server shuts down; memring writes no log lines."""
        admin = self.stats.admin
        admin.watchers += 1
        self._watchers.add(conn)
        try:
            await self.flush_replies(conn, [b"OK\r\n"])
            conn.idle = True  # shutdown closes it at once; never `reading`: no idle timeout
            while not self.connections.closing:
                if not await conn.stream.recv(nonblocking.READ_SIZE):
                    return
        finally:
            admin.watchers -= 1
            self._watchers.discard(conn)

    def _connection_entries(self) -> list[ConnectionEntry]:
        """`stats conns`: the listening sockets and every client connection."""
        entries = []
        started = self.stats.started
        now = trio.current_time()
        for server in (self.connections, self.tls_connections):
            if server is None:
                continue
            if server.listener is not None and server.listener.fileno() != -1:
                entries.append(ConnectionEntry(
                    server.listener.fileno(), socket_text(server.listener.getsockname()), None,
                    "conn_listening", int(time.time() - started)))
            for conn in server.connections():
                entry = self._connection_entry(conn, now)
                if entry is not None:
                    entries.append(entry)
        return entries

    def _connection_entry(self, conn: Connection, now: float) -> ConnectionEntry | None:
        try:
            fd = conn.sock.fileno()
            addr, listen = conn.sock.getpeername(), conn.sock.getsockname()
        except OSError:
            return None  # closing
        parser = self._parsers.get(conn)
        if conn in self._watchers:
            state = "conn_watch"
        elif conn.reading:
            state = "conn_nread" if parser is not None and parser.in_data_block else "conn_read"
        elif conn.writing:
            state = "conn_mwrite"
        else:
            state = "conn_parse_cmd"  # the connection running this command
        idle = 0 if state == "conn_parse_cmd" else int(now - conn.active)
        return ConnectionEntry(fd, socket_text(addr), socket_text(listen), state, idle)

    async def multi_get(self, conn: Connection, request: Get, out: list[bytes],
                         depends: Position) -> None:
        """A get of many keys, answered a slice at a time so big replies stream; `depends`:
        what the replies before it in `out` depend on."""
        if self.handler.refuse_write(request, out) if request.touches else \
                self.handler.refuse_read(out):
            return  # gat/gats change items: only a leader may; reads as the fence says
        keys = limit_repeats(request.keys)  # as memcached, a key at most 59,999 times
        recorder = self.handler.recorder if request.touches else None
        gate = self.gate
        for start in range(0, len(keys), GET_SLICE):
            chunk = keys[start: start + GET_SLICE]
            self.handler.values(request, chunk, out)
            if recorder is not None:
                recorder.committed(None)  # gat/gats touched items: replicate the slice
            if gate is not None:
                depends = gate.unacknowledged(chunk, depends)
            if sum(map(len, out)) >= FLUSH_SIZE:
                await self.flush_replies(conn, out, depends)
                depends = ORIGIN
        out.append(b"END\r\n")
        if depends > ORIGIN:  # the END goes with the batch's last flush: wait here
            await self.flush_replies(conn, out, depends)
