"""Where memcached writes the replies it has built, for servers that answer as it does.

Theory of operation: memcached 1.6.18 builds each reply into a response object and writes
them out only at certain points (memcached.c drive_machine): when its read buffer holds no
complete line, after a retrieval (proto_text.c process_get_command) or `mn`, and after every
REQUESTS_PER_EVENT requests of one read event (-R, `nreqs`). While it waits for the rest of a
data block (conn_nread, or conn_swallow after an error) it writes nothing, so the replies
built since the last write point wait with it, and are never written if the client closes
first; a bad line that closes the connection drops them too. `WritePoints` counts one read's
requests and tells a server which replies memcached would still hold.
"""

from __future__ import annotations

from memring.protocol.requests import Get, MetaNoop

# memcached's -R default: after this many requests of one read event it writes what it has.
REQUESTS_PER_EVENT = 20
_WRITING = frozenset({Get, MetaNoop})


class WritePoints:
    """One read's requests: how many replies since memcached's last write point."""

    __slots__ = ("requests", "unwritten")

    def __init__(self) -> None:
        self.requests = 0  # of this read, as memcached's reqs_per_event counts them
        self.unwritten = 0  # replies built since the last write point

    def after(self, request: object) -> None:
        """`request` was answered: count it, and note a write point after it."""
        self.requests += 1
        self.unwritten += 1
        count = self.requests
        if type(request) in _WRITING or (
                count > REQUESTS_PER_EVENT and count % REQUESTS_PER_EVENT == 1):
            self.unwritten = 0
