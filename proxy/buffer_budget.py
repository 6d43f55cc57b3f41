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

import logging
import time

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
