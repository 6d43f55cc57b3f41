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
