from __future__ import annotations

import pytest

from memring.protocol import NEED_DATA, ResponseError, ResponseParser
from memring.protocol.responses import (
    End,
    ErrorReply,
    Line,
    MetaReply,
    Number,
    Response,
    Stat,
    Status,
    Value,
    VersionReply,
)

pytestmark = pytest.mark.unit

STREAM = (b"VALUE a 5 3\r\nabc\r\nVALUE b 0 2 77\r\n\r\n\r\nEND\r\nSTORED\r\nNOT_FOUND\r\n"
          b"12\r\nVERSION 1.6.18\r\nSTAT pid 1\r\nEND\r\nERROR\r\n"
          b"CLIENT_ERROR bad data chunk\r\nSERVER_ERROR out of memory\r\n"
          b"VA 2 t-1 Oq\r\nhi\r\nHD c5 kfoo\r\nEN\r\nMN\r\n"
          b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n")
EVENTS: list[Response] = [
    Value(b"a", 5, b"abc"), Value(b"b", 0, b"\r\n", 77), End(), Status(b"STORED"),
    Status(b"NOT_FOUND"), Number(12), VersionReply(b"1.6.18"), Stat(b"pid", b"1"), End(),
    ErrorReply(b"ERROR"), ErrorReply(b"CLIENT_ERROR", b"bad data chunk"),
    ErrorReply(b"SERVER_ERROR", b"out of memory"), MetaReply(b"VA", [b"t-1", b"Oq"], b"hi"),
    MetaReply(b"HD", [b"c5", b"kfoo"]), MetaReply(b"EN"), MetaReply(b"MN"),
    Line(b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m"),
]


def parse(data: bytes, step: int) -> list[object]:
    parser = ResponseParser()
    out: list[object] = []
    for i in range(0, len(data), step):
        parser.receive_data(data[i:i + step])
        while (event := parser.next_event()) is not NEED_DATA:
            out.append(event)
    return out


@pytest.mark.parametrize("step", [1, 2, 5, len(STREAM)])
def test_stream_parses_in_any_split(step: int) -> None:
    assert parse(STREAM, step) == EVENTS


def test_events_encode_back_to_the_same_bytes() -> None:
    assert b"".join(e.encode() for e in EVENTS) == STREAM


@pytest.mark.parametrize("step", [1, 3, len(STREAM)])
def test_parsed_data_blocks_keep_their_wire_bytes(step: int) -> None:
    """What the proxy forwards is each block as the backend sent it, whatever the reads."""
    blocks = [e.wire for e in parse(STREAM, step)
              if type(e) is Value or (type(e) is MetaReply and e.value is not None)]
    assert blocks == [b"VALUE a 5 3\r\nabc\r\n", b"VALUE b 0 2 77\r\n\r\n\r\n",
                      b"VA 2 t-1 Oq\r\nhi\r\n"]
    value = parse(b"VALUE k 0 2\nab\r\n", 1)[0]
    assert value == Value(b"k", 0, b"ab") and value.wire == b"VALUE k 0 2\r\nab\r\n"


@pytest.mark.parametrize("data", [b"VALUE a x 3\r\n", b"VALUE a 0 1\r\nxyz\r\n", b"\r\n",
                                  b"VALUE a 0 3 x\r\n", b"VALUE a 0\r\n", b"VALUE a 0 3 1 1\r\n",
                                  b"VALUE a 0 3\r\nabcXY"])
def test_garbage_is_a_response_error(data: bytes) -> None:
    with pytest.raises(ResponseError):
        parse(data, len(data))


def test_line_and_value_bounds() -> None:
    parser = ResponseParser(max_line=100, max_value=10)
    parser.receive_data(b"x" * 200)
    with pytest.raises(ResponseError):
        parser.next_event()
    parser = ResponseParser(max_line=100, max_value=10)
    parser.receive_data(b"VALUE k 0 11\r\n")
    with pytest.raises(ResponseError):
        parser.next_event()
