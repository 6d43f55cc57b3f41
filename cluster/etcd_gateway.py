"""JSON calls to one etcd member's HTTP gateway over one kept connection on a trio socket.

Theory of operation. etcd 3.4 serves a JSON translation of its v3 gRPC API (grpc-gateway) on
its client port: `POST /v3/lease/keepalive` with `{"ID": "<lease id>"}` answers, chunked, one
`{"result": {"ID": ..., "TTL": ...}}` per request (a bidirectional stream becomes one request
per POST; int64 fields are JSON strings; a TTL of 0 is left out), over a connection that stays
open for the next POST. The lease keepalive goes this way (cluster.etcd_coordinator) because
it then costs no thread: a call through gRPC's sync stack crossed a worker thread, gRPC's
request thread and its event engine every 0.67 s, each hop a futex wake and a GIL hand-over
(docs/scaling.md, "round three"). `EtcdGateway` holds the connection (TCP, or TLS with the
same CA and client certificate as the gRPC channels) and sends one call at a time; the
codec is cluster.http1. etcd's errors come two ways, both as `GatewayRefused` with the gRPC
status code and message: a whole reply `{"error": ..., "message": ..., "code": N}` with an
HTTP error status (a call refused before it started), or `{"error": {"grpc_code": N,
"message": ...}}` inside a 200 (a stream that failed). Anything else that goes wrong, a
refused or reset connection, a TLS failure, bytes that are not HTTP or not JSON, closes the
connection and is `GatewayUnreachable`; the next call connects again. A call cancelled
mid-way (its caller's timeout) closes the connection too: its answer may still come.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import trio

from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.http1 import HttpProtocolError, ResponseReader, encode_request

RECEIVE_SIZE = 16 * 1024
# etcd 3.4.10+ answers a gateway request made with a client certificate that has a common name
# so (HTTP 400; embed/serve.go, for CVE-2020-15136: the gateway cannot pass the name on)
CN_REFUSED = "CommonName of client sending a request against gateway"


class GatewayUnreachable(Exception):
    """The member could not be reached or spoke no HTTP/JSON we understand."""

    def __init__(self, message: str, *, tls_refused: bool = False) -> None:
        super().__init__(message)
        self.tls_refused = tls_refused  # a TLS handshake failed on a certificate: a setting


class GatewayRefused(Exception):
    """etcd answered the call with an error: its gRPC status `code` and `message`."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"code {code}: {message}")
        self.code = code
        self.message = message


def tls_context(security: EtcdSecurity) -> ssl.SSLContext:
    """The client TLS context for etcd's https:// port: its CA (else the system's), and our
    certificate for etcd's --client-cert-auth."""
    context = ssl.create_default_context(cafile=security.ca or None)
    if security.cert:
        context.load_cert_chain(security.cert, security.key)
    return context


class EtcdGateway:
    """One kept HTTP/1.1 connection to etcd member `endpoint` (HOST:PORT); one call at a
    time (the caller serializes them)."""

    def __init__(self, endpoint: str, tls: ssl.SSLContext | None = None) -> None:
        self.endpoint = endpoint
        self.host, _, port = endpoint.rpartition(":")
        self.port = int(port)
        self.tls = tls
        self._stream: trio.abc.Stream | None = None
        self._reader = ResponseReader()
        self._unfinished = False  # the last answer was used before its body ended

    @property
    def connected(self) -> bool:
        return self._stream is not None

    async def call(self, path: str, payload: dict[str, Any], token: str = "") -> dict[str, Any]:
        """POST `payload` to `path`; the first answer's "result" object. Raises
        GatewayRefused (etcd's error) or GatewayUnreachable (the connection is closed).

        Only for idempotent calls (a lease keepalive): a call that fails on a kept connection
        is sent once more on a new one, as HTTP clients do, since the member may have closed
        the idle connection (a restarted etcd): without it, the first keepalive after a
        restart failed, and a leader whose lease had lapsed on its clock lost its session
        and its shard's leadership (test_etcd_outage)."""
        headers = [("Content-Type", "application/json")]
        if token:
            headers.append(("Authorization", token))
        request = encode_request("POST", path, self.endpoint,
                                 json.dumps(payload).encode(), headers=headers)
        if self._stream is None:
            return await self._exchange(request)
        try:
            return await self._exchange(request)
        except GatewayUnreachable:
            return await self._exchange(request)  # on a new connection (_exchange closed it)

    async def _exchange(self, request: bytes) -> dict[str, Any]:
        """Send `request` on the kept connection (opened if none) and read its answer."""
        done = False
        try:
            stream = await self._connected()
            await stream.send_all(request)
            while True:
                response = self._reader.next_response()
                if response is not None:
                    if self._unfinished:  # the end of the last answer, come since
                        self._unfinished = False
                        continue
                    done = response.keep_alive
                    status, body = response.status, response.body
                    break
                # etcd ends a streaming call's chunked body in a write of its own, after the
                # answer: taking the answer at once spares a wake-up per call (the end is
                # read before the next answer)
                early = self._reader.partial_body()
                if not self._unfinished and early is not None and b"\n" in early[1]:
                    status, body = early
                    done = self._unfinished = True
                    break
                self._reader.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        except STREAM_ERRORS as exc:
            raise unreachable(exc) from None
        finally:
            if not done:
                await self.aclose()
        return result_of(status, body)

    async def _connected(self) -> trio.abc.Stream:
        if self._stream is None:
            self._reader = ResponseReader()
            self._unfinished = False
            self._stream = await open_stream(self.host, self.port, self.tls)
        return self._stream

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)


# what a failed connection, TLS handshake, send or receive, or bytes that are no HTTP, raise
STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError, HttpProtocolError)


async def open_stream(host: str, port: int, tls: ssl.SSLContext | None) -> trio.abc.Stream:
    """A connection to a member's client port, TLS-handshaken with `tls` if given."""
    tcp = await trio.open_tcp_stream(host, port)
    if tls is None:
        return tcp
    tls_stream = trio.SSLStream(tcp, tls, server_hostname=host)
    try:
        await tls_stream.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(tcp)
        raise
    return tls_stream


def unreachable(exc: BaseException) -> GatewayUnreachable:
    """The GatewayUnreachable for one of STREAM_ERRORS."""
    if isinstance(exc, HttpProtocolError):
        return GatewayUnreachable(f"{exc} (is this etcd's client port?)")
    cause = (exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc) or exc
    return GatewayUnreachable(f"{type(cause).__name__}: {cause}",
                              tls_refused=_certificate_refused(exc))


def _certificate_refused(exc: BaseException) -> bool:
    """A handshake that failed on a certificate (ours refused, or etcd's not trusted)."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    return isinstance(cause, ssl.SSLError) and any(
        word in str(cause) for word in ("CERTIFICATE", "certificate", "UNKNOWN_CA"))


def result_of(status: int, body: bytes) -> dict[str, Any]:
    """The "result" of etcd's first answer in `body`; GatewayRefused for an error answer."""
    try:
        first = body.split(b"\n", 1)[0] if body.strip() else b"{}"
        answer = json.loads(first)
    except ValueError:
        if status != 200:  # a refusal in plain text (Go's http.Error)
            raise GatewayRefused(2, body[:300].decode("utf-8", "replace").strip()) from None
        raise GatewayUnreachable(f"HTTP 200 with a body that is not JSON: {body[:80]!r}"
                                 ) from None
    if not isinstance(answer, dict):
        raise GatewayUnreachable(f"HTTP {status} with JSON that is no object: {body[:80]!r}")
    error = answer.get("error")
    if isinstance(error, dict):  # a stream's error, inside a 200
        raise GatewayRefused(_int(error.get("grpc_code")), str(error.get("message", "")))
    if error is not None or status != 200:
        raise GatewayRefused(_int(answer.get("code")),
                             str(answer.get("message", error or f"HTTP {status}")))
    result = answer.get("result")
    if not isinstance(result, dict):
        raise GatewayUnreachable(f"HTTP {status} without a result: {body[:80]!r}")
    return result


def _int(value: object) -> int:
    """A gRPC status code from JSON; gRPC's UNKNOWN (2) when there is none."""
    if isinstance(value, int):
        return value
    return int(value) if isinstance(value, str) and value.isdigit() else 2
