"""A request to a shard of one node is its backend reply's own slot (proxy/slots.py
`DirectRead`, `DirectWrite`): the same answers as the slots it replaced, for hits, misses,
noreply, a node that is down, and a backend that answers out of step.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire
from tests.helpers.scripted_backend import scripted_backend

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def proxy() -> Iterator[servers.RunningServer]:
    with servers.proxy_over("memcached", shards=1) as proxy:
        yield proxy


def ask(sock: socket.socket, payload: bytes, end: bytes) -> bytes:
    sock.sendall(payload)
    return wire.read_until(sock, end, timeout=2.0)


def test_hits_misses_and_noreply_on_a_one_node_shard(proxy: servers.RunningServer) -> None:
    with wire.connect(proxy) as client:
        assert ask(client, b"set direct-a 5 0 2\r\nhi\r\n", b"\r\n") == b"STORED\r\n"
        assert ask(client, b"get direct-a\r\n", b"END\r\n") == \
            b"VALUE direct-a 5 2\r\nhi\r\nEND\r\n"
        assert ask(client, b"get direct-none\r\n", b"END\r\n") == b"END\r\n"
        # noreply writes answer nothing; the reply after them is the get's alone
        assert ask(client, b"set direct-b 0 0 1 noreply\r\nx\r\ndelete direct-a noreply\r\n"
                           b"get direct-a direct-b\r\n", b"END\r\n") == \
            b"VALUE direct-b 0 1\r\nx\r\nEND\r\n"
        # pipelined: in request order, whatever order the replies came in
        assert ask(client, b"get direct-b\r\nset direct-c 0 0 1\r\ny\r\nget direct-c\r\n"
                           b"delete direct-c\r\n", b"DELETED\r\n") == \
            b"VALUE direct-b 0 1\r\nx\r\nEND\r\nSTORED\r\nVALUE direct-c 0 1\r\ny\r\nEND\r\n" \
            b"DELETED\r\n"


@pytest.mark.parametrize("on_shard_error, get_answer", [("miss", b"END\r\n"),
                                                          ("error", b"SERVER_ERROR ")])
def test_a_one_node_shard_that_is_down(on_shard_error: str, get_answer: bytes) -> None:
    port = servers.free_port()  # nothing listens there
    gone = servers.RunningServer("gone", port, process=None)  # type: ignore[arg-type]
    with servers.proxy([[gone]], on_shard_error=on_shard_error) as proxy, \
            wire.connect(proxy) as client:
        assert ask(client, b"get a\r\n", b"\r\n").startswith(get_answer)
        reply = ask(client, b"set a 0 0 1\r\nx\r\n", b"\r\n")
        assert reply.startswith(b"SERVER_ERROR leader unavailable: "), reply
        assert ask(client, b"set a 0 0 1 noreply\r\nx\r\nmn\r\n", b"\r\n") == b"MN\r\n"


def rogue_backend(answer: bytes) -> contextlib.AbstractContextManager[
        tuple[servers.RunningServer, list[int]]]:
    """Every line but a set's data line (they start with "x" here) gets `answer`."""
    return scripted_backend(answer, lambda line: not line.startswith(b"x"))


def test_a_write_answered_out_of_step_closes_the_backend_connection() -> None:
    # a `set` answered by a value: the reply answers no write, so it is never delivered,
    # the write answers SERVER_ERROR and the connection it came on is closed (and made again)
    with rogue_backend(b"VALUE victim 0 6\r\nsecret\r\nEND\r\n") as (rogue, closed), \
            servers.proxy([[rogue]], on_shard_error="error", pool_size=1) as proxy, \
            wire.connect(proxy) as client:
        for _ in range(3):
            reply = ask(client, b"set a 0 0 1\r\nx\r\n", b"\r\n")
            assert reply.startswith(b"SERVER_ERROR "), reply
            assert b"secret" not in reply and b"victim" not in reply
        for _ in range(100):  # the rogue sees the close within its next rounds
            if closed:
                break
            time.sleep(0.02)
        assert closed  # the connection that erred was closed


def test_a_malformed_reply_to_a_get_answers_server_error() -> None:
    with rogue_backend(b"VALUE a 0 notanumber\r\n") as (rogue, _), \
            servers.proxy([[rogue]], on_shard_error="error", pool_size=1) as proxy, \
            wire.connect(proxy) as client:
        reply = ask(client, b"get a\r\n", b"\r\n")
        assert reply.startswith(b"SERVER_ERROR "), reply
