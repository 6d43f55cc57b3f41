"""A TCP accept loop with a connection limit and graceful shutdown, for both servers.

Structured concurrency: `serve` owns the connection nursery; each accepted socket runs
`handler(conn)` in its own task and is closed when the handler returns. Past
`max_connections`, a new client gets memcached's `ERROR Too many open connections` and
is closed. `shutdown(grace)` stops accepting, cancels connections that are idle (waiting
for a request: handlers say so through `conn.idle`), lets busy ones finish their batch,
and cancels the rest when the grace period ends.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from memring.netio import nonblocking

log = logging.getLogger("memring.net")

TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"


class ConnectionCounters:
    """Named as memcached's `stats` names them."""

    def __init__(self) -> None:
        self.curr_connections = 0
        self.total_connections = 0
        self.rejected_connections = 0


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: bool = True  # the handler is waiting for a request: safe to close at shutdown
    mark: int = 0  # the handler's bookkeeping (backend: replicated writes already waited for)


class ConnectionServer:
    def __init__(self, handler: Callable[[Connection], Awaitable[None]], max_connections: int,
                 counters: ConnectionCounters) -> None:
        self.handler = handler
        self.max_connections = max_connections
        self.counters = counters
        self.closing = False
        self._connections: set[Connection] = set()
        self._accepting = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    async def serve(self, listener: socket.socket,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on `listener` (closed on return) until `shutdown()`."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                with self._accepting:
                    await self._accept_forever(listener, nursery)
        finally:
            nonblocking.close(listener)

    def shutdown(self, grace: float = 5.0) -> None:
        self.closing = True
        self._accepting.cancel()
        for conn in list(self._connections):
            if conn.idle:
                conn.scope.cancel()
        if self._nursery is not None:
            self._nursery.cancel_scope.deadline = trio.current_time() + grace

    async def _accept_forever(self, listener: socket.socket, nursery: trio.Nursery) -> None:
        counters = self.counters
        while True:
            try:
                sock = await nonblocking.accept(listener)
            except OSError as exc:
                # Out of file descriptors and the like: log it, back off, go on.
                log.warning("accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            counters.total_connections += 1
            if counters.curr_connections >= self.max_connections:
                counters.rejected_connections += 1
                try:
                    nonblocking.send_now(sock, TOO_MANY_CONNECTIONS)
                except OSError:
                    pass
                nonblocking.close(sock)
                continue
            counters.curr_connections += 1
            nursery.start_soon(self._run, Connection(sock))

    async def _run(self, conn: Connection) -> None:
        self._connections.add(conn)
        try:
            with conn.scope:
                await self.handler(conn)
        except OSError as exc:
            if exc.errno not in nonblocking.PEER_GONE:
                log.info("connection error: %s", exc)
        finally:
            nonblocking.close(conn.sock)
            self._connections.discard(conn)
            self.counters.curr_connections -= 1
