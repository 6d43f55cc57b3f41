"""One client connection's requests on the backend: parse a read, run its requests, send
their replies (backend.server's theory of operation), compiled with mypyc together with the
codec, the commands and the store.

Why its own module: the synchronous path from a read to the store is where the backend's CPU
per request goes, and mypyc pays when caller and callee are both native (direct calls, native
attributes, no boxing); compiling the commands alone gained 1% (docs/benchmarks.md "Round
three: backend"). The awaiting parts (a send the kernel did not take whole, a big multi-get, a
dump, `watch`, a TLS connection's replication wait) are coroutines of the same class, which
mypyc compiles too and trio runs as any coroutine.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Final, Protocol

import trio

from memring.backend.commands import CloseConnection, CommandHandler, StartWatching
from memring.backend.item_dumps import StreamedReply
from memring.backend.stats import ServerCounters
from memring.netio.connection import Connection, Handoff, HangUp, Parked, carried_out
from memring.netio.ready_loop import ReadyLoop
from memring.netio.streams import PlainStream
from memring.protocol.binary_parser import BinaryRequestParser
from memring.protocol.negotiation import NegotiatingParser, TextParser
from memring.protocol.replication import ORIGIN, Position
from memring.protocol.request_parser import NEED_DATA, RequestParser
from memring.protocol.requests import Get, Quit
from memring.protocol.write_points import WritePoints, block_of

FLUSH_SIZE: Final = 1 << 20
GET_SLICE: Final = 64  # keys of one multi-get handled between flushes


def held_from(out: list[bytes], sendable: int) -> int:
    """Where the replies memcached holds begin, while it waits for the rest of a data block
    (protocol.write_points): from `sendable` on, unless they pass FLUSH_SIZE, which memring
    sends rather than hold (memcached holds at most REQUESTS_PER_EVENT + 1 replies, each up
    to its item size)."""
    return sendable if sum(map(len, out[sendable:])) <= FLUSH_SIZE else len(out)


def keys_of(event: object) -> Sequence[bytes]:
    """The keys whose state a request's reply depends on."""
    if type(event) is Get:
        return event.keys
    key = getattr(event, "key", None)
    return (key,) if key else ()  # a binary frame without a key has key b""


class ReplicationGate(Protocol):
    """Sync replication: replies that follow a write, or that depend on the state of a key
    whose newest write the in-sync followers do not hold yet, wait until it is replicated."""

    commits: int  # write batches committed so far; a connection compares it with its mark

    async def settle(self) -> bool:
        """Wait for the in-sync followers; False if the write will never be acknowledged."""

    def unacknowledged(self, keys: Sequence[bytes], since: Position) -> Position:
        """The newer of `since` and the newest mutation of `keys` the in-sync followers do
        not hold yet (ORIGIN: none)."""

    async def settle_reads(self, position: Position) -> bool:
        """Wait until they hold `position`; False if they never will."""

    def settle_then(self, wrote: bool, depends: Position,
                    then: Callable[[bool], object]) -> bool | None:
        """`settle()` if `wrote`, else `settle_reads(depends)`, without awaiting: the verdict
        if known now, else None and `then(verdict)` is called once when it is known."""


class ConversationHost(Protocol):
    """What a Conversation asks of its server (backend.server.BackendServer): the commands,
    the counters, the sync gate and the replies that must await."""

    handler: CommandHandler
    counters: ServerCounters
    gate: ReplicationGate | None

    async def flush_replies(self, conn: Connection, out: list[bytes],
                            depends: Position = ORIGIN) -> None: ...

    async def stream_dump(self, conn: Connection, chunks: Generator[bytes, None, None],
                          out: list[bytes], depends: Position) -> None: ...

    async def hold_watching(self, conn: Connection) -> None: ...

    async def multi_get(self, conn: Connection, request: Get, out: list[bytes],
                        depends: Position) -> None: ...


class Conversation:
    """One client connection's requests: its parser, the replies not sent yet, and the batch
    of one read, served synchronously until something must be awaited (then handed off).

    A batch runs as the task-per-connection loop did: `_serve_batch` answers the complete
    requests in order and returns what must be awaited mid-batch (a multi-get of more than
    GET_SLICE keys, a streamed dump, a FLUSH_SIZE flush); `_end_batch` sends the replies
    memcached would have written by now with one non-blocking send, and hands off when the
    kernel did not take them all or for `watch`. When sync replication must settle first, a
    connection in the ReadyLoop's set parks (netio.connection.Parked) until the gate's
    callback resumes it; a TLS connection, which has its task, awaits the settling in it.
    """

    __slots__ = ("conn", "counters", "depends", "event", "gate", "handler", "hanging_up", "later",
                 "loop", "negotiated", "next_event", "now", "out", "parser", "points", "quitting",
                 "receive_data", "replied", "requests", "send", "sendable", "served", "server",
                 "settled", "text", "watching")

    def __init__(self, server: ConversationHost, conn: Connection,
                 parser: NegotiatingParser, loop: ReadyLoop | None = None) -> None:
        """`loop`: the ReadyLoop that serves `conn` while it waits for input (None: a task
        per connection), whose pass clock dates the replies (`_served`)."""
        self.server = server
        self.handler: CommandHandler = server.handler  # native calls when both are compiled
        self.counters = server.counters
        # the sync gate, held: the server has it before it serves (backend/cli.py), and a
        # native attribute costs no Python attribute lookup per read (three before)
        self.gate: ReplicationGate | None = server.gate
        self.conn = conn
        # a plain socket's send, called directly (the stream's contract, one call less)
        self.send = conn.sock.send if type(conn.stream) is PlainStream else None
        self.parser = parser
        self.next_event = parser.next_event  # the chosen parser's, once the first byte came
        self.receive_data = parser.receive_data  # the same
        self.now = trio.lowlevel.current_clock().current_time  # trio.current_time, direct
        self.loop = loop
        self.negotiated = False
        self.text: TextParser | None = None  # write points: text only (protocol.write_points)
        self.requests: RequestParser | None = None  # text without auth: called natively
        self.out: list[bytes] = []  # replies not sent yet; some may wait for the next read
        self.depends = ORIGIN  # the newest unreplicated mutation the replies show
        self.later: list[bytes] = []  # parked: the replies held back until the next write
        self.settled = False  # parked: the gate's verdict
        # the batch of one read
        self.points = WritePoints()
        self.sendable = 0  # how many of `out` memcached would have written by now
        self.replied = 0  # len(out) before the last request's reply
        self.event: object = None
        self.served = self.quitting = self.watching = self.hanging_up = False

    def received(self, data: bytes) -> Handoff | type[HangUp] | type[Parked] | None:
        conn = self.conn
        gate = self.gate
        if gate is not None and not self.out:
            conn.mark = gate.commits  # writes so far were other connections'
        self.counters.bytes_read += len(data)
        block = ""
        requests = self.requests
        if requests is not None:  # the common case, native calls
            if requests.in_data_block:
                block = block_of(True, requests.swallowing)
            requests.receive_data(data)
        else:
            block = self._received_other(data)
        self.points.restart(block)  # (the points of one read: no object per read)
        self.sendable = self.replied = 0
        self.event = None
        self.served = self.quitting = self.watching = self.hanging_up = False
        wait = self._serve_batch()
        if wait is not None:
            return self._finish(wait)
        return self._end_batch()

    def _received_other(self, data: bytes) -> str:
        """`received` for the first read, an authenticating or a binary parser: the parser
        takes `data`; the data block the read began in (protocol.write_points.block_of)."""
        text = self.text
        block = ""
        if text is not None and text.in_data_block:
            block = block_of(True, text.swallowing)
        self.receive_data(data)
        if not self.negotiated:
            chosen = self.parser.chosen  # the first byte chose: no indirection from now on
            assert chosen is not None  # data was not empty
            self.next_event = chosen.next_event
            self.receive_data = chosen.receive_data
            self.negotiated = True
            if not isinstance(chosen, BinaryRequestParser):
                self.text = chosen
                if isinstance(chosen, RequestParser):
                    self.requests = chosen
        return block

    def _serve_batch(self) -> Coroutine[Any, Any, None] | None:
        """Answer the complete requests in order; None at the end of the input, or what must
        be awaited before calling again."""
        out = self.out
        points = self.points
        text = self.text
        requests = self.requests
        next_event = self.next_event
        handler = self.handler
        gate = self.gate
        event: object = self.event
        try:
            while True:
                event = requests.next_event() if requests is not None else next_event()
                if event is NEED_DATA:
                    return None
                self.served = True
                if text is not None:  # binary replies are written after each read
                    if points.before():
                        self.sendable = len(out)
                    points.after(event, requests.swallow_left if requests is not None
                                 else text.swallow_left)
                if type(event) is Get and len(event.keys) > GET_SLICE:
                    self.event = event
                    return self._multi_get(event)
                self.replied = len(out)
                try:
                    handler.handle(event, out)
                except StreamedReply as dump:
                    self.event = event
                    return self._stream(dump.chunks)
                except StartWatching:
                    self.watching = True
                    return None
                if gate is not None:
                    self.depends = gate.unacknowledged(keys_of(event), self.depends)
                if text is None or not points.unwritten:
                    self.sendable = len(out)
                if len(out) >= 32 and sum(map(len, out)) >= FLUSH_SIZE:
                    self.event = event
                    return self._flush_early()
        except CloseConnection:
            self.quitting = True
            # memcached closes on a bad text line without writing what it had not written
            # yet; `quit` writes first (proto_text.c process_quit_command). A binary frame
            # that closes keeps memring's way (README: the replies of the read go first).
            self.hanging_up = text is not None and type(event) is not Quit
            return None

    async def _multi_get(self, request: Get) -> None:
        await self.server.multi_get(self.conn, request, self.out, self.depends)
        self.depends = ORIGIN  # _multi_get flushed what depended on it
        self.sendable = len(self.out)

    async def _stream(self, chunks: Generator[bytes, None, None]) -> None:
        await self.server.stream_dump(self.conn, chunks, self.out, self.depends)
        self.depends = ORIGIN
        self.sendable = len(self.out)

    async def _flush_early(self) -> None:
        await self.server.flush_replies(self.conn, self.out, self.depends)
        self.depends = ORIGIN
        self.sendable = self.replied = 0

    def _sendable_at_end(self) -> int:
        """How many of `out` go now that the read is served (protocol.write_points)."""
        out = self.out
        text = self.text
        if self.hanging_up:
            del out[self.sendable:self.replied]  # never sent; the closing answer itself is
            return len(out)
        if text is None or not text.in_data_block or self.quitting or self.watching:
            return len(out)
        return held_from(out, self.sendable)

    def _end_batch(self) -> Handoff | type[HangUp] | type[Parked] | None:
        """Send what memcached would have written by now, without waiting if the kernel
        takes it all (and no replication wait comes first)."""
        out = self.out
        text = self.text
        requests = self.requests  # (its property read natively; TextParser's by name)
        if not self.hanging_up and (text is None or not (
                requests.in_data_block if requests is not None else text.in_data_block)):
            sendable = len(out)  # the common case, inline
        else:
            sendable = self._sendable_at_end()
        if sendable:
            held = out[sendable:] if sendable < len(out) else []
            del out[sendable:]
            conn = self.conn
            gate = self.gate
            if gate is not None and (gate.commits != conn.mark or self.depends > ORIGIN):
                if not conn.looped:  # TLS: the connection's own task awaits
                    return self._flush_then_end(held)
                verdict = gate.settle_then(gate.commits != conn.mark, self.depends,
                                           self._settle)
                self.later = held
                if verdict is None:
                    return Parked
                self.settled = verdict
                return self._send_settled()
            partial = self._send_out(held)
            if partial is not None:
                return partial
        if self.quitting or self.watching:
            return self._after_send()
        if self.served:
            self._served()
        return None

    def _served(self) -> None:
        """The replies of a read are sent: the connection is idle from now (`conn.active`,
        its idle timeout and `stats conns`). In the ReadyLoop's pass, dated by the pass's one
        clock reading at its end (`ReadyLoop.rearm`), not by a clock read per read: trio's
        clock is an interpreted frame (~1% of the CPU per request: docs/benchmarks.md "Round
        seven: backend")."""
        loop = self.loop
        if loop is not None and loop.in_pass:
            loop.rearm(self.conn)
        else:
            self.conn.active = self.now()

    def _settle(self, verdict: bool) -> None:
        """The gate's callback for a parked connection: its verdict is known."""
        self.settled = verdict
        resume = self.conn.resume
        assert resume is not None  # parked by a ReadyLoop
        resume(self.conn, self._send_settled)

    def _send_settled(self) -> Handoff | type[HangUp] | None:
        """Replication settled (as `_flush_then_end`, without a task): send the replies that
        waited, or close unanswered if the writes will never be acknowledged."""
        out, held = self.out, self.later
        self.later = []
        conn = self.conn
        if not self.settled:
            # This node stopped leading before its in-sync followers held the write: no
            # answer is true, so none is given (the client sees the connection close).
            out.clear()
            return HangUp
        gate = self.gate
        assert gate is not None
        conn.mark = gate.commits  # committed while we waited: other connections'
        return self._send_out(held) or self._after_send()

    def _send_out(self, held: list[bytes]) -> Handoff | None:
        """Send the replies in `out`, keeping `held` (those still waiting) as the next `out`;
        the rest of the send as a Handoff when the kernel took only part of it."""
        out = self.out
        data = b"".join(out) if len(out) > 1 else out[0]
        out[:] = held
        if not held:
            self.depends = ORIGIN
        self.counters.bytes_written += len(data)
        send = self.send
        if send is not None:
            try:
                sent = send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                return self._send_then_end(memoryview(data)[sent:])
            return None
        stream = self.conn.stream
        sent = stream.send_now(data)
        if sent < len(data) or stream.backlog:
            return self._send_then_end(memoryview(data)[sent:])
        return None

    def _after_send(self) -> Handoff | type[HangUp] | None:
        if self.quitting:
            return HangUp
        if self.watching:
            return self._watch()
        if self.served:
            self._served()
        return None

    async def _finish(self, wait: Coroutine[Any, Any, None]) -> bool:
        """The rest of a batch that had to wait mid-way, in the connection's own task."""
        try:
            more: Coroutine[Any, Any, None] | None = wait
            while more is not None:
                await more
                more = self._serve_batch()
            sendable = self._sendable_at_end()
            if sendable:
                out = self.out
                held = out[sendable:]
                del out[sendable:]
                await self.server.flush_replies(self.conn, out, self.depends)
                out[:] = held
                if not held:
                    self.depends = ORIGIN
        except CloseConnection:
            return False
        return await carried_out(self._after_send())

    async def _flush_then_end(self, held: list[bytes]) -> bool:
        try:
            await self.server.flush_replies(self.conn, self.out, self.depends)
        except CloseConnection:
            return False
        self.out[:] = held
        if not held:
            self.depends = ORIGIN
        return await carried_out(self._after_send())

    async def _send_then_end(self, rest: memoryview) -> bool:
        conn = self.conn
        conn.writing = True
        try:
            await conn.stream.send_all(rest)
        finally:
            conn.writing = False
        gate = self.gate
        if gate is not None:
            conn.mark = gate.commits  # committed while we waited: other connections'
        return await carried_out(self._after_send())

    async def _watch(self) -> bool:
        await self.server.hold_watching(self.conn)
        return False
