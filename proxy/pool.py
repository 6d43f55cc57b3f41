"""A backend node as the proxy sees it: a few pipelined connections and a health record.

Each of `pool_size` slots keeps one connection open, reconnecting after a failure. A
failure (connect error, timeout, reset, bad reply) counts against the node; after
`failure_limit` in a row the node is ejected (TKO): requests to it fail at once with
SERVER_ERROR instead of waiting on timeouts, its connections are closed, and one probe
every `retry_ms` tries a `version` round trip until the node answers again. Any good
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
from memring.proxy.backend_connection import (
    BackendConnection,
    ConnectionFailed,
    HandshakeFailed,
    PendingReply,
    ReplyListener,
)
from memring.proxy.settings import NodeSpec, ProxySettings

log = logging.getLogger("memring.proxy")


class NodeCounters:
    __slots__ = ("ejections", "errors", "requests", "timeouts")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.timeouts = 0
        self.ejections = 0


def _no_login() -> Login | None:
    return None


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
        self.failure_limit = settings.failure_limit
        self.counters = NodeCounters()
        self.failures = 0
        self.ejected = False
        self._slots: list[BackendConnection | None] = [None] * self.size
        self._cancel = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self.first_attempt = trio.Event()  # a slot's first connect() ended, either way

    @property
    def connections(self) -> list[BackendConnection]:
        return [c for c in self._slots if c is not None and c.alive]

    @property
    def available(self) -> bool:
        return not self.ejected and any(c is not None and c.alive for c in self._slots)

    async def run(self) -> None:
        """Keep the slots connected until `close()`; owned by the proxy's nursery."""
        with self._cancel:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for index in range(self.size):
                    nursery.start_soon(self._keep_slot, index)

    def close(self) -> None:
        """Out of the topology: the router sends it nothing new, but the replies already on
        their way are read before the connections close (up to the request timeout). A
        leader that resigns (`memring node drain`, `leader transfer`) answers its last writes
        just as it leaves the topology: STORED once they are replicated, or `not the leader`,
        which the session retries on the next leader. Failing them at once made client
        errors of both (seen in 1 of 3 drains of a leader under load)."""
        if self._nursery is not None and not self._cancel.cancel_called and \
                any(conn.in_flight for conn in self.connections):
            self._nursery.start_soon(self._close_when_answered)
        else:
            self._close_now()

    async def _close_when_answered(self) -> None:
        with trio.move_on_after(self.timeout):
            while any(conn.in_flight for conn in self.connections):
                await trio.sleep(0.005)
        self._close_now()

    def _close_now(self) -> None:
        self._cancel.cancel()
        for conn in self._slots:
            if conn is not None:
                conn.close(f"{self.address} removed from the topology")

    def submit(self, request: bytes, multi: bool, client: ReplyListener | None = None
               ) -> PendingReply:
        """Queue `request` on the connection the client's `affinity` picks, so that the
        requests of one client session stay in order on one connection (memcached runs a
        connection's commands in order; a set then a get must not race on two
        connections). The client hears when the reply is complete."""
        self.counters.requests += 1
        if not self.ejected:
            size = self.size
            affinity = client.affinity if client is not None else 0
            for step in range(size):
                conn = self._slots[(affinity + step) % size]
                if conn is not None and conn.alive:
                    return conn.submit(request, multi, client)
        reply = PendingReply(multi, 0.0)
        reply.fail(f"{self.address} is {'ejected' if self.ejected else 'not connected'}")
        self.counters.errors += 1
        return reply

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
            for conn in self._slots:
                if conn is not None:
                    conn.close(f"{self.address} ejected: {reason}")

    def _succeeded(self) -> None:
        self.failures = 0

    async def _keep_slot(self, index: int) -> None:
        backoff = min(0.05, self.retry)
        while True:
            if self.ejected:
                if index == 0:
                    await trio.sleep(self.retry)
                    if await self._probe():
                        log.info("%s answers again: back in rotation", self.address)
                        self.ejected = False
                        self.failures = 0
                else:
                    await trio.sleep(self.retry / 4)
                continue
            conn = BackendConnection(self.spec.host, self.spec.port, self.timeout,
                                     self._failed, self._succeeded, self.login(), self.tls)
            try:
                await conn.connect()
            except ConnectionFailed as exc:
                self.first_attempt.set()
                self._connect_failed(exc)
                self._failed(str(exc))
                await trio.sleep(backoff)
                backoff = min(backoff * 2, self.retry)
                continue
            self._connected()
            backoff = min(0.05, self.retry)
            self._slots[index] = conn
            self.first_attempt.set()
            try:
                await conn.run()
            except Exception:
                # A bug in one connection must not take the proxy down: log it with its
                # traceback, count it against the node, and reconnect.
                log.exception("connection to %s failed unexpectedly", self.address)
                self._failed("internal error")
            finally:
                conn.close(f"connection to {self.address} lost")

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
