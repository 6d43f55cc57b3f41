"""A watch through etcd's JSON gateway, on a connection of its own, read by a trio task.

Theory of operation. etcd 3.4 serves its Watch stream on the client port's gateway as `POST
/v3/watch` (checked against /usr/bin/etcd 3.4.23): the request's body is the create request
(`{"create_request": {"key", "range_end", "start_revision"}}`, bytes as base64, int64 as
strings); the answer is a chunked body that never ends, one JSON message a line, each
`{"result": <WatchResponse>}`: first `created`, then one per batch of events (a PUT leaves out
its type, a DELETE says "DELETE"; fields at zero are left out), a compacted start revision as
`canceled` with `compact_revision` (after `created`), a refused creation as created and
`canceled` at once with a `cancel_reason` ("... permission denied", "... invalid auth token",
"... user name is empty", each etcd's gRPC error in words), an error of the stream as
`{"error": {"grpc_code", "message"}}`; the token goes as the `Authorization` header. etcd
answers the POST for as long as the watch lives, so a watch holds its connection, and closing
the connection ends the watch at etcd. `GatewayWatch` is that connection; the coordinator
(cluster.etcd_coordinator) maps its messages and errors to a WatchStream's, as it does the
gRPC watch's. Reading it costs the trio thread a wake-up per message and nothing while the
cluster is idle; through gRPC a watch held a reader thread, and the open stream kept grpcio's
channel thread (0.2 s slices) and event engine awake (docs/scaling.md, "round four").
Bounded: http1's bounds for the answer's head, MAX_MESSAGE for one message (gRPC's default
receive limit) and for the bytes received and not yet read.
"""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass
from typing import Any

import trio

from memring.cluster.etcd_gateway import (
    RECEIVE_SIZE,
    STREAM_ERRORS,
    GatewayUnreachable,
    open_stream,
    result_of,
    unreachable,
)
from memring.cluster.http1 import ResponseReader, encode_request
from memring.cluster.keyspace import Entry, KeyEvent, WatchBatch, prefix_end

WATCH_PATH = "/v3/watch"
MAX_MESSAGE = 4 * 1024 * 1024  # one watch response at most, as gRPC's default receive limit


@dataclass(frozen=True)
class WatchMessage:
    """One of the watch's answers, decoded."""

    created: bool
    canceled: bool
    cancel_reason: str
    compact_revision: int
    batch: WatchBatch | None  # its events, if it has any


def create_request(prefix: str, from_revision: int) -> dict[str, Any]:
    """The create request of a watch on every key under `prefix` from `from_revision`."""
    raw = prefix.encode()
    return {"create_request": {"key": _b64(raw), "range_end": _b64(prefix_end(raw)),
                               "start_revision": str(from_revision)}}


def decode_message(result: dict[str, Any]) -> WatchMessage:
    """A gateway watch answer's "result" -> WatchMessage. GatewayUnreachable if it is not
    the shape etcd sends."""
    try:
        events = tuple(_event(event) for event in result.get("events") or ())
        revision = int(result.get("header", {}).get("revision", 0))
        return WatchMessage(bool(result.get("created")), bool(result.get("canceled")),
                            str(result.get("cancel_reason", "")),
                            int(result.get("compact_revision", 0)),
                            WatchBatch(revision, events) if events else None)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        raise GatewayUnreachable(f"a watch answer etcd would not send ({exc}): "
                                 f"{json.dumps(result)[:80]}") from None


def _event(event: dict[str, Any]) -> KeyEvent:
    kv = event["kv"]
    entry = Entry(base64.b64decode(kv["key"], validate=True).decode(),
                  base64.b64decode(kv.get("value", ""), validate=True),
                  int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)),
                  int(kv.get("version", 0)), int(kv.get("lease", 0)))
    kind = event.get("type", "PUT")
    if kind not in ("PUT", "DELETE"):
        raise ValueError(f"event type {kind!r}")
    return KeyEvent("put" if kind == "PUT" else "delete", entry)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class GatewayWatch:
    """One watch on its own connection to etcd member `endpoint` (HOST:PORT): `start()`,
    then `next_result()` until it raises; `aclose()` ends it."""

    def __init__(self, endpoint: str, tls: ssl.SSLContext | None = None, *,
                 max_message: int = MAX_MESSAGE) -> None:
        self.endpoint = endpoint
        self.host, _, port = endpoint.rpartition(":")
        self.port = int(port)
        self.tls = tls
        self.max_message = max_message
        self._stream: trio.abc.Stream | None = None
        self._reader = ResponseReader(max_body=max_message)
        self._pending = bytearray()  # of the body: what follows the last whole message
        self._ended = False  # the answer's body ended: `_pending` is all there is

    async def start(self, request: dict[str, Any], token: str = "") -> dict[str, Any]:
        """Connect, send the create `request`, and return the first answer's "result".
        Raises GatewayRefused (etcd's error answer) or GatewayUnreachable."""
        headers = [("Content-Type", "application/json")]
        if token:
            headers.append(("Authorization", token))
        data = encode_request("POST", WATCH_PATH, self.endpoint,
                              json.dumps(request).encode(), headers=headers)
        try:
            self._stream = await open_stream(self.host, self.port, self.tls)
            await self._stream.send_all(data)
        except STREAM_ERRORS as exc:
            await self.aclose()
            raise unreachable(exc) from None
        return await self.next_result()

    async def next_result(self) -> dict[str, Any]:
        """The next answer's "result", waiting for it. Raises GatewayRefused for an error
        etcd sent, GatewayUnreachable when the connection failed or ended (and closes it)."""
        try:
            while True:
                end = self._pending.find(b"\n")
                if end != -1:
                    line = bytes(self._pending[:end])
                    del self._pending[:end + 1]
                    if line.strip():
                        return result_of(200, line)
                    continue
                if len(self._pending) > self.max_message:
                    raise GatewayUnreachable(
                        f"a watch answer longer than {self.max_message} bytes")
                if self._ended:
                    raise GatewayUnreachable("etcd ended the watch's answer")
                await self._receive()
        except GatewayUnreachable:
            await self.aclose()
            raise

    async def _receive(self) -> None:
        """Read once more; the body's new bytes go to `_pending`. A whole response means
        that the watch ended: etcd's refusal (GatewayRefused) or GatewayUnreachable."""
        if self._stream is None:
            raise GatewayUnreachable("the watch is closed")
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
            self._reader.receive_data(bytes(data))
            response = self._reader.next_response()
        except STREAM_ERRORS as exc:
            raise unreachable(exc) from None
        if response is not None:
            if response.status != 200:
                result_of(response.status, response.body)  # raises etcd's refusal
            self._pending += response.body  # its last messages are read first
            self._ended = True
            return
        partial = self._reader.take_partial_body()
        if partial is not None:
            status, body = partial
            if status != 200:  # (etcd refuses with a whole answer, not a stream)
                raise GatewayUnreachable(f"HTTP {status} streamed to a watch")
            self._pending += body

    async def aclose(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None:
            await trio.aclose_forcefully(stream)
