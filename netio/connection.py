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
# waiting for input again, HangUp to close, a Handoff to await (which sets `conn.idle`
# while it waits for something else than a request, as `watch`), or Parked.
Receiver = Callable[[bytes], "Handoff | type[HangUp] | type[Parked] | None"]
# What a parked connection does when it is resumed, in the ReadyLoop's task: as a Receiver's
# answer, but never Parked again.
Resumption = Callable[[], "Handoff | type[HangUp] | None"]


class HangUp:
    """`ReadyHandler.received`'s answer when the connection is to close now."""


class Parked:
    """`ReadyHandler.received`'s answer (only for a connection in the ReadyLoop's set,
    `conn.looped`) when the rest of its batch waits for an event that a synchronous callback
    will report (sync replication's acknowledgement): the connection leaves the set without a
    task of its own, and the handler later calls `conn.resume(conn, resumption)`, which the
    loop runs in its own task. Cheaper than a Handoff: no task is started per wait."""


async def carried_out(outcome: Handoff | type[HangUp] | type[Parked] | None) -> bool:
    """Await what a Receiver answered, in the connection's own task: True when the
    connection is waiting for input again, False to close it."""
    if outcome is None:
        return True
    if outcome is HangUp:
        return False
    assert outcome is not Parked, "only a connection in the ReadyLoop's set parks"
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
    parked: bool = False  # out of the set, no task of its own, until its handler resumes it
    # while looped or parked: hands the ReadyLoop what a parked connection does next
    resume: Callable[[Connection, Resumption], None] | None = None
    receiver: Receiver | None = None  # with a ReadyHandler: serves one read (`opened`)
    # with a ReadyHandler: what the client's end of input (EOF) calls for; None: close now
    at_end_of_input: Callable[[], Handoff | type[HangUp]] | None = None
    stream: Stream = field(init=False)  # what handlers read and write: plain or TLS

    def __post_init__(self) -> None:
        self.stream = PlainStream(self.sock)
