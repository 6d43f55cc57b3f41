"""Where memcached writes its replies: after a retrieval, mn, every 20 requests of a read."""

from __future__ import annotations

import pytest

from memring.protocol.requests import Get, MetaFlags, MetaGet, MetaNoop, Store, Version
from memring.protocol.write_points import (
    READ_BUFFER_SIZE,
    REQUESTS_PER_EVENT,
    WritePoints,
    block_of,
)

pytestmark = pytest.mark.unit


def test_retrieval_and_mn_write() -> None:
    points = WritePoints()
    points.after(Version())
    points.after(Version())
    assert points.unwritten == 2
    points.after(Get(b"get", [b"a"]))
    assert points.unwritten == 0
    points.after(Version())
    points.after(MetaNoop())
    assert points.unwritten == 0


def test_every_twenty_requests_of_a_read_write() -> None:
    """nreqs: the first write after 21 requests, then after every 20 (memcached.c)."""
    points = WritePoints()
    unwritten = []
    for _ in range(3 * REQUESTS_PER_EVENT + 1):
        points.after(MetaGet(b"k", MetaFlags()))
        unwritten.append(points.unwritten)
    assert unwritten[REQUESTS_PER_EVENT - 1] == REQUESTS_PER_EVENT
    assert unwritten[REQUESTS_PER_EVENT] == 0
    assert unwritten[2 * REQUESTS_PER_EVENT - 1] == REQUESTS_PER_EVENT - 1
    assert unwritten[2 * REQUESTS_PER_EVENT] == 0
    assert unwritten[3 * REQUESTS_PER_EVENT] == 0


def test_a_block_finished_in_a_later_read_is_a_write_point() -> None:
    """memcached reads only the rest of the block from the socket, then writes."""
    stored = WritePoints(unwritten=2, block=block_of(True, False))
    assert not stored.before()
    stored.after(Version())  # the storage request the block completes
    assert stored.unwritten == 0
    stored.after(Version())
    assert stored.unwritten == 1
    swallowed = WritePoints(unwritten=2, block=block_of(True, True))
    assert swallowed.before()
    assert swallowed.unwritten == 0
    swallowed.after(Version())
    assert swallowed.unwritten == 1
    assert block_of(False, False) == ""


def test_a_block_past_the_read_buffer_is_a_write_point() -> None:
    points = WritePoints()
    points.after(Version())
    points.after(Store(b"set", b"k", 0, 0, b"v" * (READ_BUFFER_SIZE - 2), 0, False))
    assert points.unwritten == 2
    points.after(Store(b"set", b"k", 0, 0, b"v" * (READ_BUFFER_SIZE - 1), 0, False))
    assert points.unwritten == 0
    points.after(Version(), swallow_left=READ_BUFFER_SIZE)  # its error swallows a big block
    assert points.unwritten == 1
    assert points.before()
    assert points.unwritten == 0
