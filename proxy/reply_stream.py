"""The replies to one client, in request order, sent as soon as they can be.

Theory of operation: the session appends each issued request's `Slot` to `queue`; replies
leave from its head, in order. Most are sent by `reply_arrived`, which a backend
connection's reader calls once it has parsed a read that completed one of this client's
replies: the reply goes out from the reader's turn, so the session task is woken only by
its client's next request, never once per reply (that wake-up, with its `trio.Event`, cost
more than the rest of a forwarded get).

Three cases leave that fast path for a drainer task, which awaits the slots in order and
sends with a write timeout: a head slot that needs more than its first answer (a read
failing over, a write waiting for a leader or retried after a refusal: `Slot.poll()` says
NEEDS_TASK), a big multi-get's `SlicedReply` (rendered a slice at a time, each once the
previous one has left, with a checkpoint between slices so that a fast reader of a huge
reply cannot hold the others up) or a dump's `StreamedReply` (awaited shard by shard), and a client that does not take its replies as fast as
they come (a partial send). The fast path resumes once the drainer has emptied the queue.
Replies go through the client's `conn.stream` (netio.streams): a TLS stream takes a whole
send and keeps what the socket refused as `backlog`, so a send that leaves a backlog is a
partial send here too (the drainer waits for it, the budget is charged for it).

Replies leave only where memcached writes them (protocol.write_points): the session keeps
`held`, the slots at the queue's tail issued since memcached's last write point, unsent while
it issues a batch, and after it when the batch ended inside a data block, until a later
batch reaches a write point or its end (a client that closes first never gets them). Held slots do not count
against the window: there are at most REQUESTS_PER_EVENT + 1 of them.

Bounds per client: the session issues its next batch only once the previous one is
answered (`answered`), and a batch is at most `window` requests: 4 on a new connection,
doubling each time a full window is answered, up to MAX_OUTSTANDING, and cut so that a
batch's replies fit the client's budget (`--client-buffer-bytes`) once a batch overran it.
A client that never reads therefore holds at most a few replies here. Rendered replies wait
in pieces of at most min(FLUSH_SIZE, budget); a piece its socket does not take within
`--client-write-timeout-ms` closes the client. Every byte waiting (and every partial
request its parser holds: the session charges those) is charged to the proxy-wide
`BufferBudget`; a charge that would pass it closes this client with memcached's
`SERVER_ERROR out of memory ...`, and `close()` gives everything back.
"""

from __future__ import annotations

import itertools
import logging
import socket
from typing import ClassVar, Final

import trio

from memring.netio import nonblocking
from memring.netio.connection import Connection
from memring.netio.connection_server import ConnectionServer
from memring.netio.streams import PlainStream
from memring.proxy.buffer_budget import OUT_OF_MEMORY_WRITING, BufferBudget
from memring.proxy.held_replies import held_bytes
from memring.proxy.slots import NEEDS_TASK, WAITING, Poll, Ready, Reply, SlicedReply, Slot
from memring.proxy.split_get import SplitGet
from memring.proxy.stats import ProxyStats

log = logging.getLogger("memring.proxy")
_WAITING: Final = WAITING  # Final: a native static, not a module-dict lookup per poll
_NEEDS_TASK: Final = NEEDS_TASK

FLUSH_SIZE = 1 << 20     # replies waiting past this are sent before resolving more
MAX_OUTSTANDING = 32     # requests of one client in flight before the proxy reads on
INITIAL_WINDOW = 4       # ... on a new connection, until it has taken its replies


class ReplyStream:
    __slots__ = ("_answered", "_batch_bytes", "_batch_replies", "_budget", "_buffers",
                 "_closed", "_conn", "_drainer", "_flush_size", "_held_most", "_held_out",
                 "_held_replies", "_in_hand", "_nursery", "_plain", "_server", "_stats",
                 "_stream", "_unsent", "_write_timeout",
                 "affinity", "held", "held_input", "idle_when_answered", "queue",
                 "started", "waiting_for_client", "window")

    _clients: ClassVar[itertools.count[int]] = itertools.count()

    def __init__(self, conn: Connection, server: ConnectionServer, stats: ProxyStats,
                 nursery: trio.Nursery, buffers: BufferBudget, budget: int,
                 write_timeout: float) -> None:
        """`nursery` runs the drainer (shared by all clients: a nursery per client cost
        memory; the drainer has its own cancel scope, cancelled with the client).
        `buffers` is the proxy-wide budget, `budget` this client's (bytes of replies)."""
        self.affinity = next(self._clients)  # which connection of each node this client uses
        # slots issued, in request order (at most MAX_OUTSTANDING: a list is smaller)
        self.queue: list[Slot] = []
        self.window = INITIAL_WINDOW  # requests the session issues before awaiting replies
        # slots at the queue's tail whose replies memcached would still hold: the client's
        # batch ended inside a data block (memcached.c conn_nread); the session sets it
        self.held = 0
        self.started = 0.0  # when the batch in the queue was read (perf_counter)
        self.waiting_for_client = False  # the session waits for a request (in recv)
        self.idle_when_answered = False  # ... with no partial request buffered
        self._conn = conn
        self._stream = conn.stream
        # a plain stream's socket, sent to directly on the fast path: PlainStream.send_now
        # is an interpreted frame per reply (docs/benchmarks.md "Round six: proxy")
        self._plain = conn.sock if type(conn.stream) is PlainStream else None
        self._server = server
        self._stats = stats  # each reply's latency (compiled: a native call)
        self._nursery = nursery
        self._buffers = buffers
        self._budget = budget
        self._flush_size = min(FLUSH_SIZE, budget)
        self._write_timeout = write_timeout
        self._drainer: trio.CancelScope | None = None  # while a drainer owns the queue
        self._unsent: bytes | memoryview = b""  # the tail of a partial send, for the drainer
        self._answered: trio.Event | None = None
        self._closed = False
        self.held_input = 0  # bytes charged to `buffers`: the parser's partial requests
        self._held_out = 0  # ... and replies waiting for the socket
        self._held_most = 0
        self._held_replies = 0  # ... and, while a drainer owns the queue, what its slots hold
        self._in_hand: Slot | None = None  # the slot whose reply the drainer is sending
        self._batch_bytes = 0  # replies sent since the window was last adjusted
        self._batch_replies = 0

    @property
    def closed(self) -> bool:
        """The client was dropped (or its connection closed): nothing more goes to it."""
        return self._closed

    @property
    def behind(self) -> bool:
        """Its replies wait for it (a drainer owns the queue): a backend connection cut
        for an overdue reply sends this client's reads after the others'."""
        return self._drainer is not None

    @property
    def answered(self) -> bool:
        """Every issued request's reply has been sent, but for the `held` ones."""
        return len(self.queue) <= self.held and self._drainer is None

    async def wait_answered(self) -> None:
        while not self.answered:
            if self._answered is None:
                self._answered = trio.Event()
            await self._answered.wait()

    def adjust_window(self) -> None:
        """A full window was answered: widen it, or narrow it to the client's budget if its
        replies overran it (measured by their mean size)."""
        sent, count = self._batch_bytes, self._batch_replies
        self._batch_bytes = self._batch_replies = 0
        if sent > self._budget and count:
            self.window = max(1, count * self._budget // sent)
        elif self.window < MAX_OUTSTANDING:
            self.window = min(MAX_OUTSTANDING, self.window * 2)

    def hold_input(self, size: int) -> bool:
        """Charge the `size` bytes the parser holds (partial requests); False if they would
        pass the proxy-wide budget (the session then refuses the client)."""
        if self._closed:
            return False
        if not self._buffers.change(self.held_input, size):
            self._held_most = max(self._held_most, size)  # its parser holds it all the same
            return False
        self.held_input = size
        self._held_most = max(self._held_most, size + self._held_out)
        return True

    def _hold_output(self, size: int, force: bool = False) -> bool:
        """Charge `size` bytes of replies waiting for the socket (0: they left)."""
        if self._closed:
            size = 0
        if not self._buffers.change(self._held_out, size, force):
            self._held_most = max(self._held_most, size)
            return False
        self._held_out = size
        self._held_most = max(self._held_most, size + self.held_input)
        return True

    def close(self) -> int:
        """The session is over: never write to its socket again (its fd may be reused), and
        give back what it held; returns the most it ever held (netio.heap trims the heap
        after big ones)."""
        self._closed = True
        self._buffers.change(self.held_input + self._held_out + self._held_replies, 0)
        self.held_input = self._held_out = self._held_replies = 0
        self._unsent = b""
        self._in_hand = None
        self.queue.clear()  # the slots' replies go now, not when the collector finds them
        if self._drainer is not None:
            self._drainer.cancel()
        return self._held_most

    def reply_arrived(self) -> None:
        """Send the replies that are ready at the head of the queue, without waiting."""
        # The hot path of every forwarded reply, called twice a request (after the batch
        # is issued, and by the reader once the reply came): the head is polled here,
        # before anything is made for a send or another call.
        queue = self.queue
        ready = len(queue) - self.held  # slots whose replies may leave
        if self._drainer is not None:
            self._charge_replies()  # the client is behind: what it holds here counts
            return
        if ready <= 0 or self._closed:
            return
        reply = queue[0].poll()
        if reply is _WAITING:
            return  # its backend's reader calls again
        try:
            self._send_ready(queue, ready, reply)
        except OSError as exc:
            self.drop(exc)

    def send_ready(self) -> None:
        """The session, after issuing a batch."""
        self.reply_arrived()

    def _send_ready(self, queue: list[Slot], ready: int, reply: Poll) -> None:
        """Send the head's `reply` and the ready replies after it: they are polled by index
        and taken off the queue at once, the count of ready slots kept, not recounted."""
        flush_size = self._flush_size
        started = self.started
        while ready > 0:
            if reply is _WAITING:
                return  # its backend's reader calls again
            if type(reply) is not bytes:  # NEEDS_TASK, or a SlicedReply to send in slices
                self._start_drainer(b"")
                return
            self._stats.observe_reply(started)
            size = len(reply)
            taken = 1
            needs_task = False
            if taken < ready and size < flush_size:  # more pipelined replies may be ready
                out = [reply]
                while taken < ready:
                    reply = queue[taken].poll()
                    if reply is _WAITING:
                        break
                    if type(reply) is not bytes:
                        needs_task = True
                        break
                    taken += 1
                    self._stats.observe_reply(started)
                    out.append(reply)
                    size += len(reply)
                    if size >= flush_size:
                        break  # send these before rendering more
                reply = b"".join(out)
            del queue[:taken]
            ready -= taken
            self._batch_replies += taken
            self._batch_bytes += size
            plain = self._plain
            if plain is not None:  # as PlainStream.send_now, inline (no backlog)
                backlog = 0
                try:
                    sent = plain.send(reply) if size else 0
                except BlockingIOError:
                    sent = 0
            else:
                stream = self._stream
                sent = stream.send_now(reply) if size else 0
                backlog = stream.backlog
            if sent < size or backlog:
                # Nothing of it sent: refusable at a reply boundary; else the reply started.
                if not self._hold_output(size - sent + backlog, force=sent > 0):
                    self._refuse()
                    return
                self._start_drainer(memoryview(reply)[sent:])
                return
            if needs_task:
                self._start_drainer(b"")
                return
            if size < flush_size and ready > 0:
                return  # the next slot waits for a backend
            if ready > 0:
                reply = queue[0].poll()
        self._done()

    def _start_drainer(self, unsent: bytes | memoryview) -> None:
        self._drainer = trio.CancelScope()
        self._unsent = unsent
        self._nursery.start_soon(self._drain, self._drainer)

    async def _drain(self, scope: trio.CancelScope) -> None:
        """Await the queue's slots in order and send their replies, like the session did
        before the fast path; drop the client if it does not read for the write timeout."""
        with scope:
            if await self._drain_queue():
                self._drainer = None
                self._in_hand = None
                self._done()

    async def _drain_queue(self) -> bool:
        """False if the client was dropped."""
        queue = self.queue
        observe = self._stats.observe_reply
        flush_size = self._flush_size
        try:
            if self._unsent or self._stream.backlog:  # charged when the fast path handed it over
                unsent, self._unsent = self._unsent, b""
                if not await self._wait_sent(unsent):
                    return False
            out: list[bytes] = []
            size = 0
            while len(queue) > self.held:
                slot = queue[0]
                reply: Reply
                if type(slot) is Ready:
                    reply = slot.data
                else:
                    polled = slot.poll() if out else _WAITING
                    if polled is _WAITING or polled is _NEEDS_TASK:
                        # Replies ready go before a slot that must wait: writes waiting for
                        # a new leader settle one round trip each, and the first one's
                        # STORED waited for all of them (bench/many_failovers.py's logs).
                        if out and not await self._send(out, True):
                            return False
                        size = 0
                        reply = await slot.reply()
                    else:
                        reply = polled
                del queue[0]
                self._in_hand = slot  # (its reply's blocks are held until the next is taken)
                observe(self.started)
                self._batch_replies += 1
                if isinstance(reply, bytes):
                    out.append(reply)
                    size += len(reply)
                    if size >= flush_size:
                        if not await self._send(out, True):
                            return False
                        size = 0
                    continue
                boundary = True  # `out` ends where a reply ends
                while not reply.done:
                    if isinstance(reply, SlicedReply):
                        piece = reply.next_slice()
                    else:
                        piece = await reply.next_piece()
                    out.append(piece)
                    size += len(piece)
                    if size >= flush_size or reply.done:
                        if not await self._send(out, boundary):
                            return False
                        size = 0
                        boundary = reply.done
                        # A client that reads as fast as this renders must not keep the
                        # proxy's other clients waiting for the whole reply.
                        await trio.lowlevel.checkpoint()
            if out and not await self._send(out, True):
                return False
        except OSError as exc:
            self.drop(exc)
            return False
        return True

    async def _send(self, out: list[bytes], boundary: bool) -> bool:
        """Send `out` (and clear it); what the socket does not take at once is charged to
        the proxy-wide budget while it waits. False if the client was dropped."""
        data = b"".join(out)
        out.clear()
        if self._closed:
            return False
        self._batch_bytes += len(data)
        stream = self._stream
        sent = stream.send_now(data)
        if sent == len(data) and not stream.backlog:
            return True
        # Refused only where the client has whole replies so far (nothing of `data` sent,
        # starting at a reply's start); a reply under way is charged and finished.
        if not self._hold_output(len(data) - sent + stream.backlog,
                                 force=sent > 0 or not boundary):
            self._refuse()
            return False
        return await self._wait_sent(memoryview(data)[sent:])

    async def _wait_sent(self, data: bytes | memoryview) -> bool:
        """Send `data` and whatever the stream holds back (its TLS backlog)."""
        self._charge_replies()
        if self._closed:
            return False
        with trio.move_on_after(self._write_timeout) as scope:
            await self._stream.send_all(data)
        if scope.cancelled_caught:
            log.info("dropping a client that did not read its replies for %.0f s",
                     self._write_timeout)
            self.drop(None)
            return False
        self._hold_output(0)
        self._charge_replies()
        return not self._closed

    def _charge_replies(self) -> None:
        """A drainer owns the queue (the client is behind, or a big reply goes in slices):
        charge what its queued replies and the one being sent hold (proxy/held_replies.py).
        They are in hand, so the charge is forced; one that passes the budget closes the
        client, with memcached's error line if it stands between whole replies."""
        if self._closed:
            return
        held = sum([held_bytes(slot) for slot in self.queue])
        if self._in_hand is not None:
            held += held_bytes(self._in_hand)
        self._charge(held)

    def hold_arriving(self, size: int) -> None:
        """A backend connection read `size` bytes of a reply to this client that spans
        reads (a big one): charged as they come, counted exactly once replies leave."""
        if not self._closed:
            self._charge(self._held_replies + size)

    def _charge(self, held: int) -> None:
        """Charge `held` bytes of replies; past the budget, close the client."""
        buffers = self._buffers
        grew = held > self._held_replies
        buffers.change(self._held_replies, held, force=True)
        self._held_replies = held
        self._held_most = max(self._held_most, held + self._held_out + self.held_input)
        if grew and buffers.used > buffers.limit:
            buffers.refusals += 1
            if self._between_replies():
                self._refuse()
            else:  # no line fits inside a reply under way: the close says it
                buffers.log_refusal("replies")
                self.drop(None)

    def _between_replies(self) -> bool:
        """Whatever went to the client so far ends where a reply ends."""
        if self._held_out or self._unsent or self._stream.backlog:
            return False
        in_hand = self._in_hand
        return not isinstance(in_hand, SplitGet) or in_hand.sliced is None or \
            in_hand.sliced.done

    def _refuse(self) -> None:
        """Holding more for this client would pass --max-buffered-bytes: tell it as memcached
        tells a client it cannot allocate for, and close it; the others keep theirs."""
        self._buffers.log_refusal("replies")
        try:
            self._stream.send_now(OUT_OF_MEMORY_WRITING)
            self._stream.sock.shutdown(socket.SHUT_WR)  # the answer, then EOF, before any reset
        except OSError:
            pass  # it is being closed either way
        self.drop(None)

    def _done(self) -> None:
        """Everything issued is answered: let the session issue more, or stop it when the
        server is shutting down and it only waits for its client."""
        if self._held_replies:  # (the fast path charges nothing: only after big replies)
            self._charge_replies()
        if self._answered is not None:
            self._answered.set()
            self._answered = None
        if self.waiting_for_client:
            if self._server.closing:
                self._server.end(self._conn)
            else:
                self._conn.idle = self.idle_when_answered

    def drop(self, error: OSError | None) -> None:
        """The client is gone or does not read: end its connection (its handler closes the
        socket)."""
        if error is not None and error.errno not in nonblocking.PEER_GONE:
            log.info("connection error: %s", error)
        if self._closed:
            return  # closed already (its connection too, or on its way)
        self._closed = True
        self._server.end(self._conn)
