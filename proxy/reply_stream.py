"""The replies to one client, in request order, sent as soon as they can be.

Theory of operation: the session appends each issued request's `Slot` to `queue`; replies
leave from its head, in order. Most are sent by `reply_arrived`, which a backend
connection's reader calls once it has parsed a read that completed one of this client's
replies: the reply goes out from the reader's turn, so the session task is woken only by
its client's next request, never once per reply (that wake-up, with its `trio.Event`, cost
more than the rest of a forwarded get).

Two cases leave that fast path for a drainer task, which awaits the slots in order and
sends with a write timeout, as the session did before: a head slot that needs more than
its first answer (a read failing over, a write waiting for a leader or retried after a
refusal: `Slot.poll()` says NEEDS_TASK), and a client that does not take its replies as
fast as they come (a partial send). The fast path resumes once the drainer has emptied
the queue.

The session issues its next batch only once the previous one is answered (`answered`),
so requests reach the backends in the same order, and with the same bound on what one
client has in flight and buffered (MAX_OUTSTANDING requests, FLUSH_SIZE bytes of replies
rendered and unsent), as when it awaited every batch's replies itself.
"""

from __future__ import annotations

import itertools
import logging

import trio

from memring.netio import nonblocking
from memring.netio.connection_server import Connection, ConnectionServer
from memring.proxy.slots import NEEDS_TASK, WAITING, Ready, Slot
from memring.proxy.stats import ProxyStats

log = logging.getLogger("memring.proxy")

CLIENT_WRITE_TIMEOUT = 30.0  # a client that stops reading its replies is dropped after this
FLUSH_SIZE = 1 << 20        # replies waiting past this are sent before resolving more


class ReplyStream:
    __slots__ = ("_answered", "_closed", "_conn", "_drainer", "_nursery", "_observe",
                 "_server", "_sock", "_unsent", "affinity", "idle_when_answered", "queue",
                 "started", "waiting_for_client")

    _clients = itertools.count()

    def __init__(self, conn: Connection, server: ConnectionServer, stats: ProxyStats,
                 nursery: trio.Nursery) -> None:
        """`nursery` runs the drainer (shared by all clients: a nursery per client cost
        memory; the drainer has its own cancel scope, cancelled with the client)."""
        self.affinity = next(self._clients)  # which connection of each node this client uses
        # slots issued, in request order (at most MAX_OUTSTANDING: a list is smaller)
        self.queue: list[Slot] = []
        self.started = 0.0  # when the batch in the queue was read (perf_counter)
        self.waiting_for_client = False  # the session waits for a request (in recv)
        self.idle_when_answered = False  # ... with no partial request buffered
        self._conn = conn
        self._sock = conn.sock
        self._server = server
        self._observe = stats.observe_reply
        self._nursery = nursery
        self._drainer: trio.CancelScope | None = None  # while a drainer owns the queue
        self._unsent = b""  # the tail of a partial send, for the drainer
        self._answered: trio.Event | None = None
        self._closed = False

    @property
    def answered(self) -> bool:
        """Every issued request's reply has been sent."""
        return not self.queue and self._drainer is None

    async def wait_answered(self) -> None:
        while not self.answered:
            if self._answered is None:
                self._answered = trio.Event()
            await self._answered.wait()

    def close(self) -> None:
        """The session is over: never write to its socket again (its fd may be reused)."""
        self._closed = True
        if self._drainer is not None:
            self._drainer.cancel()

    def reply_arrived(self) -> None:
        """Send the replies that are ready at the head of the queue, without waiting."""
        if self._drainer is not None or self._closed or not self.queue:
            return
        try:
            self._send_ready()
        except OSError as exc:
            self.drop(exc)

    send_ready = reply_arrived  # the session, after issuing a batch

    def _send_ready(self) -> None:
        queue = self.queue
        sock = self._sock
        while queue:
            out: list[bytes] = []
            size = 0
            needs_task = False
            while queue:
                reply = queue[0].poll()
                if reply is WAITING:
                    break
                if reply is NEEDS_TASK:
                    needs_task = True
                    break
                del queue[0]
                self._observe(self.started)
                out.append(reply)
                size += len(reply)
                if size >= FLUSH_SIZE:
                    break  # send these before rendering more
            data = b"".join(out)
            sent = nonblocking.send_now(sock, data) if data else 0
            if sent < len(data) or needs_task:
                self._start_drainer(data[sent:])
                return
            if size < FLUSH_SIZE:
                break  # waiting for a backend, or all sent
        if not queue:
            self._done()

    def _start_drainer(self, unsent: bytes) -> None:
        self._drainer = trio.CancelScope()
        self._unsent = unsent
        self._nursery.start_soon(self._drain, self._drainer)

    async def _drain(self, scope: trio.CancelScope) -> None:
        """Await the queue's slots in order and send their replies, like the session did
        before the fast path; drop the client if it does not read for CLIENT_WRITE_TIMEOUT."""
        with scope:
            if await self._drain_queue():
                self._drainer = None
                self._done()

    async def _drain_queue(self) -> bool:
        """False if the client was dropped."""
        queue = self.queue
        observe = self._observe
        try:
            out = [self._unsent]
            size = len(self._unsent)
            self._unsent = b""
            while queue:
                slot = queue[0]
                reply = slot.data if type(slot) is Ready else await slot.reply()
                del queue[0]
                observe(self.started)
                out.append(reply)
                size += len(reply)
                if size >= FLUSH_SIZE:
                    if not await self._send(b"".join(out)):
                        return False
                    out.clear()
                    size = 0
            if not await self._send(b"".join(out)):
                return False
        except OSError as exc:
            self.drop(exc)
            return False
        return True

    async def _send(self, data: bytes) -> bool:
        if not data or self._closed:
            return not self._closed
        sent = nonblocking.send_now(self._sock, data)
        if sent < len(data):
            with trio.move_on_after(CLIENT_WRITE_TIMEOUT) as scope:
                await nonblocking.send_all(self._sock, data[sent:])
            if scope.cancelled_caught:
                log.info("dropping a client that did not read its replies for %.0f s",
                         CLIENT_WRITE_TIMEOUT)
                self.drop(None)
                return False
        return True

    def _done(self) -> None:
        """Everything issued is answered: let the session issue more, or stop it when the
        server is shutting down and it only waits for its client."""
        if self._answered is not None:
            self._answered.set()
            self._answered = None
        if self.waiting_for_client:
            if self._server.closing:
                self._conn.scope.cancel()
            else:
                self._conn.idle = self.idle_when_answered

    def drop(self, error: OSError | None) -> None:
        """The client is gone or does not read: end its connection (its handler closes the
        socket)."""
        if error is not None and error.errno not in nonblocking.PEER_GONE:
            log.info("connection error: %s", error)
        self._closed = True
        self._conn.scope.cancel()

