"""The backend's TCP server: one trio task per connection over non-blocking sockets.

Theory of operation: a connection reads what the socket has, feeds the parser, runs
every complete request against the store in order, and writes all their replies in
one send, so a pipelined burst costs one recv and one send. Sockets are driven by
`netio.nonblocking` (trio's low-level readiness waits) rather than trio streams, whose
layer costs more than the codec and the store together, or `trio.socket` (3% slower
here; see docs/benchmarks.md).

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
from collections.abc import Sequence
from typing import Protocol

import trio

from memring.backend.commands import CloseConnection, CommandHandler, WriteFence
from memring.backend.settings import BackendSettings
from memring.backend.stats import ServerCounters, StatsReport
from memring.backend.store import Store
from memring.netio import nonblocking
from memring.netio.client_listeners import open_client_listeners
from memring.netio.connection_server import Connection, ConnectionServer
from memring.netio.tls import ServerTls
from memring.protocol.ascii_auth import AuthenticatingParser, Authenticator
from memring.protocol.replication import ORIGIN, Position
from memring.protocol.request_parser import NEED_DATA, RequestParser
from memring.protocol.requests import Get, Quit
from memring.protocol.sizes import limit_repeats
from memring.protocol.write_points import WritePoints, block_of

log = logging.getLogger("memring.backend")

FLUSH_SIZE = 1 << 20
GET_SLICE = 64  # keys of one multi-get handled between flushes
def _held_from(out: list[bytes], sendable: int) -> int:
    """Where the replies memcached holds begin, while it waits for the rest of a data block
    (protocol.write_points): from `sendable` on, unless they pass FLUSH_SIZE, which memring
    sends rather than hold (memcached holds at most REQUESTS_PER_EVENT + 1 replies, each up
    to its item size)."""
    return sendable if sum(map(len, out[sendable:])) <= FLUSH_SIZE else len(out)


class ReplicationGate(Protocol):
    """Sync replication: replies that follow a write, or that depend on the state of a key
    whose newest write the in-sync followers do not hold yet, wait until it is replicated."""

    commits: int  # write batches committed so far; a connection compares it with its mark

    async def settle(self) -> bool:
        """Wait for the in-sync followers; False if the write will never be acknowledged."""

    def unacknowledged(self, keys: Sequence[bytes], since: Position) -> Position:
        """The newer of `since` and the newest mutation of `keys` the in-sync followers do
        not hold yet (ORIGIN: none)."""

    async def settle_reads(self, position: Position) -> bool:
        """Wait until they hold `position`; False if they never will."""


def _keys_of(event: object) -> Sequence[bytes]:
    """The keys whose state a request's reply depends on."""
    if type(event) is Get:
        return event.keys
    key = getattr(event, "key", None)
    return (key,) if key is not None else ()


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
        self.connections = ConnectionServer(self._converse, settings.max_connections,
                                            self.counters, idle_timeout=settings.idle_timeout,
                                            tls=self.tls if settings.tls else None)
        # --tls-listen: TLS on a second port, the same connection limit and counters
        self.tls_connections = ConnectionServer(
            self._converse, settings.max_connections, self.counters,
            idle_timeout=settings.idle_timeout, tls=self.tls) if settings.tls_listen else None
        self.tls_port = 0
        self._reaper = trio.CancelScope()
        self.gate: ReplicationGate | None = None

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
        with self._reaper:
            while True:
                await trio.sleep(self.settings.reap_interval)
                self.store.reap()

    async def _converse(self, conn: Connection) -> None:
        requests = RequestParser(max_line=self.settings.max_line,
                                 max_item_size=self.settings.max_item_size)
        # in front of the requests until the client authenticated (--auth-file)
        parser = requests if self.auth is None else AuthenticatingParser(requests, self.auth)
        try:
            await self._serve_requests(conn, parser)
        finally:
            conn.held = parser.buffered  # freed with the parser (no cycle holds it)

    async def _serve_requests(self, conn: Connection,
                              parser: RequestParser | AuthenticatingParser) -> None:
        handle = self.handler.handle
        counters = self.counters
        recv = conn.stream.recv  # plain or TLS (set before the handler runs)
        next_event = parser.next_event
        server = self.connections
        idle_timeout = server.idle_timeout
        current_time = trio.current_time
        gate = self.gate
        out: list[bytes] = []  # replies not sent yet; some may wait for the next read
        depends = ORIGIN  # the newest unreplicated mutation the replies show
        while not server.closing:
            conn.idle = parser.buffered == 0
            conn.reading = True  # only here may --idle-timeout close the connection
            data = await recv(nonblocking.READ_SIZE)
            conn.reading = conn.idle = False
            if not data:
                return  # replies held for an unfinished data block go unsent, as memcached's
            if gate is not None and not out:
                conn.mark = gate.commits  # writes so far were other connections'
            counters.bytes_read += len(data)
            block = block_of(parser.in_data_block, parser.swallowing)
            parser.receive_data(data)
            quitting = hanging_up = False
            served = False
            sendable = 0  # how many of `out` memcached would have written by now
            points = WritePoints(block=block)
            replied = 0  # len(out) before the last request's reply
            event: object = None
            try:
                while True:
                    event = next_event()
                    if event is NEED_DATA:
                        break
                    served = True
                    if points.before():
                        sendable = len(out)
                    points.after(event, parser.swallow_left)
                    if type(event) is Get and len(event.keys) > GET_SLICE:
                        await self._multi_get(conn, event, out, depends)
                        depends = ORIGIN  # _multi_get flushed what depended on it
                        sendable = len(out)
                        continue
                    replied = len(out)
                    handle(event, out)
                    if gate is not None:
                        depends = gate.unacknowledged(_keys_of(event), depends)
                    if not points.unwritten:
                        sendable = len(out)
                    if len(out) >= 32 and sum(map(len, out)) >= FLUSH_SIZE:
                        await self._flush(conn, out, depends)
                        depends = ORIGIN
                        sendable = replied = 0
            except CloseConnection:
                quitting = True
                # memcached closes on a bad line without writing what it had not sent yet;
                # `quit` writes first (proto_text.c process_quit_command).
                hanging_up = type(event) is not Quit
            if hanging_up:
                del out[sendable:replied]  # never sent; the closing answer itself is
                sendable = len(out)
            elif not parser.in_data_block or quitting:
                sendable = len(out)
            else:
                sendable = _held_from(out, sendable)
            try:
                if sendable:
                    held = out[sendable:]
                    del out[sendable:]
                    await self._flush(conn, out, depends)
                    out[:] = held
                    if not held:
                        depends = ORIGIN
            except CloseConnection:
                return
            if quitting:
                return
            if served and idle_timeout:
                conn.active = current_time()  # idle from the last reply sent

    async def _flush(self, conn: Connection, out: list[bytes],
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
        await conn.stream.send_all(data)
        if gate is not None:
            conn.mark = gate.commits  # committed while we waited: other connections'

    async def _multi_get(self, conn: Connection, request: Get, out: list[bytes],
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
                await self._flush(conn, out, depends)
                depends = ORIGIN
        out.append(b"END\r\n")
        if depends > ORIGIN:  # the END goes with the batch's last flush: wait here
            await self._flush(conn, out, depends)
