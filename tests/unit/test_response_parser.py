from __future__ import annotations

import pytest

from memring.protocol import NEED_DATA, ResponseError, ResponseParser
from memring.protocol.response_parser import RUN_WINDOW
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
    Values,
    VersionReply,
    in_key_order,
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


def parse_raw(data: bytes, step: int) -> list[Response]:
    parser = ResponseParser()
    out: list[Response] = []
    for i in range(0, len(data), step):
        parser.receive_data(data[i:i + step])
        while (event := parser.next_event()) is not NEED_DATA:
            out.append(event)
    return out


def parse(data: bytes, step: int) -> list[Response]:
    """The events, each run of VALUE blocks as its `Value`s (how the reads cut the runs
    depends on the split)."""
    out: list[Response] = []
    for event in parse_raw(data, step):
        out.extend(event.values() if type(event) is Values else [event])
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
    assert parse_raw(b"VALUE k 0 2\nab\r\n", 1)[0].encode() == b"VALUE k 0 2\r\nab\r\n"


@pytest.mark.parametrize("data", [b"VALUE a x 3\r\n", b"VALUE a 0 1\r\nxyz\r\n", b"\r\n",
                                  b"VALUE a 0 3 x\r\n", b"VALUE a 0\r\n", b"VALUE a 0 3 1 1\r\n",
                                  b"VALUE a 0 3\r\nabcXY",
                                  # a good block, then a garbled or short one
                                  b"VALUE a 0 1\r\nx\r\nVALUE b 0 1\r\nxyz\r\n",
                                  b"VALUE a 0 1\r\nx\r\nVALUE b 0\r\nx\r\nEND\r\n"])
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


# A get's reply whose data holds what a line-scanning parser would take for a boundary:
# only the VALUE lines' lengths decide where a block ends.
TRICKY = [(b"a", b"END\r\n"), (b"b", b"VALUE c 0 3\r\nxyz\r\nEND\r\n"), (b"c", b""),
          (b"d", b"\r\nEND\r\nVALUE ")]
TRICKY_BLOCKS = [b"VALUE %s 7 %d 42\r\n%s\r\n" % (key, len(data), data) for key, data in TRICKY]
TRICKY_REPLY = b"".join(TRICKY_BLOCKS) + b"END\r\n"


@pytest.mark.parametrize("cut", range(len(TRICKY_REPLY) + 1))
def test_values_run_split_at_every_byte(cut: int) -> None:
    """Two reads cut anywhere: runs of whole blocks (one copy of each block), then END."""
    parser = ResponseParser()
    events: list[Response] = []
    for piece in (TRICKY_REPLY[:cut], TRICKY_REPLY[cut:]):
        parser.receive_data(piece)
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)
    assert events[-1] == End()
    runs = events[:-1]
    assert runs and all(type(run) is Values for run in runs)
    assert len(runs) <= 2  # the blocks whole before the cut, then the rest
    assert [key for run in runs for key in run.keys] == [key for key, _ in TRICKY]
    blocks = [run.block(i) for run in runs for i in range(len(run.keys))]
    assert blocks == TRICKY_BLOCKS
    assert b"".join(run.encode() for run in runs) + b"END\r\n" == TRICKY_REPLY
    assert [(v.key, v.flags, v.value, v.cas) for run in runs for v in run.values()] == \
        [(key, 7, data, 42) for key, data in TRICKY]


def test_values_in_one_read_are_one_run() -> None:
    run, end = parse_raw(TRICKY_REPLY, len(TRICKY_REPLY))
    assert end == End() and run.encode() == b"".join(TRICKY_BLOCKS)
    assert run.keys == [b"a", b"b", b"c", b"d"]


def test_a_short_block_waits_and_a_long_one_fails() -> None:
    parser = ResponseParser()
    parser.receive_data(b"VALUE a 0 5\r\nabc")
    assert parser.next_event() is NEED_DATA
    parser.receive_data(b"de\r\nEND\r\n")
    assert parser.next_event() == Values([b"a"], [20], b"VALUE a 0 5\r\nabcde\r\n")
    assert parser.next_event() == End()
    parser = ResponseParser()
    parser.receive_data(b"VALUE a 0 1\r\nx\r\nVALUE b 0 2\r\nabcd\r\nEND\r\n")
    with pytest.raises(ResponseError):
        parser.next_event()


def run_of(*blocks: tuple[bytes, bytes]) -> Values:
    wire = b""
    ends = []
    for key, data in blocks:
        wire += b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(data), data)
        ends.append(len(wire))
    return Values([key for key, _ in blocks], ends, wire)


def test_runs_interleaved_in_the_clients_key_order() -> None:
    one = run_of((b"k1", b"a"), (b"k2", b"bb"), (b"k5", b"END\r\n"))
    two = run_of((b"k3", b"VALUE k4 0 1\r\nx"), (b"k6", b""))
    keys = [b"k1", b"k2", b"k3", b"k4", b"k5", b"k6", b"k7"]  # k4, k7: misses
    pieces = in_key_order(keys, [one, two])
    assert pieces is not None
    assert b"".join(pieces) == b"".join(run.block(i) for run, i in
                                        [(one, 0), (one, 1), (two, 0), (one, 2), (two, 1)])
    assert len(pieces) == 4  # k1 and k2 are one stretch of the first run
    assert in_key_order(keys, [one]) == [one.wire]  # whole: the run itself
    assert in_key_order(keys, []) == []


@pytest.mark.parametrize("keys", [[b"k2", b"k1", b"k5"], [b"k1", b"k5"], [b"k1", b"k2"]])
def test_a_run_out_of_key_order_is_not_interleaved(keys: list[bytes]) -> None:
    """A block the walk cannot place (out of order, not asked): None, the caller sorts by
    key instead."""
    assert in_key_order(keys, [run_of((b"k1", b"a"), (b"k2", b"b"), (b"k5", b"c"))]) is None


def test_a_run_longer_than_the_window_comes_in_pieces() -> None:
    """A read of many values is taken RUN_WINDOW bytes at a time (a read may hold many
    clients' replies: no call copies all of it), every block whole and in order."""
    blocks = [b"VALUE k%d 0 1000\r\n%s\r\n" % (i, b"%04d" % i * 250) for i in range(30)]
    events = parse_raw(b"".join(blocks) + b"END\r\n", 1 << 20)
    runs = events[:-1]
    assert events[-1] == End() and len(runs) > 2
    assert all(len(run.wire) <= RUN_WINDOW + len(blocks[0]) for run in runs)
    assert [run.block(i) for run in runs for i in range(len(run.keys))] == blocks
