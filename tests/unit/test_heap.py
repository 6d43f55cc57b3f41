"""netio.heap: a closed connection's buffers are freed at once, and the heap is trimmed once
after a burst of closes that released enough, never per close."""

from __future__ import annotations

import gc
import weakref

import pytest
import trio
import trio.testing

from memring.netio import heap
from memring.protocol.request_parser import RequestParser

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("broken", [False, True])
def test_break_cycle_frees_a_parser_without_the_gc(broken: bool) -> None:
    parser = RequestParser()
    parser.receive_data(b"get " + b"k" * 100_000)  # a half-sent line
    ref = weakref.ref(parser)
    gc.disable()
    try:
        if broken:
            heap.break_cycle(parser)
        del parser
        # the parser's dispatch table holds bound methods of it: without break_cycle only
        # the cyclic GC could free it (and its buffer). When RequestParser loses that cycle,
        # the False case fails: then break_cycle can go.
        assert (ref() is None) == broken
    finally:
        gc.enable()
        gc.collect()


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
