"""The backend's TCP server: a ReadyHandler for netio's ConnectionServer.

Theory of operation: a connection's read goes to its `Conversation`, which feeds the parser,
runs every complete request against the store in order, and writes all their replies in one
send, so a pipelined burst costs one recv and one send. Plain connections are read by the
ConnectionServer's one `netio.ready_loop.ReadyLoop` task, which calls the conversation
synchronously; only a conversation that must await (a send the kernel did not take whole, a
large multi-get, a dump, `watch`) hands the rest of its batch to a task of its own, and one
whose replies wait for sync replication parks until the gate's callback resumes it. TLS connections have a task each that drives the same conversation. Sockets are
never trio streams, whose layer costs more than the codec and the store together, nor
`trio.socket` (3% slower here; see docs/benchmarks.md).

Replies leave when memcached's would (protocol.write_points): after each read, except those
it holds while it waits for the rest of a data block, which go with the next write, or never
if the client closes first; a bad line that closes the connection drops them too.

Memory stays bounded: one read is at most nonblocking.READ_SIZE bytes, the parser bounds
lines and values, and replies are flushed whenever FLUSH_SIZE bytes are waiting, so a get of
many large values streams instead of piling up.

TLS (`--tls`, `--tls-listen`): one `ServerTls` for the node (its certificates, reloaded by
SIGHUP and `refresh_certs`, and its handshake counter); the main listener is TLS with `--tls`,
and `--tls-listen` adds a second `ConnectionServer` that is TLS while the main one stays
plain. Requests are read and replies written through `conn.stream` either way.

Shutdown (SIGTERM/SIGINT): stop accepting, close idle connections at once, let busy
ones finish the batch in hand, and cancel whatever is left after the grace period.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, Protocol

import trio

from memring.backend.commands import (
    CloseConnection,
    CommandHandler,
    StartWatching,
    WriteFence,
)
from memring.backend.item_dumps import StreamedReply
from memring.backend.settings import BackendSettings
from memring.backend.stats import ConnectionEntry, ServerCounters, StatsReport, socket_text
from memring.backend.store import Store
from memring.netio import nonblocking
from memring.netio.client_listeners import open_client_listeners
from memring.netio.connection import (
    Connection,
    Handoff,
    HangUp,
    Parked,
    Receiver,
    carried_out,
)
from memring.netio.connection_server import ConnectionServer
from memring.netio.heap import TRIM_THRESHOLD, heap_trim
from memring.netio.tls import ServerTls
from memring.protocol.ascii_auth import AuthenticatingParser, Authenticator
from memring.protocol.binary_parser import BinaryRequestParser
from memring.protocol.negotiation import NegotiatingParser, TextParser
from memring.protocol.replication import ORIGIN, Position
from memring.protocol.request_parser import NEED_DATA, RequestParser
from memring.protocol.requests import Get, Quit
from memring.protocol.sizes import limit_repeats
from memring.protocol.write_points import WritePoints, block_of

log = logging.getLogger("memring.backend")

FLUSH_SIZE = 1 << 20
GET_SLICE = 64  # keys of one multi-get handled between flushes
CRAWL_INTERVAL = 30.0  # seconds between crawls for expired items (Store.crawl_expired)


def _held_from(out: list[bytes], sendable: int) -> int:
    """Where the replies memcached holds begin, while it waits for the rest of a data block
    (protocol.write_points): from `sendable` on, unless they pass FLUSH_SIZE, which memring
    sends rather than hold (memcached holds at most REQUESTS_PER_EVENT + 1 replies, each up
    to its item size)."""
    return sendable if sum(map(len, out[sendable:])) <= FLUSH_SIZE else len(out)


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


def _keys_of(event: object) -> Sequence[bytes]:
    """The keys whose state a request's reply depends on."""
    if type(event) is Get:
        return event.keys
    key = getattr(event, "key", None)
    return (key,) if key else ()  # a binary frame without a key has key b""


class BackendServer:
    def __init__(self, settings: BackendSettings, fence: WriteFence | None = None,
                 auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.auth = auth  # memcached's -Y: clients authenticate first (None: off)
        self.store = Store(memory_limit=settings.memory << 20,
                           max_item_size=settings.max_item_size)
        self.counters = ServerCounters()
        self.stats = StatsReport(settings, self.store, self.counters, auth=auth)
        self.handler = CommandHandler(self.store, self.stats, fence)
        self.tls = ServerTls(settings.tls_settings) if settings.tls_enabled else None
        self.stats.tls = self.tls
        self.connections = ConnectionServer(self, settings.max_connections,
                                            self.counters, idle_timeout=settings.idle_timeout,
                                            tls=self.tls if settings.tls else None)
        # --tls-listen: TLS on a second port, the same connection limit and counters
        self.tls_connections = ConnectionServer(
            self, settings.max_connections, self.counters,
            idle_timeout=settings.idle_timeout, tls=self.tls) if settings.tls_listen else None
        self.tls_port = 0
        self._reaper = trio.CancelScope()
        self.gate: ReplicationGate | None = None
        self._parsers: dict[Connection, RequestParser] = {}
        self._conversations: dict[Connection, Conversation] = {}
        self._watchers: set[Connection] = set()
        self._dump_turn = trio.Lock()  # one dump at a time (_stream)
        self.stats.connections = self._connection_entries

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        settings = self.settings
        listener, tls_listener = open_client_listeners(settings)
        port = listener.getsockname()[1]
        self.stats.port = port
        self.counters.total_connections = 1  # memcached counts its listening socket too
        if tls_listener is not None:
            self.tls_port = tls_listener.getsockname()[1]
        async with trio.open_nursery() as services:
            services.start_soon(self._reap_forever)
            await services.start(self.connections.serve, listener)
            if self.tls_connections is not None:
                await services.start(self.tls_connections.serve, tls_listener)
            task_status.started(port)
        # (the nursery exits when shutdown() has stopped the connection server)

    def reload_files(self) -> None:
        """SIGHUP: read again what the node loaded from files (the TLS certificates; a file
        that does not load leaves the old one in place, logged)."""
        if self.tls is not None:
            self.tls.reload()

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop accepting; close idle connections now and the rest after `grace` s."""
        self.connections.shutdown(grace)
        if self.tls_connections is not None:
            self.tls_connections.shutdown(grace)
        self._reaper.cancel()

    async def _reap_forever(self) -> None:
        """Expired items: the LRU's cold end every reap interval, and every CRAWL_INTERVAL a
        crawl of all of them (Store.crawl_expired; off with `lru_crawler disable`), a chunk
        at a time with other connections served between chunks."""
        runtime = self.stats.runtime
        crawled = trio.current_time()
        with self._reaper:
            while True:
                await trio.sleep(self.settings.reap_interval)
                self.store.reap()
                if trio.current_time() - crawled < CRAWL_INTERVAL:
                    continue
                crawled = trio.current_time()
                if runtime.lru_crawler and self.store.items:
                    held = self.store.record_bytes
                    for _dropped in self.store.crawl_expired():
                        await trio.lowlevel.checkpoint()
                    # what the crawl freed goes back to the system, as after flush_all
                    if (held - self.store.record_bytes >= TRIM_THRESHOLD
                            and heap_trim.malloc_trim is not None):
                        heap_trim.trim()

    def opened(self, conn: Connection) -> Receiver:
        """ReadyHandler: a new connection, its parser chosen by the first byte."""
        settings = self.settings
        auth = self.auth

        def text() -> RequestParser | AuthenticatingParser:
            requests = RequestParser(max_line=settings.max_line,
                                     max_item_size=settings.max_item_size)
            self._parsers[conn] = requests  # stats conns: conn_nread while a data block comes
            # in front of the requests until the client authenticated (--auth-file)
            return requests if auth is None else AuthenticatingParser(requests, auth)

        def binary() -> BinaryRequestParser:
            # with --auth-file: SASL PLAIN against the same file first
            return BinaryRequestParser(max_item_size=settings.max_item_size, auth=auth)

        # memcached's -B auto: the first byte chooses text or binary for the connection
        conversation = Conversation(self, conn, NegotiatingParser(text, binary))
        self._conversations[conn] = conversation
        return conversation.received

    def holds_input(self, conn: Connection) -> bool:
        """ReadyHandler: part of a request is buffered."""
        return self._conversations[conn].parser.buffered > 0

    def closed(self, conn: Connection) -> None:
        """ReadyHandler: `conn` closes; its parser's buffer is freed with it (netio.heap)."""
        self._parsers.pop(conn, None)  # a binary connection has none
        conversation = self._conversations.pop(conn, None)
        if conversation is not None:
            conn.held = conversation.parser.buffered

    async def _flush(self, conn: Connection, out: list[bytes],
                     depends: Position = ORIGIN) -> None:
        """Send `out`; in sync mode, first wait until this connection's writes replicated,
        and the newest mutation the replies depend on (`depends`, any connection's)."""
        gate = self.gate
        if gate is not None and (
                (gate.commits != conn.mark and not await gate.settle())
                or (depends > ORIGIN and not await gate.settle_reads(depends))):
            # This node stopped leading before its in-sync followers held the write: no
            # answer is true, so none is given (the client sees the connection close).
            out.clear()
            raise CloseConnection
        data = b"".join(out)
        out.clear()
        self.counters.bytes_written += len(data)
        conn.writing = True
        try:
            await conn.stream.send_all(data)
        finally:
            conn.writing = False
        if gate is not None:
            conn.mark = gate.commits  # committed while we waited: other connections'

    async def _stream(self, conn: Connection, chunks: Generator[bytes, None, None],
                      out: list[bytes], depends: Position) -> None:
        """A dump (stats cachedump, lru_crawler metadump) after the replies before it in `out`:
        chunk by chunk, flushed whenever FLUSH_SIZE bytes wait, other connections running
        between chunks. The last chunk stays in `out`, sent with the rest of the batch. One
        dump runs at a time (the others wait their turn): each holds a snapshot of the keys
        (8 bytes a key), which must not be multiplied by the number of clients asking."""
        try:
            async with self._dump_turn:
                for chunk in chunks:  # the generator takes its snapshot on the first chunk
                    out.append(chunk)
                    if sum(map(len, out)) >= FLUSH_SIZE:
                        await self._flush(conn, out, depends)
                        depends = ORIGIN
                    await trio.lowlevel.checkpoint()
        finally:
            chunks.close()  # a connection gone mid-dump ends the walk (and the crawl's BUSY)
        if depends > ORIGIN:
            await self._flush(conn, out, depends)

    async def _watch(self, conn: Connection) -> None:
        """memcached's conn_watch: OK, then the connection is only held (its input dropped)
        until the client closes it or the server shuts down; memring writes no log lines."""
        admin = self.stats.admin
        admin.watchers += 1
        self._watchers.add(conn)
        try:
            await self._flush(conn, [b"OK\r\n"])
            conn.idle = True  # shutdown closes it at once; never `reading`: no idle timeout
            while not self.connections.closing:
                if not await conn.stream.recv(nonblocking.READ_SIZE):
                    return
        finally:
            admin.watchers -= 1
            self._watchers.discard(conn)

    def _connection_entries(self) -> list[ConnectionEntry]:
        """`stats conns`: the listening sockets and every client connection."""
        entries = []
        started = self.stats.started
        now = trio.current_time()
        for server in (self.connections, self.tls_connections):
            if server is None:
                continue
            if server.listener is not None and server.listener.fileno() != -1:
                entries.append(ConnectionEntry(
                    server.listener.fileno(), socket_text(server.listener.getsockname()), None,
                    "conn_listening", int(time.time() - started)))
            for conn in server.connections():
                entry = self._connection_entry(conn, now)
                if entry is not None:
                    entries.append(entry)
        return entries

    def _connection_entry(self, conn: Connection, now: float) -> ConnectionEntry | None:
        try:
            fd = conn.sock.fileno()
            addr, listen = conn.sock.getpeername(), conn.sock.getsockname()
        except OSError:
            return None  # closing
        parser = self._parsers.get(conn)
        if conn in self._watchers:
            state = "conn_watch"
        elif conn.reading:
            state = "conn_nread" if parser is not None and parser.in_data_block else "conn_read"
        elif conn.writing:
            state = "conn_mwrite"
        else:
            state = "conn_parse_cmd"  # the connection running this command
        idle = 0 if state == "conn_parse_cmd" else int(now - conn.active)
        return ConnectionEntry(fd, socket_text(addr), socket_text(listen), state, idle)

    async def _multi_get(self, conn: Connection, request: Get, out: list[bytes],
                         depends: Position) -> None:
        """A get of many keys, answered a slice at a time so big replies stream; `depends`:
        what the replies before it in `out` depend on."""
        if self.handler.refuse_write(request, out) if request.touches else \
                self.handler.refuse_read(out):
            return  # gat/gats change items: only a leader may; reads as the fence says
        keys = limit_repeats(request.keys)  # as memcached, a key at most 59,999 times
        recorder = self.handler.recorder if request.touches else None
        gate = self.gate
        for start in range(0, len(keys), GET_SLICE):
            chunk = keys[start: start + GET_SLICE]
            self.handler.values(request, chunk, out)
            if recorder is not None:
                recorder.committed(None)  # gat/gats touched items: replicate the slice
            if gate is not None:
                depends = gate.unacknowledged(chunk, depends)
            if sum(map(len, out)) >= FLUSH_SIZE:
                await self._flush(conn, out, depends)
                depends = ORIGIN
        out.append(b"END\r\n")
        if depends > ORIGIN:  # the END goes with the batch's last flush: wait here
            await self._flush(conn, out, depends)


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

    __slots__ = ("block", "conn", "depends", "event", "hanging_up", "later", "negotiated",
                 "next_event", "now", "out", "parser", "points", "quitting", "receive_data",
                 "replied", "sendable", "served", "server", "settled", "text", "watching")

    def __init__(self, server: BackendServer, conn: Connection,
                 parser: NegotiatingParser) -> None:
        self.server = server
        self.conn = conn
        self.parser = parser
        self.next_event = parser.next_event  # the chosen parser's, once the first byte came
        self.receive_data = parser.receive_data  # the same
        self.now = trio.lowlevel.current_clock().current_time  # trio.current_time, direct
        self.negotiated = False
        self.text: TextParser | None = None  # write points: text only (protocol.write_points)
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
        server = self.server
        gate = server.gate
        if gate is not None and not self.out:
            conn.mark = gate.commits  # writes so far were other connections'
        server.counters.bytes_read += len(data)
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
        self.points = WritePoints(block=block)
        self.sendable = self.replied = 0
        self.event = None
        self.served = self.quitting = self.watching = self.hanging_up = False
        wait = self._serve_batch()
        if wait is not None:
            return self._finish(wait)
        return self._end_batch()

    def _serve_batch(self) -> Coroutine[Any, Any, None] | None:
        """Answer the complete requests in order; None at the end of the input, or what must
        be awaited before calling again."""
        out = self.out
        points = self.points
        text = self.text
        next_event = self.next_event
        handle = self.server.handler.handle
        gate = self.server.gate
        event: object = self.event
        try:
            while True:
                event = next_event()
                if event is NEED_DATA:
                    return None
                self.served = True
                if text is not None:  # binary replies are written after each read
                    if points.before():
                        self.sendable = len(out)
                    points.after(event, text.swallow_left)
                if type(event) is Get and len(event.keys) > GET_SLICE:
                    self.event = event
                    return self._multi_get(event)
                self.replied = len(out)
                try:
                    handle(event, out)
                except StreamedReply as dump:
                    self.event = event
                    return self._stream(dump.chunks)
                except StartWatching:
                    self.watching = True
                    return None
                if gate is not None:
                    self.depends = gate.unacknowledged(_keys_of(event), self.depends)
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
        await self.server._multi_get(self.conn, request, self.out, self.depends)
        self.depends = ORIGIN  # _multi_get flushed what depended on it
        self.sendable = len(self.out)

    async def _stream(self, chunks: Generator[bytes, None, None]) -> None:
        await self.server._stream(self.conn, chunks, self.out, self.depends)
        self.depends = ORIGIN
        self.sendable = len(self.out)

    async def _flush_early(self) -> None:
        await self.server._flush(self.conn, self.out, self.depends)
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
        return _held_from(out, self.sendable)

    def _end_batch(self) -> Handoff | type[HangUp] | type[Parked] | None:
        """Send what memcached would have written by now, without waiting if the kernel
        takes it all (and no replication wait comes first)."""
        out = self.out
        text = self.text
        if not self.hanging_up and (text is None or not text.in_data_block):
            sendable = len(out)  # the common case, inline
        else:
            sendable = self._sendable_at_end()
        if sendable:
            held = out[sendable:] if sendable < len(out) else []
            del out[sendable:]
            conn = self.conn
            gate = self.server.gate
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
            self.conn.active = self.now()  # idle from the last reply sent
        return None

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
        gate = self.server.gate
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
        self.server.counters.bytes_written += len(data)
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
            self.conn.active = self.now()  # idle from the last reply sent
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
                await self.server._flush(self.conn, out, self.depends)
                out[:] = held
                if not held:
                    self.depends = ORIGIN
        except CloseConnection:
            return False
        return await carried_out(self._after_send())

    async def _flush_then_end(self, held: list[bytes]) -> bool:
        try:
            await self.server._flush(self.conn, self.out, self.depends)
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
        gate = self.server.gate
        if gate is not None:
            conn.mark = gate.commits  # committed while we waited: other connections'
        return await carried_out(self._after_send())

    async def _watch(self) -> bool:
        await self.server._watch(self.conn)
        return False
