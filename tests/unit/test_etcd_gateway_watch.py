"""The gateway watch's messages and bounds (cluster.etcd_gateway_watch): etcd 3.4.23's answers
as captured from /usr/bin/etcd decoded, shapes etcd would not send refused, and a peer that
refuses, ends the answer or sends an oversized message closing the watch with an error."""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Mapping

import pytest
import trio

from memring.cluster.etcd_gateway import GatewayRefused, GatewayUnreachable
from memring.cluster.etcd_gateway_watch import (
    GatewayWatch,
    create_request,
    decode_message,
)
from memring.cluster.keyspace import Entry, KeyEvent, WatchBatch

pytestmark = pytest.mark.unit

HEADER = {"cluster_id": "15118495548433857066", "member_id": "13668033151171901709",
          "raft_term": "2"}
# captured from etcd 3.4.23's gateway (`POST /v3/watch`): a PUT leaves out its type
CREATED = {"header": {**HEADER, "revision": "2"}, "created": True}
PUT = {"header": {**HEADER, "revision": "3"}, "events": [{"kv": {
    "key": "L21lbS9i", "create_revision": "3", "mod_revision": "3", "version": "1",
    "value": "dmFs", "lease": "7587899365077002757"}}]}
DELETE = {"header": {**HEADER, "revision": "4"}, "events": [{"type": "DELETE", "kv": {
    "key": "L21lbS9h", "mod_revision": "4"}}]}
COMPACTED = {"header": HEADER, "canceled": True, "compact_revision": "4"}
REFUSED = {"header": {**HEADER, "revision": "4"}, "watch_id": "-1", "created": True,
           "canceled": True, "cancel_reason": "rpc error: code = PermissionDenied desc = "
           "etcdserver: permission denied"}


def test_etcds_answers_decode() -> None:
    created = decode_message(CREATED)
    assert created.created and not created.canceled and created.batch is None
    assert decode_message(PUT).batch == WatchBatch(3, (KeyEvent("put", Entry(
        "/mem/b", b"val", 3, 3, 1, 7587899365077002757)),))
    assert decode_message(DELETE).batch == WatchBatch(4, (KeyEvent("delete", Entry(
        "/mem/a", b"", 0, 4, 0, 0)),))
    compacted = decode_message(COMPACTED)
    assert compacted.canceled and compacted.compact_revision == 4
    refused = decode_message(REFUSED)
    assert refused.created and refused.canceled and "permission denied" in refused.cancel_reason
    assert create_request("/mem/", 7) == {"create_request": {
        "key": "L21lbS8=", "range_end": "L21lbTA=", "start_revision": "7"}}


@pytest.mark.parametrize("result", [
    {"events": [{"kv": {"key": "not base64!"}}]},
    {"events": [{"type": "EXPIRE", "kv": {"key": "L21lbS9h"}}]},
    {"events": [{}]},
    {"header": {"revision": "x"}},
    {"events": "nope"},
])
def test_shapes_etcd_would_not_send_are_unreachable(result: dict[str, object]) -> None:
    with pytest.raises(GatewayUnreachable, match="would not send"):
        decode_message(result)


def _chunk(message: Mapping[str, object]) -> bytes:
    line = json.dumps({"result": message}).encode() + b"\n"
    return b"%x\r\n%s\r\n" % (len(line), line)


STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


async def _against(answer: Callable[[trio.SocketStream], Awaitable[None]],
                   check: Callable[[GatewayWatch], Awaitable[None]],
                   max_message: int = 4096) -> None:
    async def serve(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)  # the create request
        await answer(stream)
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            [listener] = await nursery.start(
                functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
            watch = GatewayWatch(f"127.0.0.1:{listener.socket.getsockname()[1]}",
                                 max_message=max_message)
            try:
                await check(watch)
            finally:
                await watch.aclose()
            nursery.cancel_scope.cancel()


async def test_messages_arrive_split_anyhow_then_an_oversized_one_ends_the_watch() -> None:
    async def answer(stream: trio.SocketStream) -> None:
        data = STREAM_HEAD + _chunk(CREATED) + _chunk(PUT) + _chunk(DELETE)
        for i in range(0, len(data), 7):  # 7 bytes at a time
            await stream.send_all(data[i:i + 7])
        for _ in range(3):  # small chunks, no newline in 4.5 KiB: one message too long
            await stream.send_all(b"600\r\n" + b" " * 0x600 + b"\r\n")

    async def check(watch: GatewayWatch) -> None:
        assert await watch.start(create_request("/mem/", 1)) == CREATED
        assert await watch.next_result() == PUT
        assert await watch.next_result() == DELETE
        with pytest.raises(GatewayUnreachable, match="longer than 4096"):
            await watch.next_result()

    await _against(answer, check)


async def test_a_refusal_and_an_ended_answer_are_errors() -> None:
    async def refuse(stream: trio.SocketStream) -> None:
        body = (b"CommonName of client sending a request against gateway will be ignored "
                b"and not used as expected")
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s"
                              % (len(body), body))

    async def refused(watch: GatewayWatch) -> None:
        with pytest.raises(GatewayRefused, match="CommonName of client"):
            await watch.start(create_request("/mem/", 1))

    await _against(refuse, refused)

    async def end(stream: trio.SocketStream) -> None:
        await stream.send_all(STREAM_HEAD + _chunk(CREATED) + b"0\r\n\r\n")

    async def ended(watch: GatewayWatch) -> None:
        assert (await watch.start(create_request("/mem/", 1)))["created"]
        with pytest.raises(GatewayUnreachable, match="ended the watch"):
            await watch.next_result()

    await _against(end, ended)
