"""One client connection of the proxy, served from each read without a task of its own.

Theory of operation: plain client connections wait for input in the ConnectionServer's
`netio.ready_loop.ReadyLoop`, which calls `received` with each read. It parses the complete
requests and issues them (ClientSession: routing, submitting to backend connections,
answering the local ones) synchronously, sends what is ready, and returns None: the replies
still on their way are sent by the backends' readers (proxy/reply_stream.py), so a request
costs the proxy no task wake-up of the client's. Only where the proxy must wait does the rest
of the read become a `Handoff` run in a task of the connection's own, which comes back to the
loop once the client is waiting for input again:
- the client pipelines: its previous batch is not answered yet (`_BATCH`);
- a batch fills the client's window before its replies are sent (`_WINDOW`);
- `quit` or a closing protocol error with replies still on their way (`_CLOSING`);
- the client's partial requests would pass the proxy's buffer budget (`_REFUSE`);
- the client half-closed with replies still owed (`at_end_of_input`).
TLS connections have a task each (netio.connection_server) that drives the same calls.

Replies leave only where memcached writes them (protocol.write_points), in request order,
bounded per client by the ReplyStream's window and budgets, as before this module.
"""

from __future__ import annotations

import contextlib
import enum
import socket
import time
from typing import NoReturn

from memring.netio.connection import Connection, Handoff, HangUp
from memring.netio.connection_server import ConnectionServer
from memring.netio.ready_loop import ReadyLoop
from memring.protocol import NEED_DATA
from memring.protocol.binary_parser import BinaryRequestParser
from memring.protocol.negotiation import NegotiatingParser, TextParser
from memring.protocol.requests import ProtocolError
from memring.protocol.write_points import WritePoints, block_of
from memring.proxy.binary_batches import BatchingParser
from memring.proxy.buffer_budget import OUT_OF_MEMORY_READING, BufferBudget
from memring.proxy.reply_stream import ReplyStream
from memring.proxy.session import ClientSession
from memring.proxy.slots import Ready


class _Pause(enum.Enum):
    """What a read's batch must await before it goes on (in the connection's own task)."""

    BATCH = enum.auto()  # the previous batch's replies, then this read's requests
    WINDOW = enum.auto()  # the window's replies, then the rest of this read's requests
    CLOSING = enum.auto()  # the replies owed, then close
    REFUSE = enum.auto()  # the replies owed, memcached's out of memory answer, then close


Outcome = _Pause | type[HangUp] | None


class ClientConversation:
    """One client's parser, session and replies; `received` serves one read."""

    __slots__ = ("block", "buffers", "chosen", "client", "conn", "idle_timeout", "issued",
                 "loop", "negotiating", "parser", "points", "replies", "server", "started")

    def __init__(self, conn: Connection, parser: NegotiatingParser, client: ClientSession,
                 replies: ReplyStream, server: ConnectionServer, buffers: BufferBudget) -> None:
        self.conn = conn
        self.negotiating = parser
        # ... and a binary client's consecutive gets become one multi-get (binary_batches)
        self.parser = BatchingParser(parser)
        self.chosen: TextParser | None = None  # write points: text only (protocol.write_points)
        self.client = client
        self.replies = replies
        self.server = server
        self.buffers = buffers
        self.idle_timeout = server.idle_timeout
        self.loop: ReadyLoop | None = server.ready_loop  # native: its rearm takes no frame or clock read
        self.block = ""  # the data block state before this read (protocol.write_points)
        self.points = WritePoints()
        self.issued = False
        self.started = 0.0  # when this read came (perf_counter): the replies' latency

    # -- the synchronous part: the ReadyLoop's (or the TLS task's) calls ----------------

    def received(self, data: bytes) -> Handoff | type[HangUp] | None:
        """ReadyHandler's Receiver: serve one read."""
        outcome = self._received(data)
        if self.replies.closed:
            return None  # dropped meanwhile: its connection is closed (or being cancelled)
        if type(outcome) is _Pause:
            return self._continue(outcome)
        return outcome  # type: ignore[return-value]  # HangUp or None

    def _received(self, data: bytes) -> Outcome:
        replies = self.replies
        replies.waiting_for_client = False
        self.conn.idle = False
        chosen = self.chosen
        if chosen is not None:  # a text client's parser, called directly (no wrappers)
            self.block = block_of(chosen.in_data_block, chosen.swallowing)
            chosen.receive_data(data)
        else:
            self.block = ""
            self.parser.receive_data(data)
            if not isinstance(self.negotiating.chosen, BinaryRequestParser):
                self.chosen = self.negotiating.chosen
        self.started = time.perf_counter()
        if not replies.answered:  # a pipelining client: the last batch first
            if not replies.hold_input(self.parser.buffered):  # held while it waits
                return _Pause.REFUSE
            return _Pause.BATCH
        return self._start_batch()

    def _start_batch(self) -> Outcome:
        # which replies memcached would hold (write_points); the held ones of the last read
        # are still unwritten
        self.replies.started = self.started
        self.points = WritePoints(unwritten=self.replies.held, block=self.block)
        self.issued = False
        return self._issue()

    def _issue(self) -> Outcome:
        """Issue the read's complete requests; pause when a window is full."""
        replies = self.replies
        client = self.client
        queue = replies.queue
        points = self.points
        chosen = self.chosen
        # a text client's events straight from its parser (the batching and negotiating
        # wrappers only pass them on: a text request is never batched); called, not held as
        # bound methods (an object each per batch)
        parser = self.parser
        while not client.closing:
            event = chosen.next_event() if chosen is not None else parser.next_event()
            if event is NEED_DATA:
                break
            self.issued = True
            if points.before():
                replies.held = 0
            if type(event) is ProtocolError and event.close and chosen:
                # memcached closes without writing what it had not written yet
                del queue[max(0, len(queue) - points.unwritten):]
            queue.append(client.issue(event))
            points.after(event, chosen.swallow_left if chosen else 0)
            if chosen:  # replies go out only where memcached writes them (or at the end)
                replies.held = points.unwritten
            if len(queue) - replies.held >= replies.window:
                # Bound what one client can have in flight (and buffered here): answer
                # these before reading on; a client that stops reading stops here. (The
                # held ones are at most REQUESTS_PER_EVENT + 1.)
                replies.send_ready()
                if replies.closed:
                    return HangUp
                if not replies.answered:
                    return _Pause.WINDOW
                replies.adjust_window()
        return self._end_batch()

    def _end_batch(self) -> Outcome:
        replies = self.replies
        client = self.client
        chosen = self.chosen
        if chosen is None or not chosen.in_data_block or client.closing:
            replies.held = 0
        # else they wait until the block is complete, unsent if the client closes first
        replies.send_ready()
        if replies.closed:
            return HangUp
        if client.closing:
            return HangUp if replies.answered else _Pause.CLOSING
        if self.issued and self.idle_timeout:  # idle from here (or its last reply: conn.busy)
            loop = self.loop
            if loop is not None:  # with the loop's pass clock
                loop.rearm(self.conn)
            else:
                self.server.rearm(self.conn)
        return self._wait_for_input()

    def _wait_for_input(self) -> Outcome:
        """The batch is issued: charge what the parser holds, and wait for the client."""
        replies = self.replies
        chosen = self.chosen  # a text client's parser directly (not through the wrappers)
        buffered = chosen.buffered if chosen is not None else self.parser.buffered
        if buffered != replies.held_input and not replies.hold_input(buffered):
            return _Pause.REFUSE
        replies.idle_when_answered = buffered == 0
        self.conn.idle = replies.idle_when_answered and replies.answered
        replies.waiting_for_client = True  # replies.done may now close it at shutdown
        return None

    def at_end_of_input(self) -> Handoff | type[HangUp]:
        """The client closed its side: the replies owed go first (the held ones never go,
        as in memcached), then the connection closes."""
        replies = self.replies
        replies.waiting_for_client = False  # owed replies, not a wait for input (shutdown)
        if replies.answered:
            return HangUp
        return self._continue(_Pause.CLOSING)

    def holds_input(self) -> bool:
        """Not idle: part of a request buffered, or replies still on their way."""
        return self.parser.buffered > 0 or not self.replies.answered

    # -- the waiting part: in the connection's own task --------------------------------

    async def _continue(self, pause: _Pause) -> bool:
        """Await what `pause` names, go on with the batch; True once the client is waiting
        for input again (back to the ReadyLoop), False to close."""
        replies = self.replies
        for _ in range(1 << 30):  # each round issues at least one request of a bounded read
            if pause is _Pause.REFUSE:
                await self._refuse()
                return False
            await replies.wait_answered()
            if pause is _Pause.CLOSING or replies.closed:
                return False
            if pause is _Pause.WINDOW:
                replies.adjust_window()
                outcome = self._issue()
            else:
                outcome = self._start_batch()
            if outcome is None:
                return True
            if outcome is HangUp:
                return False
            assert type(outcome) is _Pause
            pause = outcome
        return False

    async def _refuse(self) -> None:
        """The client's partial requests would pass --max-buffered-bytes: after the replies
        it is owed, memcached's answer to a read buffer it cannot allocate, then close."""
        replies = self.replies
        self.parser = _refused_parser()  # its bytes are not held while the replies go
        replies.hold_input(0)
        self.buffers.log_refusal("input")
        replies.queue.append(Ready(OUT_OF_MEMORY_READING))
        replies.send_ready()
        await replies.wait_answered()
        with contextlib.suppress(OSError):
            # EOF after the answer: closing with its unread input resets the connection,
            # and a reset that overtakes the answer would lose it.
            self.conn.sock.shutdown(socket.SHUT_WR)

    def close(self) -> int:
        """The connection closes: give back what the replies held; the most they held."""
        self.conn.busy = None  # it refers to replies, which refer to conn: no cycle left
        return self.replies.close()


def _refused_parser() -> BatchingParser:
    """An empty parser in place of a refused client's (nothing more is read from it)."""
    return BatchingParser(NegotiatingParser(_unread, _unread))


def _unread() -> NoReturn:
    raise AssertionError("a refused client is not read")

