"""The Coordinator over a real etcd (v3 gRPC API), driven from trio.

Theory of operation. We use python3-etcd3's generated gRPC stubs (`etcd3.etcdrpc`) and our own
channels rather than its client class: every call then carries its own timeout, a failed
endpoint is retried at once rather than shunned for minutes, and a broken watch stream reports
its error. gRPC is blocking, so each unary call runs in a worker thread via
`trio.to_thread.run_sync(..., abandon_on_cancel=True)`; a cancelled caller returns at once and
the thread ends by its gRPC deadline. A watch is one bidirectional stream read by a thread that
hands each response to trio with `trio.from_thread.run_sync` into an unbounded memory channel;
closing the watch cancels the gRPC call, which ends the thread.

UNAVAILABLE and DEADLINE_EXCEEDED (and a member's own "context deadline exceeded", what a
follower answers when it could not forward to a leader in time) become `CoordinatorUnavailable`
naming the endpoint; with several endpoints the next call goes to the next one, the member that
failed longest ago first. A watch lives on the current endpoint: when any call finds that
endpoint unavailable the watch ends with CoordinatorUnavailable and `follow()` resyncs through
the next one. A stream on a frozen (SIGSTOPped) member gets no error of its own, only silence:
without this a paused etcd leader froze every watcher's view for as long as it was paused
(measured: a dead memring leader replaced after 7.3 s, when the etcd member resumed, instead of
within a second).

gRPC's fork support is turned off before grpc is imported. A process holding this client also
spawns processes (`memring up`, the benchmarks), and `subprocess.Popen` with a `preexec_fn`
forks rather than vforks, which runs gRPC's fork handlers: in the child they restart the event
engine's poller before exec, `close_fds` then closes its epoll fd, and the child aborts
(SIGABRT, "Epoll1Poller ... epoll_wait error: Bad file descriptor"; grpc/grpc#43055); in the
parent the prefork handler sometimes never returns. Measured on 2 busy cores, 600 spawns a
run: with a coordinator open, 8 and 6 children aborted; with one opened and closed before each
spawn (as the benchmarks do), the parent hung in 3 runs of 3; with fork support off, 0 of 2,400
aborted and none hung. Every child memring forks execs at once: nothing needs gRPC across it.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

# before grpc is imported (see the module docstring); a setting in the environment wins
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # type: ignore[import-untyped]
import trio
from etcd3 import etcdrpc  # type: ignore[import-untyped]
from etcd3.etcdrpc import kv_pb2  # type: ignore[import-untyped]

from memring.cluster.coordinator import (
    Coordinator,
    CoordinatorError,
    CoordinatorUnavailable,
    LeaseNotFound,
    WatchCompacted,
    WatchStream,
    collapse_single,
)
from memring.cluster.keyspace import (
    Compare,
    Delete,
    Entry,
    KeyEvent,
    Op,
    Put,
    TxnResult,
    WatchBatch,
    prefix_end,
)

T = TypeVar("T")

_TARGETS = {"create": etcdrpc.Compare.CREATE, "mod": etcdrpc.Compare.MOD,
            "version": etcdrpc.Compare.VERSION, "value": etcdrpc.Compare.VALUE}
_OPS = {"==": etcdrpc.Compare.EQUAL, "!=": etcdrpc.Compare.NOT_EQUAL,
        "<": etcdrpc.Compare.LESS, ">": etcdrpc.Compare.GREATER}
_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Reconnect quickly after etcd restarts (gRPC's default backoff grows to 2 minutes).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
]


def parse_endpoints(urls: str | Sequence[str]) -> list[str]:
    """"http://h:p,http://h2:p2" (or a list; bare "h:p" too) -> ["h:p", "h2:p2"]."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    endpoints = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme != "http" or not parts.hostname or not parts.port:
            raise ValueError(f"bad etcd URL {item!r}: expected http://HOST:PORT")
        endpoints.append(f"{parts.hostname}:{parts.port}")
    if not endpoints:
        raise ValueError("no etcd URL given: expected http://HOST:PORT[,...]")
    return endpoints


def _entry(kv: Any) -> Entry:
    return Entry(kv.key.decode(), bytes(kv.value), int(kv.create_revision),
                 int(kv.mod_revision), int(kv.version), int(kv.lease))


def _request_op(op: Op) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
            key=op.key.encode(), value=op.value, lease=op.lease))
    assert isinstance(op, Delete)
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key.encode()))


def _compare(c: Compare) -> Any:
    msg = etcdrpc.Compare(key=c.key.encode(), target=_TARGETS[c.target], result=_OPS[c.op])
    if c.target == "value":
        assert isinstance(c.operand, bytes)
        msg.value = c.operand
    elif c.target == "create":
        msg.create_revision = int(c.operand)
    elif c.target == "mod":
        msg.mod_revision = int(c.operand)
    else:
        msg.version = int(c.operand)
    return msg


class EtcdCoordinator(Coordinator):
    """The Coordinator over etcd. Build with `connect()`; close with `aclose()`."""

    def __init__(self, urls: str | Sequence[str], cluster: str = "memring", *,
                 call_timeout: float = 1.0, root: str = "/memring") -> None:
        super().__init__(cluster, call_timeout=call_timeout, root=root)
        self.endpoints = parse_endpoints(urls)
        self._channels = [grpc.insecure_channel(ep, options=_CHANNEL_OPTIONS)
                          for ep in self.endpoints]
        self._current = 0
        self._failed_at = [-math.inf] * len(self.endpoints)  # monotonic time of last failure
        self._moved = trio.Event()  # set (and replaced) whenever `_current` changes
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, urls: str | Sequence[str], cluster: str = "memring", *,
                      call_timeout: float = 1.0, probe: bool = True
                      ) -> AsyncIterator[EtcdCoordinator]:
        """A coordinator for the block; with `probe`, fail at once if etcd does not answer."""
        self = cls(urls, cluster, call_timeout=call_timeout)
        try:
            if probe:
                await self._read(self.keyspace.config())
            yield self
        finally:
            await self.aclose()

    @property
    def endpoint_count(self) -> int:
        return len(self.endpoints)

    @property
    def url(self) -> str:
        return f"http://{self.endpoints[self._current]}"

    def _stub(self, kind: Callable[[Any], T]) -> tuple[int, T]:
        if self._closed:
            raise CoordinatorError("the etcd coordinator is closed")
        return self._current, kind(self._channels[self._current])

    def _fail_over(self, index: int) -> None:
        """Endpoint `index` did not answer: if it is current, make current the endpoint that
        failed longest ago (never-failed ones first, in order after `index`). Call from trio."""
        self._failed_at[index] = time.monotonic()
        if len(self.endpoints) == 1 or index != self._current:
            return
        count = len(self.endpoints)
        order = [(index + step) % count for step in range(1, count)]
        self._current = min(order, key=lambda i: self._failed_at[i])
        self._moved.set()
        self._moved = trio.Event()

    async def _until_moved_from(self, index: int) -> None:
        while self._current == index:
            await self._moved.wait()

    def _error(self, index: int, exc: grpc.RpcError, timeout: float, *,
               fail_over: bool = True) -> CoordinatorError:
        """The CoordinatorError for a failed call on endpoint `index`; an unavailable endpoint
        is failed over from (`fail_over=False` from a thread: the caller does it in trio)."""
        code = exc.code() if hasattr(exc, "code") else None
        details = exc.details() if hasattr(exc, "details") else str(exc)
        url = f"http://{self.endpoints[index]}"
        if code in _UNAVAILABLE or (code == grpc.StatusCode.UNKNOWN
                                    and "deadline exceeded" in (details or "")):
            if fail_over:
                self._fail_over(index)
            what = "refused" if code == grpc.StatusCode.UNAVAILABLE else "did not answer"
            return CoordinatorUnavailable(
                f"etcd at {url} {what} within {timeout:g}s ({details}); is etcd running there? "
                "start it (`memring up` spawns one; Debian: etcd-server) or pass --etcd URLS")
        if code == grpc.StatusCode.NOT_FOUND and "lease" in (details or ""):
            return LeaseNotFound(f"etcd at {url}: {details}")
        return CoordinatorError(f"etcd at {url}: {code}: {details}")

    async def _unary(self, kind: Callable[[Any], Any], method: str, request: Any,
                     timeout: float | None = None, *, idempotent: bool = False) -> Any:
        """One call on the current endpoint. An unavailable endpoint makes the next one
        current; an `idempotent` call (a read) is then tried there too, each endpoint once,
        so one member down is not a failure (a write is not: it may have been applied)."""
        limit = self.call_timeout if timeout is None else timeout
        attempts = len(self.endpoints) if idempotent else 1
        for attempt in range(attempts):
            index, stub = self._stub(kind)
            call = getattr(stub, method)
            try:
                return await trio.to_thread.run_sync(
                    functools.partial(call, request, timeout=limit), abandon_on_cancel=True)
            except grpc.RpcError as exc:
                error = self._error(index, exc, limit)
                if not isinstance(error, CoordinatorUnavailable) or attempt == attempts - 1:
                    raise error from None
        raise AssertionError("unreachable: the last attempt returns or raises")

    # primitives -----------------------------------------------------------------------

    async def _read(self, key: str, *, prefix: bool = False) -> tuple[int, dict[str, Entry]]:
        raw = key.encode()
        request = etcdrpc.RangeRequest(key=raw)
        if prefix:
            request.range_end = prefix_end(raw)
        response = await self._unary(etcdrpc.KVStub, "Range", request, idempotent=True)
        return int(response.header.revision), {e.key: e for e in map(_entry, response.kvs)}

    async def _txn(self, compares: Sequence[Compare], success: Sequence[Op],
                   failure: Sequence[Op] = ()) -> TxnResult:
        request = etcdrpc.TxnRequest(compare=[_compare(c) for c in compares],
                                     success=[_request_op(o) for o in success],
                                     failure=[_request_op(o) for o in failure])
        response = await self._unary(etcdrpc.KVStub, "Txn", request)
        return TxnResult(bool(response.succeeded), int(response.header.revision))

    async def _grant(self, ttl: float) -> tuple[int, float]:
        request = etcdrpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        response = await self._unary(etcdrpc.LeaseStub, "LeaseGrant", request)
        if response.error:
            raise CoordinatorError(f"etcd at {self.url} refused a lease: {response.error}")
        return int(response.ID), float(response.TTL)

    async def _keepalive(self, lease_id: int, *, timeout: float) -> float:
        index, stub = self._stub(etcdrpc.LeaseStub)
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)

        def renew_once() -> float:
            call = stub.LeaseKeepAlive(iter([request]), timeout=timeout)
            try:
                for response in call:
                    return float(response.TTL)
                return 0.0
            finally:
                call.cancel()

        try:
            return await trio.to_thread.run_sync(renew_once, abandon_on_cancel=True)
        except grpc.RpcError as exc:
            raise self._error(index, exc, timeout) from None

    async def revoke(self, lease_id: int) -> bool:
        try:
            await self._unary(etcdrpc.LeaseStub, "LeaseRevoke",
                              etcdrpc.LeaseRevokeRequest(ID=lease_id))
        except LeaseNotFound:
            return False
        return True

    @asynccontextmanager
    async def _watch_raw(self, prefix: str, from_revision: int) -> AsyncIterator[WatchStream]:
        index, stub = self._stub(etcdrpc.WatchStub)
        url = f"http://{self.endpoints[index]}"
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
        call = stub.Watch(requests())

        def to_trio(fn: Callable[[], object]) -> bool:
            try:
                trio.from_thread.run_sync(fn, trio_token=token)
            except (trio.RunFinishedError, trio.BrokenResourceError, trio.ClosedResourceError):
                return False
            return True

        def pump() -> CoordinatorError | None:
            try:
                for rs in call:
                    if rs.compact_revision:
                        return WatchCompacted(f"etcd at {url}: revision {from_revision} "
                                              f"was compacted (now {rs.compact_revision})")
                    if rs.canceled:
                        return CoordinatorError(f"etcd at {url} cancelled the watch: "
                                                f"{rs.cancel_reason}")
                    if rs.created:
                        to_trio(created.set)
                    if rs.events:
                        batch = WatchBatch(int(rs.header.revision), tuple(
                            KeyEvent("put" if ev.type == kv_pb2.Event.PUT else "delete",
                                     _entry(ev.kv)) for ev in rs.events))
                        if not to_trio(functools.partial(send.send_nowait, batch)):
                            return None
                return CoordinatorUnavailable(f"etcd at {url} ended the watch stream")
            except grpc.RpcError as exc:
                if closing.is_set():
                    return None
                return self._error(index, exc, self.call_timeout, fail_over=False)

        async def run_pump() -> None:
            # its own limiter: a long-lived watch must not hold a slot of the unary calls' pool
            error = await trio.to_thread.run_sync(pump, abandon_on_cancel=True,
                                                  limiter=trio.CapacityLimiter(1))
            if isinstance(error, CoordinatorUnavailable):
                self._fail_over(index)
            if error is not None or stream.error is None:
                stream.error = error
            created.set()
            send.close()

        async def end_when_moved() -> None:
            # another call found this endpoint unavailable: a frozen member sends no error
            await self._until_moved_from(index)
            stream.error = CoordinatorUnavailable(
                f"etcd at {url} stopped answering other calls: "
                f"moving the watch to http://{self.endpoints[self._current]}")
            closing.set()
            call.cancel()

        failed: CoordinatorError | None = None
        try:
            with collapse_single():
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(run_pump)
                    nursery.start_soon(end_when_moved)
                    with trio.move_on_after(self.call_timeout):
                        await created.wait()
                    if not created.is_set():
                        self._fail_over(index)
                        failed = CoordinatorUnavailable(
                            f"etcd at {url} did not confirm a watch within "
                            f"{self.call_timeout:g}s; is etcd running there?")
                    elif stream.error is not None:
                        failed = stream.error
                    if failed is not None:
                        nursery.cancel_scope.cancel()
                    else:
                        try:
                            async with receive:
                                yield stream
                        finally:
                            nursery.cancel_scope.cancel()
        finally:
            closing.set()
            call.cancel()
        if failed is not None:
            raise failed

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        for channel in self._channels:
            channel.close()
        await trio.lowlevel.checkpoint()
