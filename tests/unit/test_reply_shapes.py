"""Reply shapes: what answers a forwarded request, and what means the stream is out of step."""

import pytest

from memring.protocol import NEED_DATA, ResponseParser
from memring.protocol.reply_shapes import reply_shape
from memring.protocol.responses import Response

pytestmark = pytest.mark.unit


def events(data: bytes) -> list[Response]:
    parser = ResponseParser()
    parser.receive_data(data)
    found = []
    while (event := parser.next_event()) is not NEED_DATA:
        found.append(event)
    return found


@pytest.mark.parametrize(("request_", "reply"), [
    (b"get a b\r\n", b"VALUE b 0 1\r\nx\r\nEND\r\n"),
    (b"gat 10 a\r\n", b"VALUE a 0 1\r\nx\r\nEND\r\n"),
    (b"gets " + b" ".join(b"k%d" % i for i in range(20)) + b"\r\n",
     b"VALUE k17 0 1 5\r\nx\r\nEND\r\n"),
    (b"get a\r\n", b"SERVER_ERROR out of memory\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"NOT_STORED\r\n"),
    (b"delete noreply\r\n", b"NOT_FOUND\r\n"),
    (b"incr k 1\r\n", b"42\r\n"),
    (b"touch k 1\r\n", b"TOUCHED\r\n"),
    (b"flush_all\r\n", b"OK\r\n"),
    (b"mg k v\r\n", b"VA 1\r\nx\r\n"),
    (b"mg k\r\n", b"EN\r\n"),
    (b"ms k 1\r\nx\r\n", b"HD\r\n"),
    (b"md k\r\n", b"NF\r\n"),
    (b"ma k v\r\n", b"VA 1\r\n2\r\n"),
    (b"mn\r\n", b"MN\r\n"),
    (b"version\r\n", b"VERSION 1.6.18\r\n"),
])
def test_replies_that_answer(request_: bytes, reply: bytes) -> None:
    shape = reply_shape(request_)
    assert all(shape.accepts(event) for event in events(reply))


@pytest.mark.parametrize(("request_", "reply"), [
    (b"get a\r\n", b"VALUE victim 0 6\r\nsecret\r\nEND\r\n"),  # another request's value
    (b"get a\r\n", b"STORED\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"END\r\n"),
    (b"set k 0 0 1\r\nx\r\n", b"DELETED\r\n"),
    (b"delete k\r\n", b"STORED\r\n"),
    (b"mg k v\r\n", b"VALUE k 0 1\r\nx\r\n"),
    (b"mg k\r\n", b"NF\r\n"),
    (b"md k\r\n", b"EN\r\n"),
    (b"mn\r\n", b"EN\r\n"),
    (b"incr k 1\r\n", b"STORED\r\n"),
])
def test_replies_out_of_step(request_: bytes, reply: bytes) -> None:
    shape = reply_shape(request_)
    assert not all(shape.accepts(event) for event in events(reply))
