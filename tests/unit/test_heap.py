"""netio.heap: a closed connection's buffers are freed at once, and the heap is trimmed once
after a burst of closes that released enough, never per close."""

from __future__ import annotations

import gc

import pytest
import trio
import trio.testing

from memring.netio import heap
from memring.protocol.request_parser import NEED_DATA, RequestParser

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("pending", [b"get " + b"k" * 100_000, b"set k 0 0 9\r\nabc"])
def test_a_parser_is_freed_without_the_gc(pending: bytes) -> None:
    """A closed connection's parser (and its buffer: a half-sent line, a data block on its
    way) is freed by reference counting alone: no cycle holds it for the cyclic GC."""
    gc.collect()
    gc.disable()  # from here only reference counting frees
    try:
        parser = RequestParser()
        parser.receive_data(pending)
        assert parser.next_event() is NEED_DATA
        del parser
    finally:
        gc.enable()
    # Counted, not weakly referenced: a parser compiled with mypyc (`make compiled`) takes no
    # weak references. A cycle would leave the parser and its buffer for the collector.
    assert gc.collect() == 0


async def test_one_trim_per_burst(autojump_clock: trio.testing.MockClock) -> None:
    trims: list[int] = []
    trim = heap.HeapTrim(lambda pad: trims.append(pad) or 1)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for _ in range(200):  # 200 connections that each held 1 MiB close together
                if trim.connection_closed(1 << 20):
                    nursery.start_soon(trim.trim_soon)
        assert trims == [0] and trim.released == 0
        for _ in range(heap.TRIM_THRESHOLD // heap.CONNECTION_COST - 1):  # idle ones: too few
            assert not trim.connection_closed(0)
        assert trims == [0]
