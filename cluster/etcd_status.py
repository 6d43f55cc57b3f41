"""One etcd member's maintenance Status through its JSON gateway, on a trio socket.

Theory of operation. The search for the member that leads etcd and answers
(cluster.etcd_leader) asks every member's Status at once, and it runs when etcd's leader froze,
in every process whose call went unanswered at the same moment. Over gRPC each ask crossed a
worker thread and, in a process idle until then, opened a channel first (its event engine and
timer threads start with it: the channels of an idle process are closed,
cluster.etcd_coordinator GRPC_IDLE_CLOSE). Here an ask is one POST of `{}` to
`/v3/maintenance/status` on a connection of its own, closed after the answer or at the
timeout: no thread, no channel. The answer is a whole JSON object (uint64 fields are JSON
strings), not a stream's "result"; anything but a 200 with the three fields is no answer,
except the refusal of a client certificate with a common name (etcd_gateway.CN_REFUSED), which
is GatewayRefused: the caller asks over gRPC from then on, as the keepalives do.
"""

from __future__ import annotations

import json
import ssl

import trio

from memring.cluster.etcd_gateway import (
    CN_REFUSED,
    RECEIVE_SIZE,
    STREAM_ERRORS,
    GatewayRefused,
    open_stream,
)
from memring.cluster.http1 import ResponseReader, encode_request

STATUS_PATH = "/v3/maintenance/status"

Status = tuple[int, int, int]  # (member id, the leader it names, raft term)


async def gateway_status(endpoint: str, tls: ssl.SSLContext | None, token: str,
                         timeout: float) -> Status | None:
    """Member `endpoint`'s (member id, leader it names, raft term); None if it did not
    answer so within `timeout`. GatewayRefused if its gateway refuses our certificate."""
    host, _, port = endpoint.rpartition(":")
    headers = [("Content-Type", "application/json")]
    if token:
        headers.append(("Authorization", token))
    request = encode_request("POST", STATUS_PATH, endpoint, b"{}", headers=headers)
    with trio.move_on_after(timeout):
        try:
            stream = await open_stream(host, int(port), tls)
        except STREAM_ERRORS:
            return None
        try:
            await stream.send_all(request)
            reader = ResponseReader()
            while (response := reader.next_response()) is None:
                reader.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
        except STREAM_ERRORS:
            return None
        finally:
            await trio.aclose_forcefully(stream)
        if response.status != 200:
            if CN_REFUSED.encode() in response.body:
                raise GatewayRefused(response.status, CN_REFUSED)
            return None
        try:
            answer = json.loads(response.body)
            return (int(answer["header"]["member_id"]), int(answer["leader"]),
                    int(answer["raftTerm"]))
        except (ValueError, KeyError, TypeError):
            return None
    return None
