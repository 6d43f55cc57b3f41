"""One client connection as the servers see it, and the contract between a server's
requests and the loops that read for them (netio.ready_loop, netio.connection_server).

Its own module so that both loops and the servers import it without importing each other.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from memring.netio import nonblocking
from memring.netio.streams import PlainStream, Stream

log = logging.getLogger("memring.net")

# The rest of a batch, run in the connection's own task; True when the connection is then
# waiting for input again (back to the set), False to close it.
Handoff = Coroutine[Any, Any, bool]
# A connection's requests: serve one read (not empty) synchronously; None when done and
# waiting for input again, HangUp to close, or a Handoff to await (which sets `conn.idle`
# while it waits for something else than a request, as `watch`).
Receiver = Callable[[bytes], "Handoff | type[HangUp] | None"]


class HangUp:
    """`ReadyHandler.received`'s answer when the connection is to close now."""


async def carried_out(outcome: Handoff | type[HangUp] | None) -> bool:
    """Await what a Receiver answered, in the connection's own task: True when the
    connection is waiting for input again, False to close it."""
    if outcome is None:
        return True
    if outcome is HangUp:
        return False
    assert not isinstance(outcome, type)
    return await outcome


def log_failure(exc: Exception) -> None:
    """One connection failed (in its task or in the ReadyLoop's read): only it closes. A peer
    gone is routine, another socket error is a line, and anything else is a bug met by one
    client's bytes, which must not end the process and every other client's items with it:
    logged with its traceback."""
    if not isinstance(exc, OSError):
        log.error("a connection failed on an unexpected error and was closed "
                  "(the server goes on; please report this traceback)", exc_info=exc)
    elif exc.errno not in nonblocking.PEER_GONE:
        log.info("connection error: %s", exc)


class ReadyHandler(Protocol):
    """A server's requests, served synchronously from one read; a waiting part handed off."""

    def opened(self, conn: Connection) -> Receiver:
        """`conn` was accepted (and set up: TLS done): what serves its reads (one call per
        read, no lookup)."""

    def holds_input(self, conn: Connection) -> bool:
        """`conn` has sent part of a request: not idle (shutdown lets it finish). Asked
        when needed rather than kept up to date on every read."""

    def closed(self, conn: Connection) -> None:
        """`conn` is closing: drop what the handler kept for it (set `conn.held`)."""


@dataclass(eq=False)
class Connection:
    sock: socket.socket
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    idle: bool = True  # the handler is waiting for a request: safe to close at shutdown
    mark: int = 0  # the handler's bookkeeping (backend: replicated writes already waited for)
    reading: bool = False  # the handler waits for input: the idle timeout may close it
    active: float = 0.0  # trio time of the last completed request (or the accept)
    busy: Callable[[], bool] | None = None  # True while replies are on their way: not idle
    kicked: bool = False  # closed by the idle timeout or evicted
    held: int = 0  # bytes of input the handler still held when it ended (netio.heap)
    pending: bool = False  # with `max_pending`: not yet admitted by its handler
    writing: bool = False  # the handler is sending replies (the backend's `stats conns`)
    looped: bool = False  # waiting for input in the ReadyLoop's set, no task of its own
    receiver: Receiver | None = None  # with a ReadyHandler: serves one read (`opened`)
    # with a ReadyHandler: what the client's end of input (EOF) calls for; None: close now
    at_end_of_input: Callable[[], Handoff | type[HangUp]] | None = None
    stream: Stream = field(init=False)  # what handlers read and write: plain or TLS

    def __post_init__(self) -> None:
        self.stream = PlainStream(self.sock)
