"""Giving back the memory a closed connection leaves behind, for both servers.

Theory of operation: a connection's large buffers (a half-sent 1 MiB get line, a value being
received) must go back to the allocator when it closes, and from the allocator to the kernel.
Two things stood in the way, measured with 200 half-sent 1 MiB get lines (bench/idle_clients.py):

- A reference cycle: an object that keeps bound methods of itself (the request parser's
  dispatch table did) is freed only by the cyclic GC, whose full pass an idle server may
  never run; its buffer stayed (+220 MB after the 200 connections closed). So a
  connection's objects hold no cycle (the parser's dispatch table is at class level;
  tests/unit/test_heap.py checks it). A forced `gc.collect()` instead would stall the
  server: 22 ms with 100,000 stored items, 130 ms with 500,000.
- glibc keeps freed heap memory mapped (above all in the middle of the heap, between live
  objects); `HeapTrim` calls `malloc_trim(0)` once after a burst of closes that released
  much memory, which hands those free pages back (madvise). It costs ~2 ms on a heap of a
  few hundred MB, so it runs at most once per TRIM_INTERVAL, after TRIM_DELAY (the rest of
  the burst closes first), and only when at least TRIM_THRESHOLD bytes were released.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import time
from collections.abc import Callable

import trio

log = logging.getLogger("memring.net")

TRIM_THRESHOLD = 16 << 20  # bytes released by closed connections before a trim is worth it
TRIM_DELAY = 0.25          # seconds: let the rest of a burst of closes happen first
TRIM_INTERVAL = 1.0        # seconds: at most one trim this often
CONNECTION_COST = 8 << 10  # what a closed connection frees besides its buffers (task, socket)


def _load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS: nothing to do there)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


class HeapTrim:
    """Counts the bytes closed connections released; trims the heap after a burst."""

    def __init__(self, malloc_trim: Callable[[int], int] | None = None) -> None:
        self.malloc_trim = malloc_trim if malloc_trim is not None else _load_malloc_trim()
        self.released = 0     # bytes released since the last trim
        self.scheduled = False
        self.trims = 0
        self._last = -TRIM_INTERVAL

    def connection_closed(self, buffered: int) -> bool:
        """A connection holding `buffered` bytes of input closed: True if the caller should
        now run `trim_soon()` in a task (enough was released and no trim is pending)."""
        self.released += buffered + CONNECTION_COST
        if self.released < TRIM_THRESHOLD or self.scheduled or self.malloc_trim is None:
            return False
        self.scheduled = True
        return True

    async def trim_soon(self) -> None:
        """Trim after TRIM_DELAY, and no sooner than TRIM_INTERVAL after the last trim."""
        try:
            wait = max(TRIM_DELAY, self._last + TRIM_INTERVAL - trio.current_time())
            await trio.sleep(wait)
            self.trim()
        finally:
            self.scheduled = False

    def trim(self) -> None:
        assert self.malloc_trim is not None
        began = time.perf_counter()
        self.malloc_trim(0)
        self._last = trio.current_time()
        self.trims += 1
        log.debug("malloc_trim after %d bytes released by closed connections: %.1f ms",
                  self.released, (time.perf_counter() - began) * 1e3)
        self.released = 0


# One per process: the heap is the process's, whichever server's connections freed it.
heap_trim = HeapTrim()
