"""The lease calls of an EtcdCoordinator: grant, keepalive, revoke.

Theory of operation. Lease keepalives, the one call made every 0.67 s for good, skip gRPC:
they are POSTs to etcd's JSON gateway on the same client port over one kept HTTP/1.1
connection on a trio socket (cluster.etcd_gateway), so an idle backend wakes no thread but
trio's for them (through gRPC's sync stack each crossed a worker thread, gRPC's request thread
and its event engine: docs/scaling.md, "round three"). etcd 3.4's gateway refuses a client
certificate that has a common name; then keepalives go over one kept gRPC LeaseKeepAlive
stream. Grants and revocations are unary gRPC calls. The coordinator owns one `EtcdLeases`
and lends it what the calls share with its others (cluster.etcd_host, `EtcdHost`): the
current endpoint and its fail-over, the token, the error mapping.
"""

from __future__ import annotations

import logging
import math
import queue
from typing import Any

import trio

from memring.cluster.coordinator import (
    CoordinatorError,
    CoordinatorUnavailable,
    LeaseNotFound,
)
from memring.cluster.etcd_gateway import (
    CN_REFUSED,
    EtcdGateway,
    GatewayRefused,
    GatewayUnreachable,
)
from memring.cluster.etcd_grpc import STATUS_CODES, details, etcdrpc, grpc
from memring.cluster.etcd_host import EtcdHost

log = logging.getLogger("memring.cluster")
KEEPALIVE_PATH = "/v3/lease/keepalive"  # etcd's JSON gateway (cluster.etcd_gateway)


class _KeepAliveStream:
    """One LeaseKeepAlive stream on one endpoint, kept open for every lease's keepalives (one
    in flight at a time: etcd answers a stream's requests in order). gRPC consumes the request
    iterator in one thread for the stream's life."""

    def __init__(self, stub: Any, index: int, metadata: Any, generation: int) -> None:
        self.index = index
        self.generation = generation  # of the token it was opened with
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._call = stub.LeaseKeepAlive(iter(self._requests.get, None), metadata=metadata)
        self.closed = False

    def renew(self, request: Any) -> Any:
        """In a worker thread: send one keepalive, return its response (None: the stream
        ended). Raises grpc.RpcError, also when `close()` cancels the stream meanwhile."""
        self._requests.put(request)
        return next(self._call, None)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._requests.put(None)
            self._call.cancel()



class EtcdLeases:
    """Grant, keepalive and revoke of leases for one EtcdCoordinator (`host`)."""

    def __init__(self, host: EtcdHost) -> None:
        self._host = host
        self._gateway: tuple[int, EtcdGateway] | None = None  # (endpoint index, connection)
        self._keepalives: _KeepAliveStream | None = None
        self._keepalive_lock = trio.Lock()  # one keepalive in flight on the connection

    async def grant(self, ttl: float) -> tuple[int, float]:
        request = etcdrpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        response = await self._host.unary(etcdrpc.LeaseStub, "LeaseGrant", request)
        if response.error:
            raise CoordinatorError(f"etcd at {self._host.url} refused a lease: {response.error}")
        return int(response.ID), float(response.TTL)

    async def keepalive(self, lease_id: int, *, timeout: float) -> float:
        """One keepalive through etcd's JSON gateway (no thread), within `timeout` of its
        send. As `unary(resend=True)` (a keepalive is idempotent): with several endpoints an
        attempt gets `attempt_timeout`, then is sent once more to the member that leads etcd
        and answers; a token etcd calls stale is renewed once."""
        if not self._host.gateway.keepalives:
            return await self._keepalive_stream_call(lease_id, timeout=timeout)
        started = trio.current_time()
        resends = 1 if len(self._host.endpoints) > 1 else 0
        resent = False
        renewed = not self._host.security.user
        if not renewed and not self._host.token:
            await self._host.renew_token(self._host.authentications)
        while True:
            generation = self._host.authentications
            index = self._host.current
            wait = self._host.attempt_wait(timeout, started, resends, resent)
            try:
                result = await self._gateway_call(index, KEEPALIVE_PATH, {"ID": str(lease_id)},
                                                  wait)
            except GatewayRefused as exc:
                if CN_REFUSED in exc.message:
                    log.info("etcd at %s refuses gateway calls from a client certificate with "
                             "a common name: lease keepalives go over gRPC",
                             self._host.url_at(index))
                    self._host.gateway.keepalives = False
                    return await self._keepalive_stream_call(
                        lease_id, timeout=max(0.0, started + timeout - trio.current_time()))
                code = STATUS_CODES.get(exc.code, grpc.StatusCode.UNKNOWN)
                if not renewed and self._host.stale_token(code, exc.message):
                    renewed = True
                    await self._host.renew_token(generation)
                    continue
                error = self._host.status_error(index, code, exc.message, wait,
                                                fail_over=not resends)
            except GatewayUnreachable as exc:
                error = self._unreachable(index, exc, wait, fail_over=not resends)
            else:
                if int(result.get("ID", 0)) == lease_id:
                    return float(result.get("TTL", 0))  # etcd leaves out a TTL of 0: gone
                error = CoordinatorUnavailable(
                    f"etcd at {self._host.url_at(index)} answered a keepalive of lease "
                    f"{lease_id:x} for another lease: {result.get('ID')!r}")
                if not resends:
                    self._host.fail_over(index)
            if not isinstance(error, CoordinatorUnavailable) or not resends:
                raise error
            resends -= 1
            resent = True
            await self._host.to_answering_leader(
                index, started + timeout - self._host.attempt_timeout)
            log.info("%s; sending the keepalive again through %s", error, self._host.url)

    async def _gateway_call(self, index: int, path: str, payload: dict[str, Any],
                            timeout: float) -> dict[str, Any]:
        """One call to endpoint `index`'s gateway on the kept connection (made anew when the
        endpoint changed); the wait for another keepalive counts in `timeout`."""
        if self._host.closed:
            raise CoordinatorError("the etcd coordinator is closed")
        try:
            with trio.fail_after(timeout):
                async with self._keepalive_lock:
                    if self._gateway is None or self._gateway[0] != index:
                        if self._gateway is not None:
                            await self._gateway[1].aclose()
                        self._gateway = (index, EtcdGateway(self._host.endpoints[index],
                                                            self._host.gateway.tls_context()))
                    return await self._gateway[1].call(path, payload, self._host.token)
        except trio.TooSlowError:
            raise GatewayUnreachable("no answer") from None

    def _unreachable(self, index: int, exc: GatewayUnreachable, timeout: float, *,
                     fail_over: bool) -> CoordinatorError:
        """The CoordinatorError for a gateway call that got no answer from endpoint `index`."""
        url = self._host.url_at(index)
        if exc.tls_refused:
            return self._host.gateway.tls_refusal(url, exc)
        if fail_over:
            self._host.fail_over(index)
        return CoordinatorUnavailable(
            f"etcd at {url} did not answer a keepalive within {timeout:g}s ({exc}); is etcd "
            "running there?")

    async def _keepalive_stream_call(self, lease_id: int, *, timeout: float) -> float:
        """A keepalive over a kept gRPC LeaseKeepAlive stream (`_KeepAliveStream`), where
        the gateway refuses our client certificate."""
        request = etcdrpc.LeaseKeepAliveRequest(ID=lease_id)
        renewed = not self._host.security.user
        if not renewed and not self._host.token:
            await self._host.renew_token(self._host.authentications)
        while True:
            generation = self._host.authentications
            stream: _KeepAliveStream | None = None
            try:
                with trio.fail_after(timeout):
                    async with self._keepalive_lock:
                        stream = self._keepalive_stream()
                        answered = False
                        try:
                            response = await trio.to_thread.run_sync(
                                stream.renew, request, abandon_on_cancel=True)
                            answered = True
                        finally:
                            if not answered:  # its thread may still wait on the stream:
                                self._close_keepalives(stream)  # never read it twice at once
            except trio.TooSlowError:
                if stream is None:  # another keepalive held the stream that long
                    raise CoordinatorUnavailable(
                        f"etcd at {self._host.url}: no keepalive answered within {timeout:g}s"
                    ) from None
                self._close_keepalives(stream)
                self._host.fail_over(stream.index)
                raise CoordinatorUnavailable(
                    f"etcd at {self._host.url_at(stream.index)} did not answer a keepalive "
                    f"within {timeout:g}s; is etcd running there?") from None
            except grpc.RpcError as exc:
                assert stream is not None
                self._close_keepalives(stream)
                if not renewed and self._host.stale_token(*details(exc)):
                    renewed = True
                    await self._host.renew_token(generation)
                    continue
                raise self._host.rpc_error(stream.index, exc, timeout) from None
            if response is None or int(response.ID) != lease_id:
                self._close_keepalives(stream)
                self._host.fail_over(stream.index)
                raise CoordinatorUnavailable(
                    f"etcd at {self._host.url_at(stream.index)} ended the keepalive stream")
            return float(response.TTL)

    def _keepalive_stream(self) -> _KeepAliveStream:
        """The open keepalive stream, opened anew on the current endpoint with the current
        token if the endpoint or the token changed."""
        stream = self._keepalives
        if stream is not None and (stream.index != self._host.current
                                   or stream.generation != self._host.authentications):
            self._close_keepalives(stream)
            stream = None
        if stream is None:
            index, stub = self._host.stub(etcdrpc.LeaseStub)
            stream = self._keepalives = _KeepAliveStream(stub, index, self._host.call_metadata(),
                                                         self._host.authentications)
        return stream

    @property
    def keepalive_stream_open(self) -> bool:
        """A gRPC keepalive stream is open (its channel must stay open)."""
        return self._keepalives is not None

    def _close_keepalives(self, stream: _KeepAliveStream) -> None:
        stream.close()
        if self._keepalives is stream:
            self._keepalives = None

    async def revoke(self, lease_id: int) -> bool:
        # sent again after an unanswered attempt: revoking twice is harmless (the second
        # finds the lease gone: False)
        try:
            await self._host.unary(etcdrpc.LeaseStub, "LeaseRevoke",
                                   etcdrpc.LeaseRevokeRequest(ID=lease_id), resend=True)
        except LeaseNotFound:
            return False
        return True


    async def aclose(self) -> None:
        if self._gateway is not None:
            await self._gateway[1].aclose()
        if self._keepalives is not None:
            self._close_keepalives(self._keepalives)
