"""The reply to one request forwarded to a backend, and who hears when it is complete.

Theory of operation: `BackendConnection.submit` makes a `PendingReply` per request and its
reader fills it in (the events, or the error that failed it) in request order; the client's
`ReplyStream` is its `ReplyListener`. Compiled with mypyc (build_support/hot_modules.txt)
with its subclasses, the one-object slots (proxy/direct_slots.py), which a compiled class
needs: it can have no interpreted subclass.
"""

from __future__ import annotations

from typing import Final, Protocol

import trio

from memring.protocol.reply_shapes import ReplyShape
from memring.protocol.responses import Response

# The deadline of a reply submitted in a ReadyLoop pass until the pass's end dates it (no
# run's clock reads less: trio's starts past 10,000 s).
UNDATED: Final = -1.0


class ReplyListener(Protocol):
    """Who is told when a reply is complete (a client's reply stream), and which of a
    node's connections its requests use."""

    affinity: int

    def reply_arrived(self) -> None: ...


class PendingReply:
    """The reply to one forwarded request, filled in by the connection's reader."""

    __slots__ = ("_event", "deadline", "done", "error", "events", "forwarded", "listener",
                 "multi", "shape")

    # the request as sent, set by the connection that sends it (read only if it is cut:
    # proxy/cut_connection.py); not in __init__, which every slot kind runs
    forwarded: bytes

    def __init__(self, multi: bool, deadline: float, listener: ReplyListener | None = None,
                 shape: ReplyShape | None = None) -> None:
        self.multi = multi            # get/gets/gat/gats/stats: events until END
        self.shape = shape            # what may answer it (None: never sent, failed here)
        self.deadline = deadline
        self.events: list[Response] = []
        self.done = False
        self.error: str | None = None
        self._event: trio.Event | None = None  # made only when a task waits
        self.listener = listener

    def _finish(self) -> None:
        self.done = True
        if self._event is not None:
            self._event.set()

    def fail(self, reason: str) -> None:
        if not self.done:
            self.error = reason
            self._finish()
            if self.listener is not None:
                self.listener.reply_arrived()

    async def wait(self) -> None:
        if not self.done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()
