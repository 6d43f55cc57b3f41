"""A TCP accept loop with a connection limit and graceful shutdown, for both servers.

Structured concurrency: `serve` owns the connection nursery (the accept loop runs in
`serve`'s own task; each accepted socket runs `handler(conn)` in a task of that nursery
and is closed when the handler returns). Past `max_connections`, a new client gets
memcached's `ERROR Too many open connections` and is closed. `shutdown(grace)` stops
accepting (the listener closes at once), cancels connections that are idle (waiting for a
request: handlers say so through `conn.idle`), lets busy ones finish their batch, and
cancels the rest when the grace period ends (a deadline on the scope around the nursery).

accept(2) errors follow trio: the ones `trio.SocketListener.accept` skips (a connection
that died in the backlog, a firewall's EPERM) are skipped; the capacity errnos that
`trio.serve_listeners` retries (out of descriptors or memory) are logged once per episode
and retried after a short sleep; anything else is a bug or a broken listener and
propagates.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from memring.netio import nonblocking

log = logging.getLogger("memring.net")

TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"

# trio's _highlevel_serve_listeners.ACCEPT_CAPACITY_ERRNOS: the system is overloaded;
# sleep SLEEP_TIME and try again (the pending connection waits in the backlog).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SLEEP = 0.1
# trio's _highlevel_socket._ignorable_accept_errno_names: that one connection failed
# (reset or aborted in the backlog, refused by a firewall, ...); accept the next.
ACCEPT_IGNORABLE_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET")
    if hasattr(errno, name))


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
    """Serves one listener once: `serve()` until `shutdown()`."""

    def __init__(self, handler: Callable[[Connection], Awaitable[None]], max_connections: int,
                 counters: ConnectionCounters) -> None:
        self.handler = handler
        self.max_connections = max_connections
        self.counters = counters
        self.closing = False
        self._connections: set[Connection] = set()
        self._accepting = trio.CancelScope()  # cancelled by shutdown()
        self._grace = trio.CancelScope()  # around the connections; shutdown() sets its deadline

    async def serve(self, listener: socket.socket,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on `listener` (closed when accepting stops) until `shutdown()`; return
        when the last connection is done."""
        try:
            with self._grace:
                async with trio.open_nursery() as connections:
                    task_status.started()
                    with self._accepting:
                        await self._accept_forever(listener, connections)
                    nonblocking.close(listener)  # refuse new clients during the grace period
        finally:
            if listener.fileno() != -1:
                nonblocking.close(listener)

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle connections now and the rest after `grace` s."""
        self.closing = True
        self._accepting.cancel()
        self._grace.deadline = min(self._grace.deadline, trio.current_time() + grace)
        for conn in list(self._connections):
            if conn.idle:
                conn.scope.cancel()

    async def _accept_forever(self, listener: socket.socket, connections: trio.Nursery) -> None:
        counters = self.counters
        overloaded = False
        while True:
            try:
                sock = await nonblocking.accept(listener)
            except OSError as exc:
                if exc.errno in ACCEPT_IGNORABLE_ERRNOS:
                    continue
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                if not overloaded:  # once per episode, not ten lines a second
                    log.error("accept returned %s (%s); retrying every %gs until it works",
                              errno.errorcode[exc.errno], os.strerror(exc.errno),
                              ACCEPT_RETRY_SLEEP)
                    overloaded = True
                await trio.sleep(ACCEPT_RETRY_SLEEP)
                continue
            if overloaded:
                log.warning("accepting connections again")
                overloaded = False
            counters.total_connections += 1
            if counters.curr_connections >= self.max_connections:
                counters.rejected_connections += 1
                try:
                    nonblocking.send_now(sock, TOO_MANY_CONNECTIONS)
                except OSError:
                    pass  # the client is gone already; it is closed below either way
                nonblocking.close(sock)
                continue
            counters.curr_connections += 1
            connections.start_soon(self._run, Connection(sock))

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
