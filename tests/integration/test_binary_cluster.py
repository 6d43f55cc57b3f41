"""The binary protocol on a replicated shard (real etcd, sync replication): binary writes
replicate as text ones do (value, flags and CAS on the follower once acknowledged), and a
follower refuses them with status 0x86 and the write fence's reason, applying nothing."""

from __future__ import annotations

import contextlib
import socket

import pytest

from memring.cluster.etcd_process import EtcdProcess
from memring.protocol.binary_frames import (
    BinaryRequest,
    BinaryResponse,
    Opcode,
    Status,
    arithmetic_extras,
    encode_request,
    expiration_extras,
    storage_extras,
)
from memring.protocol.binary_parser import BinaryResponseParser
from memring.protocol.write_refusals import NOT_LEADER
from tests.helpers import wire
from tests.helpers.cluster import SHARD, ReplicatedShard, node_id, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

NOOP = encode_request(BinaryRequest(Opcode.NOOP, opaque=0xE0F))


def converse(sock: socket.socket, *requests: BinaryRequest) -> list[BinaryResponse]:
    """Send `requests` and a NOOP; the replies before the NOOP's."""
    sock.sendall(b"".join(map(encode_request, requests)) + NOOP)
    parser = BinaryResponseParser()
    replies: list[BinaryResponse] = []
    for _ in range(1000):  # bounded: each round reads at least one byte or fails
        data = sock.recv(1 << 16)
        assert data, "closed"
        parser.receive_data(data)
        for reply in parser:
            if reply.opaque == 0xE0F and reply.opcode == Opcode.NOOP:
                return replies
            replies.append(reply)
    raise AssertionError("no NOOP reply")


def test_binary_writes_replicate_and_followers_refuse_them(etcd: EtcdProcess) -> None:
    with contextlib.ExitStack() as stack:
        shard = ReplicatedShard(etcd, stack, "binary1", {})
        shard.mode = "sync"
        shard.start()
        shard.start()
        leader = shard.leader()
        [follower] = [n for n in shard.live() if n is not leader]
        everyone = {node_id(leader), node_id(follower)}
        wait_for(lambda: set(wire.stats(leader).get("memring_repl_isr", "").split(","))
                 == everyone, 10.0, "the follower in the ISR")
        with wire.connect(leader) as writer, wire.connect(follower) as reader:
            written = converse(
                writer,
                BinaryRequest(Opcode.SET, b"k", storage_extras(7, 0), b"v"),
                BinaryRequest(Opcode.APPENDQ, b"k", value=b"w"),
                BinaryRequest(Opcode.INCREMENT, b"n", arithmetic_extras(1, 41, 0)),
                BinaryRequest(Opcode.INCREMENTQ, b"n", arithmetic_extras(1, 0, 0)),
                BinaryRequest(Opcode.SET, b"gone", storage_extras(0, 0), b"x"),
                BinaryRequest(Opcode.DELETEQ, b"gone"),
                BinaryRequest(Opcode.TOUCH, b"k", expiration_extras(1000)),
                BinaryRequest(Opcode.GETK, b"k"), BinaryRequest(Opcode.GETK, b"n"))
            # set, incr, set, touch, getk, getk (the quiet ones succeed silently)
            assert [r.status for r in written] == [Status.SUCCESS] * 6
            on_leader = written[-2:]
            # right after the acknowledgements, the follower holds the same items
            on_follower = converse(reader, BinaryRequest(Opcode.GETK, b"k"),
                                   BinaryRequest(Opcode.GETK, b"n"),
                                   BinaryRequest(Opcode.GETK, b"gone"))
            assert on_follower[:2] == on_leader
            assert (on_follower[0].value, on_follower[1].value) == (b"vw", b"42")  # created at 41, then +1
            assert on_follower[2].status == Status.KEY_ENOENT

            refused = converse(reader, BinaryRequest(Opcode.SET, b"k", storage_extras(0, 0),
                                                     b"new"),
                               BinaryRequest(Opcode.DELETEQ, b"k", opaque=5),
                               BinaryRequest(Opcode.GET, b"k"))
            reason = NOT_LEADER + b" " + SHARD.encode()
            assert [(r.opcode, r.status, r.value, r.opaque) for r in refused[:2]] == [
                (Opcode.SET, Status.TEMPORARY_FAILURE, reason, 0),
                (Opcode.DELETEQ, Status.TEMPORARY_FAILURE, reason, 5)]  # quiet hides no error
            assert refused[2].value == b"vw"  # nothing applied
