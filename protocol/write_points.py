"""Where memcached writes the replies it has built, for servers that answer as it does.

Theory of operation: memcached 1.6.18 builds each reply into a response object and writes
them out only at certain points (memcached.c drive_machine): when its read buffer holds no
complete line, after a retrieval (proto_text.c process_get_command) or `mn`, and after every
REQUESTS_PER_EVENT requests of one read event (-R, `nreqs`). While it waits for the rest of a
data block (conn_nread, or conn_swallow after an error) it writes nothing, so the replies
built since the last write point wait with it, and are never written if the client closes
first; a bad line that closes the connection drops them too. Once it has waited, it reads
only the rest of the block from the socket, so it writes as soon as the block is complete
(after the request it completes, or before the next one when it was swallowed).
`WritePoints` counts one read's requests and tells a server which replies memcached would
still hold.
"""

from __future__ import annotations

from typing import Final

from memring.protocol.requests import Get, MetaNoop, MetaSet, ProtocolError, Store

# memcached's -R default: after this many requests of one read event it writes what it has.
REQUESTS_PER_EVENT: Final = 20
# memcached reads at most this much at a time (memcached.h READ_BUFFER_SIZE); a data block
# that does not fit is read (or swallowed) from the socket to its end, then written after.
READ_BUFFER_SIZE: Final = 16384
_WRITING: Final = frozenset({Get, MetaNoop})
# a large value is read from the socket to its end, and so is a large block whose end was
# wrong (a ProtocolError with its `block` size)
_ENDING_BLOCKS: Final = frozenset({Store, MetaSet, ProtocolError})


def block_of(in_data_block: bool, swallowing: bool) -> str:
    """The `block` a read starts in, from its parser's state before the read."""
    return "swallow" if swallowing else "store" if in_data_block else ""


class WritePoints:
    """One read's requests: how many replies since memcached's last write point."""

    __slots__ = ("_block", "requests", "unwritten")

    def __init__(self, unwritten: int = 0, block: str = "") -> None:
        """`unwritten`: replies an earlier read left unwritten, as it ended inside a data
        block; `block`: which one ("store" or "swallow"), or "" for none."""
        self.requests = 0  # of this read, as memcached's reqs_per_event counts them
        self.unwritten = unwritten  # replies built since the last write point
        self._block = block

    def restart(self, block: str = "") -> None:
        """Count a new read from nothing, as `WritePoints(block=block)` would (one object
        per connection rather than one per read)."""
        self.requests = self.unwritten = 0
        self._block = block

    def before(self) -> bool:
        """A request is about to be answered: True if a write point comes first (the
        swallowed block it follows)."""
        if self._block != "swallow":
            return False
        self._block = ""
        self.requests = self.unwritten = 0
        return True

    def after(self, request: object, swallow_left: int = 0) -> None:
        """`request` was answered: count it, and note a write point after it (or after the
        `swallow_left` bytes of data block its error discards, if they pass memcached's
        read buffer)."""
        self.requests += 1
        kind = type(request)
        if self._block or swallow_left or kind in _ENDING_BLOCKS or \
                self.requests > REQUESTS_PER_EVENT:
            self.unwritten += 1
            self._notable(request, kind, swallow_left)
        elif kind in _WRITING:  # most requests stop here or below (~0.1 us)
            self.unwritten = 0  # a retrieval writes (the case _notable would find, inline)
        else:
            self.unwritten += 1

    def _notable(self, request: object, kind: type, swallow_left: int) -> None:
        count = self.requests
        # the block this request completes was read from the socket to its end
        from_socket = self._block == "store" or (
            isinstance(request, (Store, MetaSet)) and len(request.value) > READ_BUFFER_SIZE - 2
        ) or (isinstance(request, ProtocolError) and request.block > READ_BUFFER_SIZE - 2)
        if from_socket or kind in _WRITING or (
                count > REQUESTS_PER_EVENT and count % REQUESTS_PER_EVENT == 1):
            self.unwritten = 0
        if from_socket:  # memcached's next read starts its count again
            self._block = ""
            self.requests = 0
        if swallow_left > READ_BUFFER_SIZE - 2:
            self._block = "swallow"
