"""ReceiveBuffer: what the three parsers rely on, across its lazy compaction."""

import pytest

from memring.protocol.receive_buffer import ReceiveBuffer

pytestmark = pytest.mark.unit


def test_lines_and_blocks_survive_compaction() -> None:
    buf = ReceiveBuffer()
    expected = []
    for i in range(5000):  # well past the 64 KiB compaction point, several times
        line = b"set key%d 0 0 3" % i
        buf += line + b"\r\nabc\r\n"
        expected.append(line)
        if i % 3 == 0:  # consume only sometimes: the buffer holds a backlog when compacting
            while (got := buf.take_line()) is not None:
                assert got == expected.pop(0) + b"\r"
                assert buf.take_block(3) == (b"abc", True)
    while (got := buf.take_line()) is not None:
        assert got == expected.pop(0) + b"\r"
        assert buf.take_block(3) == (b"abc", True)
    assert not expected
    assert len(buf) == 0


def test_partial_block_is_not_consumed() -> None:
    buf = ReceiveBuffer()
    buf += b"hello\r"
    assert buf.take_block(5) is None
    assert buf.take(7) is None
    assert len(buf) == 6
    buf += b"Xrest"
    assert buf.take_block(5) == (b"hello", False)  # the tail is consumed and reported
    assert buf.peek(10) == b"rest"
    assert buf.skip(10) == 4
    assert len(buf) == 0 and buf.take_line() is None


def test_a_rest_spans_into_the_next_reads_and_whole_reads_come_back() -> None:
    # A read consumed whole is kept as it came; a rest left unread moves on with the next
    # read; once everything is consumed again, the next read is kept as it came again.
    buf = ReceiveBuffer()
    buf += b"get a\r\nget b"
    assert buf.take_line() == b"get a\r"
    assert buf.take_line() is None and len(buf) == 5
    buf += b"\r\nset c 0 0 2\r\nx"
    assert buf.take_line() == b"get b\r"
    assert buf.take_line() == b"set c 0 0 2\r"
    assert buf.take_block(2) is None and buf.peek(9) == b"x"
    buf += b"y\r\n"
    assert buf.take_block(2) == (b"xy", True)
    assert len(buf) == 0
    buf += b"get d\r\n"
    assert buf.startswith(b"d", 4) and buf.line_length() == 7
    assert buf.take(3) == b"get" and buf.skip(1) == 1
    assert buf.take_line() == b"d\r" and len(buf) == 0
    buf += b"get e"
    buf.clear()
    assert len(buf) == 0 and buf.take_line() is None
    buf += b"get f\r\n"
    assert buf.take_line() == b"get f\r"

