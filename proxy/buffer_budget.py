"""The proxy-wide bound on client data held in memory (`--max-buffered-bytes`).

Theory of operation: every client connection charges what the proxy holds for it: input
buffered in its parser (a half-sent line, a data block still arriving) and replies rendered
but not yet taken by its socket. A charge that would push the total past the limit is
refused, and the connection that asked gets memcached's answer to a failed allocation
(`SERVER_ERROR out of memory ...`, then close); the others keep what they hold. A closing
connection gives back everything it holds, so the total never leaks.

The hot path pays nothing: a client whose replies the kernel takes at once and whose reads
end on a request boundary holds no charge; charges change only when a parser keeps a partial
request or a reply has to wait for its socket.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

import trio

log = logging.getLogger("memring.proxy")

# memcached's replies when it cannot allocate (memcached.c try_read_network: the read
# buffer, then close_after_write; proto_text.c process_get_command: a get's response).
OUT_OF_MEMORY_READING = b"SERVER_ERROR out of memory reading request\r\n"
OUT_OF_MEMORY_WRITING = b"SERVER_ERROR out of memory writing get response\r\n"
REFUSAL_LOG_INTERVAL = 10.0  # seconds


class BufferBudget:
    """The bytes all client connections hold, against `limit`."""

    __slots__ = ("_logged", "limit", "peak", "refusals", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self.refusals = 0  # connections refused because they would have passed the limit
        self._logged = -REFUSAL_LOG_INTERVAL

    def log_refusal(self, what: str) -> None:
        """One line per REFUSAL_LOG_INTERVAL, however many clients are refused meanwhile."""
        now = time.monotonic()
        if now - self._logged >= REFUSAL_LOG_INTERVAL:
            self._logged = now
            log.warning("closing a client: its %s would pass the proxy's buffer budget (%d of "
                        "%d bytes held; %d client(s) refused so far)", what, self.used,
                        self.limit, self.refusals)

    def change(self, held: int, wanted: int, force: bool = False) -> bool:
        """Move one connection's charge from `held` to `wanted` bytes; False (nothing
        changed) if that would pass the limit, unless `force` (bytes already in hand)."""
        used = self.used + wanted - held
        if wanted > held and used > self.limit and not force:
            self.refusals += 1
            return False
        self.used = used
        if used > self.peak:
            self.peak = used
        return True


# Closed connections that held this much in all make the reclaimer run (once per burst).
RECLAIM_AFTER_BYTES = 4 << 20
RECLAIM_DELAY = 0.5  # seconds: closes within this share one collection


class Reclaimer:
    """Hands the memory of closed connections back to the system, once per burst of closes.

    Why it is needed (measured: 200 connections holding 1 MB half-sent lines kept the proxy
    at 246 MB after they closed, 28 MB before): a `RequestParser` is in a reference cycle
    (its dispatch table holds its own bound methods), so its buffer is freed only by the
    cyclic garbage collector, and a long-lived connection's parser sits in the oldest
    generation, which CPython collects rarely. `gc.collect()` frees them; `malloc_trim(0)`
    then returns the freed pages that glibc keeps in its heap. A collection costs a few ms
    per ~100k live objects, so it runs only once closed connections had held
    RECLAIM_AFTER_BYTES between them, and at most once per RECLAIM_DELAY.
    """

    def __init__(self) -> None:
        self._wanted = trio.Event()
        self._released = 0  # what connections closed since the last run had held
        self.runs = 0
        self._trim = _malloc_trim()

    def note_closed(self, released: int) -> None:
        """A connection closed having held up to `released` bytes."""
        self._released += released
        if self._released >= RECLAIM_AFTER_BYTES:
            self._wanted.set()

    async def run(self) -> None:
        while True:
            await self._wanted.wait()
            await trio.sleep(RECLAIM_DELAY)
            self._wanted = trio.Event()
            self._released = 0
            started = time.perf_counter()
            freed = gc.collect()
            if self._trim is not None:
                self._trim(0)
            self.runs += 1
            log.debug("reclaimed memory of closed connections: %d objects collected in %.1f ms",
                      freed, (time.perf_counter() - started) * 1000)


def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim
