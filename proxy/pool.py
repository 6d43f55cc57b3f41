"""A backend node as the proxy sees it: a few pipelined connections and a health record.

Connections open on demand: a pool starts with none, and the first request to the node opens
its `pool_size` slots (the request waits in the slot's queue while it connects, at most the
request timeout); after `backend_idle_ms` without a request they close again and the pool is
dormant until the next one. A topology of hundreds of shards thus costs sockets only for the
nodes a proxy's clients use, and a proxy over 256 shards x 3 replicas opens nothing at start
(tests/integration/test_proxy_lazy_pools.py). While in use each slot keeps its connection
open, reconnecting after a failure, or at once after a cut (proxy/cut_connection.py) while
the cut connection drains for its live writes beside the fresh one (at most one a slot). A
failure (connect error, timeout, reset, bad reply) counts against the node; after
`failure_limit` in a row the node is ejected (TKO): requests to it fail at once with
SERVER_ERROR instead of waiting on timeouts, its connections are closed, and one probe
every `retry_ms` tries a `version` round trip until the node answers again (while the node
is asked for: an ejected pool that goes idle stops probing until its next request). Any good
reply resets the count.

With backend TLS every connection and probe shakes hands with the pool's context. A failed
handshake is a failure like any other, and its reason is logged once per episode (again only
when the reason changes, reset by the next good handshake), so an operator sees "certificate
has expired" once, not every `retry_ms` from every slot.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import trio

from memring.protocol.ascii_auth import Login
from memring.protocol.reply_shapes import ReplyShape
from memring.proxy.backend_connection import BackendConnection, ConnectionFailed, HandshakeFailed
from memring.proxy.cut_connection import behind, owner
from memring.proxy.pending_reply import PendingReply, ReplyListener
from memring.proxy.settings import NodeSpec, ProxySettings

log = logging.getLogger("memring.proxy")


class NodeCounters:
    __slots__ = ("cuts", "ejections", "errors", "requests", "resent", "timeouts")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self.ejections = 0
        self.cuts = 0  # connections cut for replies owed to closed clients
        self.resent = 0  # ... and the live reads sent again after them


def _no_login() -> Login | None:
    return None


class QueuedRequest:
    """A request that came while its slot was opening, or a read sent again after its
    connection was cut (`resent`: never a third time): sent once the slot connects (its
    reply then relayed to `reply`, which the caller already holds), failed if it cannot."""

    __slots__ = ("affinity", "multi", "reply", "request", "resent", "sent")

    def __init__(self, request: bytes, multi: bool, reply: PendingReply,
                 affinity: int, resent: bool = False) -> None:
        self.request = request
        self.multi = multi
        self.reply = reply
        self.affinity = affinity  # the client's, so the connection's listener role fits
        self.resent = resent
        self.sent: PendingReply | None = None

    def hold_arriving(self, size: int) -> None:
        """A big reply's bytes as they come are charged to its client's budget (as
        `BackendConnection._received` does for a reply not relayed)."""
        hold = getattr(self.reply.listener, "hold_arriving", None)
        if hold is not None:
            hold(size)

    def send_on(self, conn: BackendConnection) -> None:
        self.sent = conn.submit(self.request, self.multi, self)
        if self.sent.done:  # failed at once: the connection tells no listener then
            self.reply_arrived()

    def reply_arrived(self) -> None:
        """The connection's reply is complete: it becomes the caller's."""
        sent, reply = self.sent, self.reply
        if sent is None:
            return
        # Let go of it: its listener is this, a cycle that held a big reply's values until
        # the cyclic collector ran (seen as hundreds of MB in hostile e-manykeys once cut
        # connections' reads were relayed).
        self.sent = None
        if reply.done:
            return
        if sent.error is not None:
            reply.fail(sent.error)
            return
        reply.events = sent.events
        reply._finish()  # one reply handed over whole: done, then the client is told
        if reply.listener is not None:
            reply.listener.reply_arrived()


def resend_order(queued: list[QueuedRequest]) -> list[QueuedRequest]:
    """A cut connection's reads sent again, and the requests queued behind them while the
    slot reconnected: the clients that take their replies first, then those with fewer
    requests, each client's own order kept
    (the sort is stable and its requests share a key). Clients are independent (memcached
    orders nothing across connections), so a well-behaved client's one get is not queued
    again behind another's big multi-gets."""
    counts: dict[int, int] = {}
    for waiting in queued:
        key = id(owner(waiting.reply))
        counts[key] = counts.get(key, 0) + 1
    return sorted(queued, key=lambda waiting: (
        behind(waiting.reply), counts[id(owner(waiting.reply))]))


class NodePool:
    def __init__(self, spec: NodeSpec, settings: ProxySettings,
                 login: Callable[[], Login | None] = _no_login,
                 tls: ssl.SSLContext | None = None) -> None:
        self.spec = spec
        self.login = login  # the credentials each new connection authenticates with
        self.tls = tls  # backend TLS (proxy.server builds it once from the settings)
        self._tls_problem: str | None = None  # the handshake failure logged last
        self.address = spec.address
        self.weight = spec.weight
        self.size = settings.pool_size
        self.timeout = settings.timeout_ms / 1000
        self.retry = settings.retry_ms / 1000
        self.idle = settings.backend_idle_ms / 1000
        self.failure_limit = settings.failure_limit
        self.counters = NodeCounters()
        self.failures = 0
        self.ejected = False
        self._slots: list[BackendConnection | None] = [None] * self.size
        # set by the first request of a dormant pool; a new, unset one when it goes idle
        self._demand = trio.Event()
        self._opening = [False] * self.size  # slots woken by a request, not yet connected
        self._queued: list[list[QueuedRequest]] = [[] for _ in range(self.size)]
        # a slot's cut connection that still drains for live writes (at most one a slot),
        # and the reads sent again for the clients whose writes it owes: held until then
        self._draining: list[BackendConnection | None] = [None] * self.size
        self._held: list[list[QueuedRequest]] = [[] for _ in range(self.size)]
        self._cancel = trio.CancelScope()
        self._nursery: trio.Nursery | None = None

    @property
    def connections(self) -> list[BackendConnection]:
        return [c for c in self._slots if c is not None and c.alive]

    @property
    def dormant(self) -> bool:
        """No request since the pool started or went idle: no connection is open."""
        return not self._demand.is_set()

    @property
    def available(self) -> bool:
        """Worth sending to: not ejected, and connected or about to connect on demand."""
        return not self.ejected and (
            not self._demand.is_set() or any(self._opening)
            or any(c is not None and c.alive for c in self._slots))

    async def run(self) -> None:
        """Keep the slots connected while in use, until `close()`; owned by the proxy's
        nursery."""
        with self._cancel:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._demand.wait()  # a pool never asked for costs one sleeping task
                for index in range(self.size):
                    nursery.start_soon(self._keep_slot, index)
                nursery.start_soon(self._close_when_idle)

    def close(self) -> None:
        """Out of the topology: the router sends it nothing new, but the replies already on
        their way are read before the connections close (up to the request timeout). A
        leader that resigns (`memring node drain`, `leader transfer`) answers its last writes
        just as it leaves the topology: STORED once they are replicated, or `not the leader`,
        which the session retries on the next leader. Failing them at once made client
        errors of both (seen in 1 of 3 drains of a leader under load)."""
        if self._nursery is not None and not self._cancel.cancel_called and (
                any(conn.in_flight for conn in self.connections) or any(self._queued)):
            self._nursery.start_soon(self._close_when_answered)
        else:
            self._close_now()

    async def _close_when_answered(self) -> None:
        with trio.move_on_after(self.timeout):
            while any(conn.in_flight for conn in self.connections) or any(self._queued):
                await trio.sleep(0.005)
        self._close_now()

    def _close_now(self) -> None:
        self._cancel.cancel()
        reason = f"{self.address} removed from the topology"
        for index in range(self.size):
            self._fail_queued(index, reason)
            held, self._held[index] = self._held[index], []
            for waiting in held:
                waiting.reply.fail(reason)
        for conn in self._slots + self._draining:
            if conn is not None:
                conn.close(reason)

    def submit(self, request: bytes, multi: bool, client: ReplyListener | None = None,
               kind: type[PendingReply] = PendingReply, shape: ReplyShape | None = None
               ) -> PendingReply:
        """Queue `request` on the connection the client's `affinity` picks, so that the
        requests of one client session stay in order on one connection (memcached runs a
        connection's commands in order; a set then a get must not race on two
        connections). The client hears when the reply is complete. A dormant pool opens
        its slots; the request waits for its own slot (never another: that would race its
        client's next request on the slot it then gets)."""
        self.counters.requests += 1
        if not self.ejected:
            size = self.size
            affinity = client.affinity if client is not None else 0
            first = affinity % size
            conn = self._slots[first]
            if conn is not None and conn.alive:
                return conn.submit(request, multi, client, kind, shape)
            if not self._demand.is_set():
                self._demand.set()
                self._opening = [True] * size
            if self._opening[first]:
                reply = kind(multi, trio.current_time() + self.timeout, client)
                self._queued[first].append(QueuedRequest(request, multi, reply, affinity))
                return reply
            for step in range(1, size):
                conn = self._slots[(first + step) % size]
                if conn is not None and conn.alive:
                    return conn.submit(request, multi, client, kind)
        elif not self._demand.is_set():
            self._demand.set()  # ejected and gone idle: asked for again, so probe again
        reply = kind(multi, 0.0)
        reply.fail(f"{self.address} is {'ejected' if self.ejected else 'not connected'}")
        self.counters.errors += 1
        return reply

    def submit_connected(self, request: bytes, multi: bool, client: ReplyListener,
                         kind: type[PendingReply]) -> PendingReply | None:
        """`submit` when the client's own connection is up (the common case, and the only
        one a cluster leader's fast path takes); None when it is not (ejected, dormant,
        connecting, lost): the caller takes the path that can wait."""
        if self.ejected:
            return None
        conn = self._slots[client.affinity % self.size]
        if conn is None or not conn.alive:
            return None
        self.counters.requests += 1
        return conn.submit(request, multi, client, kind)

    def _opened(self, index: int, conn: BackendConnection) -> None:
        self._opening[index] = False
        queued, self._queued[index] = self._queued[index], []
        if any([waiting.resent for waiting in queued]):
            queued = resend_order(queued)
        for waiting in queued:
            waiting.send_on(conn)

    def _send_again(self, index: int, replies: list[PendingReply], conn: BackendConnection,
                    released: trio.Event) -> None:
        """`conn`, slot `index`'s connection, was cut (BackendConnection._cut): `replies`,
        reads its live clients still wait for, go first on the slot's next connection, once,
        opened now (`released`) while `conn` drains for its live writes' replies. A client's
        reads wait until its writes there are answered, so that it sees its own writes."""
        self.counters.cuts += 1
        self.counters.resent += len(replies)
        self._slots[index] = None
        self._opening[index] = True  # the requests that come meanwhile queue behind them
        waiting = [QueuedRequest(pending.forwarded, pending.multi, pending,
                                 getattr(pending.listener, "affinity", index), resent=True)
                   for pending in replies]
        writers: set[int] = set()
        if conn.draining:
            prior = self._draining[index]
            self._draining[index] = conn
            conn.on_kept_answered = lambda: self._release_held(index)
            if prior is not None:  # one drains at a time: the older one's writes fail
                prior.close(f"connection to {self.address} cut again while it drained")
            writers = conn.kept_owners()
        self._held[index] += [w for w in waiting if id(owner(w.reply)) in writers]
        self._queued[index][:0] = [w for w in waiting if id(owner(w.reply)) not in writers]
        self._release_held(index)  # (those an older drain held, when it was closed above)
        released.set()

    def _release_held(self, index: int) -> None:
        """Send the held reads of the clients whose writes the draining connection no longer
        owes (answered, or failed with it)."""
        held = self._held[index]
        if not held:
            return
        conn = self._draining[index]
        writers = conn.kept_owners() if conn is not None and conn.draining and conn.alive \
            else set()
        go = [w for w in held if id(owner(w.reply)) not in writers]
        if not go:
            return
        self._held[index] = [w for w in held if id(owner(w.reply)) in writers]
        live = self._slots[index]
        if live is not None and live.alive and not self._opening[index]:
            for waiting in go:
                waiting.send_on(live)
        else:  # sent when the slot connects (failed if it cannot)
            self._queued[index] += go

    def _fail_queued(self, index: int, reason: str) -> None:
        self._opening[index] = False
        queued, self._queued[index] = self._queued[index], []
        for waiting in queued:
            self.counters.errors += 1
            waiting.reply.fail(reason)

    async def _close_when_idle(self) -> None:
        """Close the connections after `idle` seconds without a request (checked every
        quarter of it, so within 1.25 x `idle`); the pool is dormant until the next one."""
        while True:
            await self._demand.wait()
            seen, quiet_since = self.counters.requests, trio.current_time()
            while True:
                await trio.sleep(self.idle / 4)
                now = trio.current_time()
                if self.counters.requests != seen or any(self._queued) or \
                        any(self._held) or any(conn.in_flight for conn in self.connections):
                    seen, quiet_since = self.counters.requests, now
                elif now - quiet_since >= self.idle:
                    break
            self._demand = trio.Event()  # first: the slots go dormant, not reconnect
            for conn in self._slots:
                if conn is not None:
                    conn.close(f"{self.address} idle for {self.idle:g} s")

    # -- health --------------------------------------------------------------------

    def _failed(self, reason: str) -> None:
        self.counters.errors += 1
        if reason.startswith("timeout"):
            self.counters.timeouts += 1
        self.failures += 1
        if not self.ejected and self.failures >= self.failure_limit:
            self.ejected = True
            self.counters.ejections += 1
            log.warning("ejecting %s after %d failures in a row (last: %s); probing every %d ms",
                        self.address, self.failures, reason, self.retry * 1000)
            for conn in self._slots + self._draining:
                if conn is not None:
                    conn.close(f"{self.address} ejected: {reason}")

    def _succeeded(self) -> None:
        self.failures = 0

    async def _keep_slot(self, index: int) -> None:
        backoff = min(0.05, self.retry)
        while True:
            if self.ejected:
                if self._queued[index]:  # reads sent again after a cut: none will connect
                    self._fail_queued(index, f"{self.address} is ejected")
                if not self._demand.is_set():
                    await self._demand.wait()  # nobody asks for it: no probing either
                    continue
                if index == 0:
                    await trio.sleep(self.retry)
                    if await self._probe():
                        log.info("%s answers again: back in rotation", self.address)
                        self.ejected = False
                        self.failures = 0
                else:
                    await trio.sleep(self.retry / 4)
                continue
            if not self._demand.is_set():
                await self._demand.wait()  # dormant: no request since start or since idle
                continue
            conn = BackendConnection(self.spec.host, self.spec.port, self.timeout,
                                     self._failed, self._succeeded, self.login(), self.tls)
            try:
                await conn.connect()
            except ConnectionFailed as exc:
                self._connect_failed(exc)
                # the same words as a request that finds no connection (the log has why)
                self._fail_queued(index, f"{self.address} is not connected")
                self._failed(str(exc))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.retry)
                continue
            self._connected()
            backoff = min(0.05, self.retry)
            released = trio.Event()  # the connection failed, or was cut (and drains on)
            conn.on_cut = lambda replies, index=index, conn=conn, released=released: \
                self._send_again(index, replies, conn, released)
            self._slots[index] = conn
            self._opened(index, conn)
            assert self._nursery is not None
            self._nursery.start_soon(self._run_connection, index, conn, released)
            await released.wait()

    async def _run_connection(self, index: int, conn: BackendConnection,
                              released: trio.Event) -> None:
        """`conn` until it fails, or until it has drained after a cut (its slot has moved on
        to a fresh connection by then)."""
        try:
            await conn.run()
        except Exception:
            # A bug in one connection must not take the proxy down: log it with its
            # traceback, count it against the node, and reconnect.
            log.exception("connection to %s failed unexpectedly", self.address)
            self._failed("internal error")
        finally:
            conn.close(f"connection to {self.address} lost")
            released.set()
            if self._draining[index] is conn:
                self._draining[index] = None
                self._release_held(index)

    def _connect_failed(self, exc: ConnectionFailed) -> None:
        if isinstance(exc, HandshakeFailed) and str(exc) != self._tls_problem:
            self._tls_problem = str(exc)
            log.error("%s", exc)

    def _connected(self) -> None:
        if self._tls_problem is not None:
            log.info("%s: TLS handshake succeeds again", self.address)
            self._tls_problem = None

    async def ask_alone(self, request: bytes, multi: bool) -> PendingReply:
        """`request` on a connection of its own, closed after its reply (or the request
        timeout). For a dump: memcached hands the connection to its LRU crawler during
        `lru_crawler metadump` and drops what was pipelined behind it (measured: the
        requests after it on the same read got no reply), so it never shares a pipelined
        connection. Its failure does not count against the node: the pool's own do."""
        if self.ejected:
            reply = PendingReply(multi, 0.0)
            reply.fail(f"{self.address} is ejected")
            return reply
        conn = BackendConnection(self.spec.host, self.spec.port, self.timeout,
                                 lambda reason: None, lambda: None, self.login(), self.tls)
        try:
            await conn.connect()
        except ConnectionFailed as exc:
            reply = PendingReply(multi, 0.0)
            reply.fail(str(exc))
            return reply
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run)
                reply = conn.submit(request, multi)
                await reply.wait()  # the connection's deadline fails it in time
                nursery.cancel_scope.cancel()
            return reply
        finally:
            conn.close("asked alone: done")

    async def _probe(self) -> bool:
        conn = BackendConnection(self.spec.host, self.spec.port, self.timeout,
                                 lambda reason: None, lambda: None, self.login(), self.tls)
        try:
            await conn.connect()
        except ConnectionFailed as exc:
            self._connect_failed(exc)
            return False
        self._connected()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(conn.run)
                reply = conn.submit(b"version\r\n", multi=False)
                with trio.move_on_after(self.timeout):
                    await reply.wait()
                nursery.cancel_scope.cancel()
            return reply.done and reply.error is None
        finally:
            conn.close("probe done")
