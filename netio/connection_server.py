"""A TCP accept loop with a connection limit and graceful shutdown, for both servers.

Structured concurrency: `serve` owns the connection nursery (the accept loop runs in
`serve`'s own task; each accepted socket runs `handler(conn)` in a task of that nursery
and is closed when the handler returns). A handler may instead be a `ReadyHandler`
(netio.ready_loop): plain connections then wait in one `ReadyLoop`, a task of the same
nursery, and get a task of their own only while they await (a `Handoff`); TLS connections
keep a task each, which drives the same handler. Closing, kicking or shutting down a
connection in the loop's set closes it at once (no task to cancel).

Past `max_connections`, a new client gets memcached's `ERROR Too many open connections`
(or the server's own `rejection`) and is closed; a server with `evict_idle` instead makes room by ending its oldest idle connection.
A server with `max_pending` (the peer port) also caps the connections its handler has not
admitted yet, ending the oldest of them for each new arrival past the cap.
`shutdown(grace)` stops accepting (the listener closes at once), cancels connections that are
idle (waiting for a request: handlers say so through `conn.idle`, a ReadyHandler through
`holds_input`), lets busy ones finish their batch, and cancels the rest when the grace
period ends (a deadline on the scope around the nursery).

Idle timeout (memcached's `-o idle_timeout`): as memcached's conn_timeout_thread, one
sweeper task per server looks at every connection a few times per timeout and closes
(cancels) those that are `reading` (the handler waits for input) and completed no request
since `idle_timeout` s ago. `conn.active` is set at accept and by `rearm(conn)` when the
handler has completed a request, never by bytes arriving: whether it sent nothing, half a
line or half a data block, a connection is closed (a slowloris trickling bytes gains
nothing). A handler busy on a batch or sending replies is not `reading`, and a connection
whose `busy()` says replies are still on their way (the proxy) counts as active, so neither
is ever idle. The request path pays two flag stores per read and a clock read per batch:
a cancel scope around each read instead cost ~5 us, 40% of the backend's throughput.

TLS (`tls`, a netio.tls.ServerTls): the accept loop only accepts; each connection's own task
runs the handshake, bounded by netio.streams.HANDSHAKE_TIMEOUT, before its handler sees
it, so a slow or hostile handshake holds up no one else. A connection in its handshake is
idle for shutdown and eviction. A failed one is counted (`tls.handshake_errors`) and logged
at info with the peer's address and OpenSSL's reason; one closed before sending a byte is a
port probe (a follower checks every 0.1 s that its leader listens), logged at debug only.
Handlers read and write through
`conn.stream` (netio.streams: plain or TLS, one contract). Past `max_connections` a TLS
client is closed without the plain-text rejection, which it could not read.

accept(2) errors follow trio: the ones `trio.SocketListener.accept` skips (a connection
that died in the backlog, a firewall's EPERM) are skipped; the capacity errnos that
`trio.serve_listeners` retries (out of descriptors or memory) are logged once per episode
and retried after a short sleep; anything else is a bug or a broken listener and
propagates.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator

import trio

from memring.netio import heap, nonblocking
from memring.netio.connection import (
    Connection,
    Handoff,
    ReadyHandler,
    carried_out,
    log_failure,
)
from memring.netio.ready_loop import ReadyLoop
from memring.netio.streams import (
    HANDSHAKE_TIMEOUT,
    ClosedBeforeHello,
    TlsStream,
)
from memring.netio.tls import ServerTls, handshake_failure

log = logging.getLogger("memring.net")

TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"

# trio's _highlevel_serve_listeners.ACCEPT_CAPACITY_ERRNOS: the system is overloaded;
# sleep SLEEP_TIME and try again (the pending connection waits in the backlog).
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
ACCEPT_RETRY_SLEEP = 0.1
SWEEP_SHARE = 1 / 8  # the idle sweeper runs every idle_timeout * SWEEP_SHARE (at most 1 s)
# trio's _highlevel_socket._ignorable_accept_errno_names: that one connection failed
# (reset or aborted in the backlog, refused by a firewall, ...); accept the next.
ACCEPT_IGNORABLE_ERRNOS = frozenset(
    getattr(errno, name) for name in (
        "EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN", "ENONET",
        "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
        "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET")
    if hasattr(errno, name))


@contextlib.contextmanager
def _contained() -> Iterator[None]:
    """What ends a connection's task ends that connection only (connection.log_failure)."""
    try:
        yield
    except Exception as exc:
        log_failure(exc)


class ConnectionCounters:
    """Named as memcached's `stats` names them."""

    def __init__(self) -> None:
        self.curr_connections = 0
        self.total_connections = 0
        self.rejected_connections = 0
        self.idle_kicks = 0  # closed by the idle timeout (memcached's `idle_kicks`)
        self.pending_evictions = 0  # not yet admitted, closed for a newer one (max_pending)


# A task per connection (`handler(conn)`), or a ReadyHandler: plain connections served by
# one ReadyLoop task, TLS ones each by a task that drives the same handler.
Handler = Callable[[Connection], Awaitable[None]] | ReadyHandler


class ConnectionServer:
    """Serves one listener once: `serve()` until `shutdown()`."""

    def __init__(self, handler: Handler, max_connections: int,
                 counters: ConnectionCounters, *, idle_timeout: float = 0.0,
                 rejection: bytes = TOO_MANY_CONNECTIONS, evict_idle: bool = False,
                 kick_reply: bytes = b"", max_pending: int = 0,
                 tls: ServerTls | None = None) -> None:
        """`idle_timeout` seconds (0: none) bound each connection's wait for a request;
        past `max_connections` a client gets `rejection`, or with `evict_idle` the oldest
        idle connection is closed at once to make room (when none is idle: `rejection`).
        A connection closed for idling (or evicted) is sent `kick_reply` first.
        `max_pending` (0: off) caps the connections whose handler has not admitted them yet
        (`conn.pending = False`): a new one past the cap evicts the oldest pending one, so
        clients that never identify themselves cannot crowd out one that does. With `tls`
        every connection is TLS (its handshake first, in its own task)."""
        self.handler = handler
        self.ready: ReadyHandler | None = None
        self._loop: ReadyLoop | None = None
        if not callable(handler):
            self.ready = handler
            if tls is None:
                self._loop = ReadyLoop(handler, self._hand_off, self._release)
        self.max_connections = max_connections
        self.counters = counters
        self.idle_timeout = idle_timeout
        self.rejection = rejection
        self.evict_idle = evict_idle
        self.kick_reply = kick_reply
        self.max_pending = max_pending
        self.tls = tls
        self.closing = False
        self.listener: socket.socket | None = None  # while serving
        self._connections: dict[Connection, None] = {}  # in accept order (oldest first)
        self._accepting = trio.CancelScope()  # cancelled by shutdown()
        self._housekeeping = trio.CancelScope()  # sweeper, heap trims; cancelled by shutdown()
        self._services: trio.Nursery | None = None
        self._connection_tasks: trio.Nursery | None = None  # while serving
        self._grace = trio.CancelScope()  # around the connections; shutdown() sets its deadline

    async def serve(self, listener: socket.socket,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on `listener` (closed when accepting stops) until `shutdown()`; return
        when the last connection is done."""
        self.listener = listener
        try:
            with self._grace:
                async with trio.open_nursery() as connections:
                    connections.start_soon(self._housekeep)
                    self._connection_tasks = connections
                    if self._loop is not None:
                        connections.start_soon(self._loop.run)
                    task_status.started()
                    with self._accepting:
                        await self._accept_forever(listener, connections)
                    nonblocking.close(listener)  # refuse new clients during the grace period
        finally:
            if listener.fileno() != -1:
                nonblocking.close(listener)

    def connections(self) -> list[Connection]:
        """The open connections, oldest first (a copy: the caller may await)."""
        return list(self._connections)

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle connections now and the rest after `grace` s."""
        self.closing = True
        self._accepting.cancel()
        self._housekeeping.cancel()
        self._grace.deadline = min(self._grace.deadline, trio.current_time() + grace)
        for conn in list(self._connections):
            if self._idle(conn):
                self._cancel(conn)
        if self._loop is not None:
            self._loop.stop()

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
            if self.max_pending:
                self._evict_pending()
            if counters.curr_connections >= self.max_connections and not self._evict():
                counters.rejected_connections += 1
                if self.tls is None:  # a TLS client could not read it
                    nonblocking.send_last(sock, self.rejection)
                nonblocking.close(sock)
                continue
            counters.curr_connections += 1
            conn = Connection(sock, active=trio.current_time(), pending=bool(self.max_pending))
            self._connections[conn] = None
            if self._loop is not None:
                conn.receiver = self._loop.handler.opened(conn)
                self._loop.add(conn)
            else:
                connections.start_soon(self._run, conn)

    def _evict(self) -> bool:
        """With `evict_idle`: close the oldest idle connection; False if there is none."""
        if not self.evict_idle:
            return False
        for conn in self._connections:
            if self._idle(conn) and not conn.kicked:
                self._kick(conn)
                return True
        return False

    def _evict_pending(self) -> None:
        """Make room for one more pending connection: close the oldest when at the cap
        (the ones already closing do not count)."""
        pending = [conn for conn in self._connections if conn.pending and not conn.kicked]
        if len(pending) >= self.max_pending:
            self.counters.pending_evictions += 1
            self._kick(pending[0], idle=False)

    @property
    def ready_loop(self) -> ReadyLoop | None:
        """The loop that serves the plain connections of a ReadyHandler (None: tasks)."""
        return self._loop

    @staticmethod
    def rearm(conn: Connection) -> None:
        """`conn` completed a request: it may now wait `idle_timeout` s for the next."""
        conn.active = trio.current_time()

    def _kick(self, conn: Connection, idle: bool = True) -> None:
        conn.kicked = True
        if idle:
            self.counters.idle_kicks += 1
        self._cancel(conn)

    def _idle(self, conn: Connection) -> bool:
        """Waiting for a request: its handler says so in `conn.idle`, or, in the ReadyLoop's
        set, when it holds no part of one (asked here, not kept per read)."""
        if conn.looped:
            assert self.ready is not None
            return not self.ready.holds_input(conn)
        return conn.idle

    def end(self, conn: Connection) -> None:
        """Close `conn` on its handler's behalf (a client that is gone or does not read),
        wherever it is: in the ReadyLoop's set now, else by cancelling its task."""
        self._cancel(conn)

    def _cancel(self, conn: Connection) -> None:
        """End `conn`: its task is cancelled, or, in the ReadyLoop's set or parked by it, it
        closes now."""
        if conn.looped or conn.parked:
            assert self._loop is not None
            self._loop.close(conn)
        else:
            conn.scope.cancel()

    async def _housekeep(self) -> None:
        with self._housekeeping:
            async with trio.open_nursery() as services:
                self._services = services
                if self.idle_timeout:
                    services.start_soon(self._sweep_forever)
                await trio.sleep_forever()

    async def _sweep_forever(self) -> None:
        """Close connections idle past the timeout, a few times per timeout (late by at
        most SWEEP_SHARE of it, and by at most 1 s)."""
        timeout = self.idle_timeout
        interval = min(max(timeout * SWEEP_SHARE, 0.01), 1.0)
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            cutoff = now - timeout
            for conn in list(self._connections):  # a kick may close it now (ReadyLoop)
                if conn.active < cutoff and conn.reading and not conn.kicked:
                    if conn.busy is not None and conn.busy():
                        conn.active = now  # waiting for its replies is not idle
                        continue
                    log.debug("closing a connection idle for more than %g s", timeout)
                    self._kick(conn)

    async def _run(self, conn: Connection) -> None:
        try:
            with _contained(), conn.scope:
                if self.tls is not None and not await self._handshake(conn, self.tls):
                    return
                if self.ready is not None:
                    await self._serve_in_task(conn, self.ready)
                else:
                    assert callable(self.handler)
                    await self.handler(conn)
        finally:
            self._release(conn)

    def _release(self, conn: Connection) -> None:
        """Close `conn` (its task ended, or it left the ReadyLoop's set) and forget it."""
        if self.ready is not None:
            self.ready.closed(conn)
        if conn.kicked and self.kick_reply:
            conn.stream.send_last(self.kick_reply)
        nonblocking.close(conn.sock)
        del self._connections[conn]
        self.counters.curr_connections -= 1
        if (self._services is not None and not self.closing
                and heap.heap_trim.connection_closed(conn.held)):
            self._services.start_soon(heap.heap_trim.trim_soon)

    async def _serve_in_task(self, conn: Connection, ready: ReadyHandler) -> None:
        """A ReadyHandler's connection in a task of its own (TLS): read, serve, await what
        it hands off, until it hangs up or the server closes."""
        receiver = conn.receiver = ready.opened(conn)
        recv = conn.stream.recv
        while not self.closing:
            conn.idle = not ready.holds_input(conn)
            conn.reading = True
            data = await recv(nonblocking.READ_SIZE)
            conn.reading = conn.idle = False
            if not data:
                if conn.at_end_of_input is not None:
                    await carried_out(conn.at_end_of_input())  # the replies owed, then close
                return
            if not await carried_out(receiver(data)):
                return

    def _hand_off(self, conn: Connection, handoff: Handoff) -> None:
        """`conn` left the ReadyLoop's set to await `handoff` in a task of its own."""
        conn.scope = trio.CancelScope()  # a scope is entered once: a new one per handoff
        assert self._connection_tasks is not None
        self._connection_tasks.start_soon(self._run_handoff, conn, handoff)

    async def _run_handoff(self, conn: Connection, handoff: Handoff) -> None:
        back = False
        try:
            with _contained(), conn.scope:
                back = await handoff
        finally:
            if back and not self.closing and not conn.scope.cancel_called:
                assert self._loop is not None
                conn.reading = True
                self._loop.add(conn)
            else:
                self._release(conn)

    @staticmethod
    async def _handshake(conn: Connection, tls: ServerTls) -> bool:
        """Make `conn` a TLS connection; False (counted and logged) if the handshake fails
        or takes longer than HANDSHAKE_TIMEOUT."""
        stream = TlsStream(conn.sock, tls.context, server_side=True)  # the newest context
        conn.stream = stream
        try:  # now: a client that gave up is gone from the socket by the time we log
            host, port = conn.sock.getpeername()[:2]
            peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        except OSError:
            peer = "a client already gone"
        reason = ""
        with trio.move_on_after(HANDSHAKE_TIMEOUT) as deadline:
            try:
                await stream.handshake()
            except ClosedBeforeHello:  # a port probe: neither counted nor logged as a failure
                log.debug("%s closed the connection before its TLS handshake began", peer)
                return False
            except (ssl.SSLError, EOFError, OSError) as exc:
                reason = handshake_failure(exc)
        if deadline.cancelled_caught:
            reason = f"no handshake within {HANDSHAKE_TIMEOUT:g} s"
        if not reason:
            return True
        tls.handshake_errors += 1
        log.info("TLS handshake with %s failed: %s", peer, reason)
        return False
