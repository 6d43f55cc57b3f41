"""The backend's TCP server: one trio task per connection over non-blocking sockets.

Theory of operation: a connection reads what the socket has, feeds the parser, runs
every complete request against the store in order, and writes all their replies in
one send, so a pipelined burst costs one recv and one send. Sockets are driven by
`netio.nonblocking` (trio's low-level readiness waits) rather than trio streams, whose
layer costs more than the codec and the store together, or `trio.socket` (3% slower
here; see docs/benchmarks.md).

Memory stays bounded: one read is at most READ_SIZE bytes, the parser bounds lines and
values, and replies are flushed whenever FLUSH_SIZE bytes are waiting, so a get of many
large values streams instead of piling up.

Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections at once, let busy
ones finish the batch in hand, and cancel whatever is left after the grace period.
"""

from __future__ import annotations

import errno
import logging
import socket
from dataclasses import dataclass, field

import trio

from backend.commands import CloseConnection, CommandHandler
from backend.settings import BackendSettings
from backend.stats import ServerCounters, StatsReport
from backend.store import Store
from netio import nonblocking
from protocol.request_parser import NEED_DATA, RequestParser
from protocol.requests import Get

log = logging.getLogger("memring.backend")

READ_SIZE = 65536
FLUSH_SIZE = 1 << 20
GET_SLICE = 64  # keys of one multi-get handled between flushes
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"


@dataclass(eq=False)
class _Connection:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: bool = True


class BackendServer:
    def __init__(self, settings: BackendSettings) -> None:
        self.settings = settings
        self.store = Store(memory_limit=settings.memory << 20,
                           max_item_size=settings.max_item_size)
        self.counters = ServerCounters()
        self.stats = StatsReport(settings, self.store, self.counters)
        self.handler = CommandHandler(self.store, self.stats)
        self._connections: set[_Connection] = set()
        self._accepting = trio.CancelScope()
        self._closing = False
        self._conn_nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listener = nonblocking.listen(self.settings.host, self.settings.port)
        port = listener.getsockname()[1]
        self.stats.port = port
        async with trio.open_nursery() as services:
            services.start_soon(self._reap_forever)
            async with trio.open_nursery() as connections:
                self._conn_nursery = connections
                task_status.started(port)
                try:
                    with self._accepting:
                        await self._accept_forever(listener, connections)
                finally:
                    nonblocking.close(listener)
            services.cancel_scope.cancel()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle connections now and the rest after `grace` s."""
        self._closing = True
        self._accepting.cancel()
        for conn in list(self._connections):
            if conn.idle:
                conn.scope.cancel()
        if self._conn_nursery is not None:
            self._conn_nursery.cancel_scope.deadline = trio.current_time() + grace

    async def _reap_forever(self) -> None:
        while True:
            await trio.sleep(self.settings.reap_interval)
            self.store.reap()

    async def _accept_forever(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        counters = self.counters
        counters.total_connections = 1  # memcached counts its listening socket too
        while True:
            try:
                sock = await nonblocking.accept(listener)
            except OSError as exc:
                # Out of file descriptors and the like: log once, back off, go on.
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            counters.total_connections += 1
            if counters.curr_connections >= self.settings.max_connections:
                counters.rejected_connections += 1
                nursery.start_soon(self._reject, sock)
                continue
            counters.curr_connections += 1
            nursery.start_soon(self._serve_connection, sock)

    async def _reject(self, sock: socket.socket) -> None:
        try:
            with trio.move_on_after(1):
                await nonblocking.send_all(sock, TOO_MANY_CONNECTIONS)
        except OSError:
            pass
        finally:
            nonblocking.close(sock)

    async def _serve_connection(self, sock: socket.socket) -> None:
        conn = _Connection()
        self._connections.add(conn)
        try:
            with conn.scope:
                await self._converse(sock, conn)
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                log.info("connection error: %s", exc)
        finally:
            nonblocking.close(sock)
            self._connections.discard(conn)
            self.counters.curr_connections -= 1

    async def _converse(self, sock: socket.socket, conn: _Connection) -> None:
        parser = RequestParser(max_line=self.settings.max_line,
                               max_item_size=self.settings.max_item_size)
        handle = self.handler.handle
        counters = self.counters
        recv = nonblocking.recv
        next_event = parser.next_event
        while not self._closing:
            conn.idle = parser.buffered == 0
            data = await recv(sock, READ_SIZE)
            conn.idle = False
            if not data:
                return
            counters.bytes_read += len(data)
            parser.receive_data(data)
            out: list[bytes] = []
            closing = False
            try:
                while True:
                    event = next_event()
                    if event is NEED_DATA:
                        break
                    if type(event) is Get and len(event.keys) > GET_SLICE:
                        await self._multi_get(sock, event, out)
                        continue
                    handle(event, out)
                    if len(out) >= 32 and sum(map(len, out)) >= FLUSH_SIZE:
                        await self._flush(sock, out)
            except CloseConnection:
                closing = True
            if out:
                await self._flush(sock, out)
            if closing:
                return

    async def _flush(self, sock: socket.socket, out: list[bytes]) -> None:
        data = b"".join(out)
        out.clear()
        self.counters.bytes_written += len(data)
        await nonblocking.send_all(sock, data)

    async def _multi_get(self, sock: socket.socket, request: Get,
                         out: list[bytes]) -> None:
        """A get of many keys, answered a slice at a time so big replies stream."""
        keys = request.keys
        for start in range(0, len(keys), GET_SLICE):
            self.handler.values(request, keys[start: start + GET_SLICE], out)
            if sum(map(len, out)) >= FLUSH_SIZE:
                await self._flush(sock, out)
        out.append(b"END\r\n")
