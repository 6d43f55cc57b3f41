"""The watches of an EtcdCoordinator: a prefix's changes from a revision on.

Theory of operation. A watch is a `POST /v3/watch` to etcd's JSON gateway, a chunked answer
that never ends, on a connection of its own read by a trio task (cluster.etcd_gateway_watch);
closing the watch closes the connection, and no thread is involved (through gRPC, an open
stream kept grpcio's threads waking: docs/scaling.md, "round four"). Where the gateway refuses
our client certificate (a common name), watches go over gRPC for the process's life: one
bidirectional stream read by a thread that hands each response to trio with
`trio.from_thread.run_sync` into an unbounded memory channel; closing it cancels the gRPC call,
which ends the thread. Both transports end the same ways: WatchCompacted, a refusal of our
token (`WatchRefused`, which the coordinator retries once with a new token), WatchMoved when
another call moved the coordinator off this endpoint (a frozen member sends no error of its
own, only silence), CoordinatorUnavailable. The coordinator owns one `EtcdWatches` and lends
it what the watches share with its other calls (cluster.etcd_host, `EtcdHost`).
"""

from __future__ import annotations

import functools
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from memring.cluster.coordinator import (
    AccessDenied,
    CoordinatorError,
    CoordinatorUnavailable,
    WatchCompacted,
    WatchMoved,
    WatchStream,
    collapse_single,
)
from memring.cluster.etcd_gateway import CN_REFUSED, GatewayRefused, GatewayUnreachable
from memring.cluster.etcd_gateway_watch import GatewayWatch, create_request, decode_message
from memring.cluster.etcd_grpc import (
    INVALID_TOKEN,
    PERMISSION_DENIED,
    STATUS_CODES,
    details,
    entry,
    etcdrpc,
    grpc,
    kv_pb2,
)
from memring.cluster.etcd_host import EtcdHost
from memring.cluster.keyspace import KeyEvent, WatchBatch, prefix_end

log = logging.getLogger("memring.cluster")


class WatchRefused(AccessDenied):
    """etcd cancelled a watch at its creation: permission denied (or, in etcd 3.4, a stale
    token, which it reports the same way)."""


class _GatewayRefusedCertificate(Exception):
    """etcd's gateway refused a watch for our client certificate's common name (`CN_REFUSED`);
    the argument is the member's URL."""


class EtcdWatches:
    """The watches of one EtcdCoordinator (`coordinator.watches`)."""

    def __init__(self, host: EtcdHost) -> None:
        self._host = host

    @asynccontextmanager
    async def open(self, prefix: str, from_revision: int) -> AsyncIterator[WatchStream]:
        """Through etcd's JSON gateway (no thread), unless it refuses our client certificate
        (as it does the keepalives): then, for the process's life, over gRPC."""
        gateway = self._host.gateway
        if gateway.watches and gateway.keepalives:
            try:
                async with self._watch_gateway(prefix, from_revision) as stream:
                    yield stream
                    return
            except _GatewayRefusedCertificate as exc:
                log.info("etcd at %s refuses gateway calls from a client certificate with a "
                         "common name: watches go over gRPC", exc)
                gateway.watches = False
        async with self._watch_grpc(prefix, from_revision) as stream:
            yield stream

    def _cancelled_watch(self, url: str, from_revision: int, compact_revision: int,
                         reason: str) -> CoordinatorError:
        """The error of a watch etcd cancelled (either transport's)."""
        if compact_revision:
            return WatchCompacted(f"etcd at {url}: revision {from_revision} "
                                  f"was compacted (now {compact_revision})")
        reason = reason.split(" desc = ", 1)[-1]  # "rpc error: code = ... desc = etcdserver: ..."
        if PERMISSION_DENIED in reason or INVALID_TOKEN in reason:
            refusal = self._host.refusal(url, grpc.StatusCode.PERMISSION_DENIED, reason)
            return WatchRefused(str(refusal))
        return CoordinatorError(f"etcd at {url} cancelled the watch: {reason}")

    def _gateway_watch_error(self, index: int, exc: GatewayRefused | GatewayUnreachable,
                             what: str) -> CoordinatorError:
        """A gateway watch's transport error as the gRPC watch's; fails over (from trio)."""
        url = self._host.url_at(index)
        if isinstance(exc, GatewayUnreachable):
            if exc.tls_refused:
                return self._host.gateway.tls_refusal(url, exc)
            self._host.fail_over(index)
            return CoordinatorUnavailable(f"etcd at {url} {what} ({exc}); is etcd running "
                                          "there?")
        code = STATUS_CODES.get(exc.code, grpc.StatusCode.UNKNOWN)
        if self._host.stale_token(code, exc.message):
            return WatchRefused(f"etcd at {url} refused our token: {exc.message}")
        return self._host.status_error(index, code, exc.message, self._host.call_timeout)

    async def _moved(self, index: int, url: str) -> WatchMoved:
        """Once another call found endpoint `index` unavailable and moved on (a frozen member
        sends the watch no error of its own, only silence): the watch's end."""
        await self._host.until_moved_from(index)
        return WatchMoved(f"etcd at {url} stopped answering other calls: "
                          f"moving the watch to {self._host.url}")

    @asynccontextmanager
    async def _watch_gateway(self, prefix: str, from_revision: int
                             ) -> AsyncIterator[WatchStream]:
        """A watch on a gateway connection of its own (cluster.etcd_gateway_watch), read by a
        trio task: the same errors, moves and bounds as `_watch_grpc`."""
        if self._host.closed:
            raise CoordinatorError("the etcd coordinator is closed")
        index = self._host.current
        url = self._host.url_at(index)
        watch = GatewayWatch(self._host.endpoints[index], self._host.gateway.tls_context())
        send, receive = trio.open_memory_channel[WatchBatch](math.inf)
        stream = WatchStream(receive)
        try:
            try:
                with trio.fail_after(self._host.call_timeout):
                    first = decode_message(await watch.start(
                        create_request(prefix, from_revision), self._host.token))
            except trio.TooSlowError:
                self._host.fail_over(index)
                raise CoordinatorUnavailable(
                    f"etcd at {url} did not confirm a watch within {self._host.call_timeout:g}s; "
                    "is etcd running there?") from None
            except (GatewayRefused, GatewayUnreachable) as exc:
                if isinstance(exc, GatewayRefused) and CN_REFUSED in exc.message:
                    raise _GatewayRefusedCertificate(url) from None
                raise self._gateway_watch_error(index, exc, "refused a watch") from None
            if first.canceled or first.compact_revision:
                raise self._cancelled_watch(url, from_revision, first.compact_revision,
                                            first.cancel_reason)
            if first.batch is not None:  # (etcd sends `created` alone first)
                send.send_nowait(first.batch)

            async def pump(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                error: CoordinatorError | None = None
                with trio.CancelScope() as scope:
                    task_status.started(scope)
                    try:
                        while True:
                            message = decode_message(await watch.next_result())
                            if message.canceled or message.compact_revision:
                                error = self._cancelled_watch(
                                    url, from_revision, message.compact_revision,
                                    message.cancel_reason)
                                break
                            if message.batch is not None:
                                send.send_nowait(message.batch)
                    except (GatewayRefused, GatewayUnreachable) as exc:
                        error = self._gateway_watch_error(index, exc, "ended the watch stream")
                if stream.error is None:
                    stream.error = error
                send.close()

            async def end_when_moved(pumping: trio.CancelScope) -> None:
                stream.error = await self._moved(index, url)
                pumping.cancel()

            with collapse_single():  # the caller's error through this nursery, not a group
                async with trio.open_nursery() as nursery:
                    pumping = await nursery.start(pump)
                    nursery.start_soon(end_when_moved, pumping)
                    async with _lent(stream, receive, nursery):
                        yield stream
        finally:
            await watch.aclose()

    @asynccontextmanager
    async def _watch_grpc(self, prefix: str, from_revision: int) -> AsyncIterator[WatchStream]:
        """A watch over a gRPC stream, read by a thread."""
        index, stub = self._host.stub(etcdrpc.WatchStub)
        url = self._host.url_at(index)
        raw = prefix.encode()
        create = etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=raw, range_end=prefix_end(raw), start_revision=from_revision))
        closing = threading.Event()

        def requests() -> Iterator[Any]:
            yield create
            closing.wait()  # keep the request side open until we close the watch

        send, receive = trio.open_memory_channel[WatchBatch](math.inf)
        stream = WatchStream(receive)
        created = trio.Event()
        token = trio.lowlevel.current_trio_token()
        call = stub.Watch(requests(), metadata=self._host.call_metadata())

        def to_trio(fn: Callable[[], object]) -> bool:
            try:
                trio.from_thread.run_sync(fn, trio_token=token)
            except (trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True

        def pump() -> CoordinatorError | None:
            try:
                for rs in call:
                    if rs.compact_revision or rs.canceled:
                        return self._cancelled_watch(url, from_revision,
                                                     int(rs.compact_revision),
                                                     rs.cancel_reason)
                    if rs.created:
                        to_trio(created.set)
                    if rs.events:
                        batch = WatchBatch(int(rs.header.revision), tuple(
                            KeyEvent("put" if ev.type == kv_pb2.Event.PUT else "delete",
                                     entry(ev.kv)) for ev in rs.events))
                        if not to_trio(functools.partial(send.send_nowait, batch)):
                            return None
                return CoordinatorUnavailable(f"etcd at {url} ended the watch stream")
            except grpc.RpcError as exc:
                if closing.is_set():
                    return None
                if self._host.stale_token(*details(exc)):
                    return WatchRefused(f"etcd at {url} refused our token: {exc.details()}")
                return self._host.rpc_error(index, exc, self._host.call_timeout, fail_over=False)

        async def run_pump() -> None:
            # its own limiter: a long-lived watch must not hold a slot of the unary calls' pool
            error = await trio.to_thread.run_sync(pump, abandon_on_cancel=True,
                                                  limiter=trio.CapacityLimiter(1))
            if isinstance(error, CoordinatorUnavailable):
                self._host.fail_over(index)
            if error is not None or stream.error is None:
                stream.error = error
            created.set()
            send.close()

        async def end_when_moved() -> None:
            stream.error = await self._moved(index, url)
            closing.set()
            call.cancel()

        failed: CoordinatorError | None = None
        with self._host.grpc_call():  # its channel stays open while the watch is
            try:
                with collapse_single():
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(run_pump)
                        nursery.start_soon(end_when_moved)
                        with trio.move_on_after(self._host.call_timeout):
                            await created.wait()
                        if not created.is_set():
                            self._host.fail_over(index)
                            failed = CoordinatorUnavailable(
                                f"etcd at {url} did not confirm a watch within "
                                f"{self._host.call_timeout:g}s; is etcd running there?")
                        elif stream.error is not None:
                            failed = stream.error
                        if failed is not None:
                            nursery.cancel_scope.cancel()
                        else:
                            async with _lent(stream, receive, nursery):
                                yield stream
            finally:
                closing.set()
                call.cancel()
        if failed is not None:
            raise failed


@asynccontextmanager
async def _lent(stream: WatchStream, receive: trio.MemoryReceiveChannel[WatchBatch],
                tasks: trio.Nursery) -> AsyncIterator[WatchStream]:
    """The caller's block over a watch's `stream` (either transport's): when it ends, the
    channel closes and the watch's `tasks` stop."""
    try:
        async with receive:
            yield stream
    finally:
        tasks.cancel_scope.cancel()
