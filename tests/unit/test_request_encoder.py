"""encode_request is the parser's inverse, less noreply and q."""

from __future__ import annotations

import pytest

from memring.protocol import NEED_DATA, RequestParser
from memring.protocol.request_encoder import encode_request

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("sent", "forwarded"), [
    (b"get a b\r\n", b"get a b\r\n"),
    (b"gats 10 a\r\n", b"gats 10 a\r\n"),
    (b"set k 5 100 3 noreply\r\nabc\r\n", b"set k 5 100 3\r\nabc\r\n"),
    (b"cas k 0 0 1 77\r\nx\r\n", b"cas k 0 0 1 77\r\nx\r\n"),
    (b"append k 0 0 1\r\nx\r\n", b"append k 0 0 1\r\nx\r\n"),
    (b"delete k noreply\r\n", b"delete k\r\n"),
    (b"incr k 5\r\n", b"incr k 5\r\n"),
    (b"touch k 10 noreply\r\n", b"touch k 10\r\n"),
    (b"flush_all 5\r\n", b"flush_all 5\r\n"),
    (b"mg k v q Oabc k\r\n", b"mg k v Oabc k\r\n"),
    (b"mg a2V5 b v\r\n", b"mg a2V5 b v\r\n"),
    (b"ms k 2 T10 q\r\nhi\r\n", b"ms k 2 T10\r\nhi\r\n"),
    (b"md k q\r\n", b"md k\r\n"),
    (b"ma k N0 J5 v\r\n", b"ma k N0 J5 v\r\n"),
    (b"me k\r\n", b"me k\r\n"),
    (b"mn\r\n", b"mn\r\n"),
])
def test_round_trip(sent: bytes, forwarded: bytes) -> None:
    parser = RequestParser()
    parser.receive_data(sent)
    event = parser.next_event()
    assert event is not NEED_DATA
    assert encode_request(event) == forwarded  # type: ignore[arg-type]
    parser.receive_data(forwarded)
    assert parser.next_event() == event or b"noreply" in sent or b" q" in sent
