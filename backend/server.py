"""The backend's TCP server: one trio task per connection over raw trio sockets.

Theory of operation: a connection reads what the socket has, feeds the parser, runs
every complete request against the store in order, and writes all their replies in
one send, so a pipelined burst costs one recv and one send. Raw `trio.socket` sockets
are used instead of trio streams because the stream layer alone costs more than the
codec and the store together (measured: see docs/benchmarks.md).

Memory stays bounded: one read is at most READ_SIZE bytes, the parser bounds lines and
values, and replies are flushed whenever FLUSH_SIZE bytes are waiting, so a get of many
large values streams instead of piling up.

Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections at once, let busy
ones finish the batch in hand, and cancel whatever is left after the grace period.
"""

from __future__ import annotations

import errno
import logging
import socket as stdlib_socket
from dataclasses import dataclass, field

import trio

from backend.commands import CloseConnection, CommandHandler
from backend.settings import BackendSettings
from backend.stats import ServerCounters, StatsReport
from backend.store import Store
from protocol.request_parser import NEED_DATA, RequestParser
from protocol.requests import Get

log = logging.getLogger("memring.backend")

READ_SIZE = 65536
FLUSH_SIZE = 1 << 20
GET_SLICE = 64  # keys of one multi-get handled between flushes
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"


class PortInUse(Exception):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is already in use")


@dataclass(eq=False)
class _Connection:
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: bool = True


async def send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = await sock.send(view)
        view = view[sent:]


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
        listener = await self._listen()
        port = listener.getsockname()[1]
        self.stats.port = port
        async with trio.open_nursery() as services:
            services.start_soon(self._reap_forever)
            async with trio.open_nursery() as connections:
                self._conn_nursery = connections
                task_status.started(port)
                with listener, self._accepting:
                    await self._accept_forever(listener, connections)
            services.cancel_scope.cancel()

    async def _listen(self) -> trio.socket.SocketType:
        host, port = self.settings.host, self.settings.port
        listener = trio.socket.socket(stdlib_socket.AF_INET6 if ":" in host
                                      else stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
        listener.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
        try:
            await listener.bind((host, port))
        except OSError as exc:
            listener.close()
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from None
            raise
        listener.listen(1024)
        return listener

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

    async def _accept_forever(self, listener: trio.socket.SocketType,
                              nursery: trio.Nursery) -> None:
        counters = self.counters
        counters.total_connections = 1  # memcached counts its listening socket too
        while True:
            try:
                sock, _address = await listener.accept()
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

    async def _reject(self, sock: trio.socket.SocketType) -> None:
        with sock, trio.move_on_after(1):
            try:
                await send_all(sock, TOO_MANY_CONNECTIONS)
            except OSError:
                pass

    async def _serve_connection(self, sock: trio.socket.SocketType) -> None:
        conn = _Connection()
        self._connections.add(conn)
        try:
            with sock, conn.scope:
                sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
                await self._converse(sock, conn)
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
                log.info("connection error: %s", exc)
        finally:
            self._connections.discard(conn)
            self.counters.curr_connections -= 1

    async def _converse(self, sock: trio.socket.SocketType, conn: _Connection) -> None:
        parser = RequestParser(max_line=self.settings.max_line,
                               max_item_size=self.settings.max_item_size)
        handle = self.handler.handle
        counters = self.counters
        recv = sock.recv
        next_event = parser.next_event
        while not self._closing:
            conn.idle = parser.buffered == 0
            data = await recv(READ_SIZE)
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

    async def _flush(self, sock: trio.socket.SocketType, out: list[bytes]) -> None:
        data = b"".join(out)
        out.clear()
        self.counters.bytes_written += len(data)
        await send_all(sock, data)

    async def _multi_get(self, sock: trio.socket.SocketType, request: Get,
                         out: list[bytes]) -> None:
        """A get of many keys, answered a slice at a time so big replies stream."""
        keys = request.keys
        for start in range(0, len(keys), GET_SLICE):
            self.handler.values(request, keys[start: start + GET_SLICE], out)
            if sum(map(len, out)) >= FLUSH_SIZE:
                await self._flush(sock, out)
        out.append(b"END\r\n")
