"""One pipelined connection from the proxy to a backend node.

Theory of operation: callers `submit()` an encoded request and get a `PendingReply`; the
bytes go to an outbox that a writer task sends in batches, and the reply slot joins a
FIFO. Because every forwarded request asks for a reply (the encoder strips noreply and
`q`), the reader task matches reply events to slots by order alone; each event must also
have a shape that answers its request (protocol.reply_shapes: the command's status words,
the values of the keys it asked for), else the stream is out of step and the connection
fails, with every request on it, rather than hand a reply to a request it does not answer. Many client
requests are thus in flight on one connection at once. Once a read is parsed, the reader
tells the listener of each reply it completed (the client's `ReplyStream`), which sends
what is ready from the reader's turn.

A reply not complete by its deadline (counted from the send, including the wait behind
other clients' replies on the connection) is judged by the bytes read in the last window
(PROGRESS_WINDOW of the timeout):
- none (a frozen or dead backend): the connection fails, the socket is
  closed and every slot still waiting is failed, because after a lost reply the stream can
  no longer be matched. The owner (`NodePool`) counts the failure towards ejection and
  reconnects.
- bytes keep arriving, and some of the replies still owed are for clients that have gone
  (the buffer budget closed them), or a client that takes its replies waits behind one
  that does not (its replies pile up in the proxy): the connection is cut rather than read
  on (already at EARLY_CUT of the head's timeout, so fewer requests queue up meanwhile). The live clients' reads of which nothing has arrived are handed to the owner
  (`on_cut`), which sends them once more, on a fresh connection, the clients that take
  their replies first; the rest fail as above (proxy/cut_connection.py says which). A cut
  is not the backend's failure: it does not count towards ejection.
- bytes keep arriving for clients that take them: the head waits on, judged again every
  window, until OVERDUE_LIMIT timeouts past its deadline.
Round seven extended the overdue head while reads arrived without the cut: the proxy then
read every byte owed to the clients the budget had closed, and in bench/hostile_clients.py
e-manykeys the well-behaved clients waited past their own 2 s timeout (8 and 12 errors
against 4 and 4, proxy peak 436-445 MB against 359-380).

A plain connection is read and written by the proxy's client loop when one is running
(netio.ready_loop's `serving_loop()`, the connection a `LoopedSocket` in its epoll set): a
reply is parsed and settled in the loop's pass, which also sends its client's reply, and the
requests queued during a pass leave in one nonblocking send at its end. The writer task
sends only what the kernel did not take at once (and the requests queued outside a pass);
the reader task, parked meanwhile, reads only once the loop has ended (shutdown). Either
way the task and the loop share one parser, so a reply split across the two is whole.

With backend TLS the connection's stream is a `TlsStream` (netio.streams) over the same
socket, else a `PlainStream`: the reader and writer see the same four calls either way. The
handshake belongs to `connect()`, under the same deadline as the TCP connect, and is
confirmed by one `version` round trip: in TLS 1.3 the backend checks the proxy's client
certificate after the proxy's side of the handshake has finished, so a refusal only arrives
with the first reply. Any failure there is a `HandshakeFailed` naming the reason.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable

import trio

from memring.netio import nonblocking
from memring.netio.ready_loop import ReadyLoop, serving_loop
from memring.netio.streams import PlainStream, TlsStream
from memring.protocol import NEED_DATA, ResponseError, ResponseParser
from memring.protocol.ascii_auth import Login, auth_request
from memring.protocol.reply_shapes import ReplyShape, reply_shape
from memring.protocol.response_parser import Unauthenticated
from memring.protocol.responses import End, ErrorReply, Line, Response, Status, VersionReply
from memring.proxy.cut_connection import resendable, worth_cutting
from memring.proxy.edge_reads import EdgePoller, EdgeReader
from memring.proxy.pending_reply import UNDATED, PendingReply, ReplyListener

log = logging.getLogger("memring.proxy")

# An overdue reply is judged by the bytes read in the last window of this share of the
# timeout: none fails the connection (a frozen backend fails at its deadline, as before).
PROGRESS_WINDOW = 0.125
# A reply still there at this share of its timeout, bytes arriving, is cut early when
# worth it (proxy/cut_connection.py).
EARLY_CUT = 0.25
# ... and while bytes arrive for live clients only, it waits at most this many timeouts
# past its deadline.
OVERDUE_LIMIT = 4.0


class ConnectionFailed(Exception):
    pass


class HandshakeFailed(ConnectionFailed):
    """The TCP connection was made but TLS was not: the message says why."""


# What the backend's TLS alerts mean from the proxy's side (OpenSSL's reason codes).
_ALERTS = {
    "CERTIFICATE_REQUIRED": "the backend requires a client certificate (--backend-tls-cert)",
    "UNKNOWN_CA": "the backend does not trust the proxy's client certificate (unknown CA)",
    "CERTIFICATE_EXPIRED": "the backend refused the proxy's client certificate as expired",
    "BAD_CERTIFICATE": "the backend refused the proxy's client certificate",
    "CERTIFICATE_UNKNOWN": "the backend refused the proxy's client certificate",
    "HANDSHAKE_FAILURE": "the backend refused the handshake",
}


def handshake_problem(exc: BaseException) -> str:
    """A TLS failure in words an operator acts on."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the backend's certificate is not accepted: {exc.verify_message}"
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    if isinstance(exc, EOFError):
        return "the backend closed the connection (a plain-text port, or it refused us)"
    text = (getattr(exc, "reason", None) or str(exc)).upper().replace(" ", "_")
    if "WRONG_VERSION_NUMBER" in text or "RECORD_LAYER_FAILURE" in text:
        return "the backend does not speak TLS on this port"
    for alert, meaning in _ALERTS.items():
        if f"ALERT_{alert}" in text:
            return meaning
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


class BackendConnection:
    def __init__(self, host: str, port: int, timeout: float,
                 on_failure: Callable[[str], None], on_success: Callable[[], None],
                 login: Login | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.login = login
        self.port = port
        self.timeout = timeout
        self._on_failure = on_failure
        self._on_success = on_success
        self._tls = tls
        self._sock: socket.socket | None = None
        self._stream: PlainStream | TlsStream | None = None
        self._reader: EdgeReader | None = None  # a plain stream's reads (proxy.edge_reads)
        self._outbox: list[bytes] = []
        self._writer: trio.lowlevel.Task | None = None  # parked until there is an outbox
        self._pending: deque[PendingReply] = deque()
        self._parser = ResponseParser()  # the replies' (the reader task's or the loop's)
        self._arrived: list[ReplyListener] = []  # told once a read is parsed
        self._loop: ReadyLoop | None = None  # the client loop that reads and sends, if any
        self._fd = -1  # the socket's, while the loop watches it
        self._flush_asked = False  # the loop sends the outbox at the end of its pass
        self._run_task: trio.lowlevel.Task | None = None  # parked while the loop reads
        self._became_busy = trio.Event()
        self._cancel = trio.CancelScope()
        self.alive = False
        self.received = 0  # bytes read: the progress an overdue reply is judged by
        # the owner's, to send the live reads of a cut connection again (None: never cut)
        self.on_cut: Callable[[list[PendingReply]], None] | None = None
        self.requests = 0
        self.max_in_flight = 0
        # the run's clock, asked directly for each reply's deadline (trio.current_time()
        # is three calls deep: ~2% of the proxy's CPU per request)
        self._clock = trio.lowlevel.current_clock()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def connect(self) -> None:
        """TCP, then TLS when configured, within one request timeout."""
        deadline = trio.current_time() + self.timeout
        try:
            with trio.fail_at(deadline):
                sock = await nonblocking.connect(self.host, self.port)
        except (OSError, trio.TooSlowError) as exc:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: "
                                   f"{getattr(exc, 'strerror', None) or 'timed out'}") from None
        self._sock = sock
        if self._tls is None:
            stream: PlainStream | TlsStream = PlainStream(sock)
        else:
            try:
                with trio.fail_at(deadline):
                    stream = await self._secure(sock, self._tls)
            except (OSError, EOFError, trio.TooSlowError) as exc:  # ssl.SSLError is an OSError
                self.close("TLS handshake failed")
                raise HandshakeFailed(f"TLS handshake with {self.host}:{self.port} failed: "
                                      f"{handshake_problem(exc)}") from None
            except BaseException:  # cancelled: the socket must not outlive this
                self.close("connect cancelled")
                raise
        self._stream = stream
        await self._authenticate(stream, self.login)
        self.alive = True

    async def _secure(self, sock: socket.socket, context: ssl.SSLContext) -> TlsStream:
        """The handshake, and a `version` round trip that carries the backend's verdict on
        our certificate (TLS 1.3 sends it after our side has finished)."""
        stream = TlsStream(sock, context, server_side=False, server_hostname=self.host)
        await stream.handshake()
        try:
            await stream.send_all(b"version\r\n")
        except OSError:
            pass  # reset by a backend that refused us: its alert may still be there to read
        line = b""
        while not line.endswith(b"\r\n"):  # any line: an auth gate's refusal answers too
            data = await stream.recv(1024)
            if not data:
                raise EOFError("closed during the first request")
            line += data
            if len(line) > 1024:  # nothing a backend says to `version` is that long
                raise ConnectionResetError("no memcached reply to version")
        return stream

    async def _authenticate(self, stream: PlainStream | TlsStream, login: Login | None
                            ) -> None:
        """memcached's ASCII authentication before the connection carries a request. A
        `version` first: a backend without an auth file would store the auth `set` as an
        item, readable by anyone; one with it answers `CLIENT_ERROR unauthenticated`. Without
        credentials that refusal fails the connection here, before any client's request:
        otherwise a client's `set` whose data is a backend user's `name password` would log
        the shared connection in for every client of the proxy."""
        where = f"{self.host}:{self.port}"
        try:
            with trio.fail_after(self.timeout):
                try:
                    reply = await self._ask(stream, b"version\r\n")
                except Unauthenticated:
                    if login is None:
                        raise ConnectionFailed(
                            f"{where} requires authentication (it answers CLIENT_ERROR "
                            "unauthenticated) and this proxy has no credentials: give it "
                            "--backend-auth-file") from None
                    try:
                        reply = await self._ask(stream, auth_request(*login))
                    except Unauthenticated as refusal:  # the gate's own refusals
                        raise ConnectionFailed(
                            f"authentication to {where} failed: it refused this proxy's "
                            f"user {login[0].decode(errors='replace')!r}: {refusal.line}"
                        ) from None
                    if reply != Status(b"STORED"):
                        raise ConnectionFailed(
                            f"authentication to {where} failed: {reply!r} instead of STORED"
                        ) from None
                    return
            if type(reply) is not VersionReply:
                raise ConnectionFailed(f"bad reply from {where} to version: {reply!r}")
        except (OSError, trio.TooSlowError, ResponseError) as exc:
            problem = getattr(exc, "strerror", None) or str(exc) or "timed out"
            self._discard()
            raise ConnectionFailed(f"authentication to {where} failed: {problem}") from None
        except ConnectionFailed:
            self._discard()
            raise
        except BaseException:  # cancelled: the socket must not outlive this
            self._discard()
            raise

    def _discard(self) -> None:
        if self._sock is not None:
            nonblocking.close(self._sock)
        self._sock = None
        self._stream = None

    @staticmethod
    async def _ask(stream: PlainStream | TlsStream, request: bytes) -> Response:
        """Send `request` on a connection nothing else uses yet; its one-line reply."""
        await stream.send_all(request)
        parser = ResponseParser()
        while True:
            data = await stream.recv(nonblocking.READ_SIZE)
            if not data:
                raise OSError(0, "closed the connection")
            parser.receive_data(data)
            event = parser.next_event()
            if event is not NEED_DATA:
                return event

    async def run(self) -> None:
        """Read and write until the connection fails or is closed; owned by the pool."""
        stream = self._stream
        sock = self._sock
        if stream is None or sock is None:
            return  # closed (ejection, topology change) before it ever ran
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_forever, stream)
                nursery.start_soon(self._watch_deadlines)
                if type(stream) is PlainStream:
                    await self._read_in_loop(sock)
                if self.alive:  # (the loop ended; else closed meanwhile: cancelled)
                    await self._read_forever(stream)
                nursery.cancel_scope.cancel()

    async def _read_in_loop(self, sock: socket.socket) -> None:
        """While the run has a client loop: it reads this connection (and sends what its
        passes queued); this task parks until the loop ends (`detached`)."""
        loop = serving_loop()
        if loop is None:
            return
        self._fd = sock.fileno()
        self._loop = loop
        loop.watch(self._fd, self)
        self._run_task = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._run_task = None
            self._leave_loop()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def detached(self) -> None:
        """LoopedSocket: the loop ended (it no longer watches the socket): the tasks take
        over, the reader from where the loop's parser is, the writer with the outbox."""
        self._loop = None
        self._fd = -1
        if self._flush_asked:  # the loop ended in that pass: no flush(now) comes
            self._flush_asked = False
            self._date(self._clock.current_time() + self.timeout)
        task = self._run_task
        if task is not None:
            self._run_task = None
            trio.lowlevel.reschedule(task)
        writer = self._writer
        if writer is not None and self._outbox:
            self._writer = None
            trio.lowlevel.reschedule(writer)

    def _leave_loop(self) -> None:
        """Out of the loop's set (before the socket closes: its number may come back)."""
        loop = self._loop
        if loop is not None:
            self._loop = None
            loop.unwatch(self._fd)
            self._fd = -1

    def submit(self, request: bytes, multi: bool, listener: ReplyListener | None = None,
               kind: type[PendingReply] = PendingReply, shape: ReplyShape | None = None
               ) -> PendingReply:
        """Queue `request`; `listener` hears when its reply is complete (not when it fails
        here, at once: the caller sees that in the returned reply). The reply is a `kind`
        (a subclass that is also its client's slot: proxy/direct_slots.py); `shape` is the
        request's reply shape when the caller knows it (else found from `request`)."""
        if not self.alive:
            reply = kind(multi, 0.0)
            reply.fail(f"no connection to {self.host}:{self.port}")
            return reply
        loop = self._loop
        in_pass = loop is not None and loop.in_pass
        # in a pass: dated by the flush that sends it, with the pass's clock reading
        reply = kind(multi, UNDATED if in_pass else self._clock.current_time() + self.timeout,
                     listener, shape if shape is not None else reply_shape(request))
        reply.forwarded = request
        pending = self._pending
        pending.append(reply)
        self._outbox.append(request)
        self.requests += 1
        in_flight = len(pending)
        if in_flight == 1:
            self._became_busy.set()
        if in_flight > self.max_in_flight:
            self.max_in_flight = in_flight
        if in_pass:  # sent at the pass's end: no task woken
            assert loop is not None
            if not self._flush_asked:
                self._flush_asked = True
                loop.flush_after_pass(self)
            return reply
        writer = self._writer
        if writer is not None:
            self._writer = None
            trio.lowlevel.reschedule(writer)
        return reply

    def flush(self, now: float) -> None:
        """LoopedSocket: the pass that queued requests has ended (at `now`): their replies are
        dated, then one nonblocking send of the outbox, unless the writer task holds it
        (woken, or waiting for the socket: it sends this behind what it has); the writer
        gets what the kernel did not take."""
        self._flush_asked = False
        self._date(now + self.timeout)
        outbox = self._outbox
        writer = self._writer
        sock = self._sock
        if writer is None or not outbox or sock is None:
            return
        data = outbox[0] if len(outbox) == 1 else b"".join(outbox)
        outbox.clear()
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(f"send to {self.host}:{self.port} failed: {exc.strerror or exc}")
            return
        if sent < len(data):
            outbox.append(data[sent:])
            self._writer = None
            trio.lowlevel.reschedule(writer)

    def close(self, reason: str) -> None:
        if self.alive:
            self.alive = False
            self._cancel.cancel()
        while self._pending:
            self._pending.popleft().fail(reason)
        self._outbox.clear()
        self._leave_loop()
        if self._reader is not None:
            self._reader.close()  # before its fd is closed (and reused)
            self._reader = None
        if self._sock is not None:
            nonblocking.close(self._sock)
            self._sock = None
            self._stream = None

    async def _write_forever(self, stream: PlainStream | TlsStream) -> None:
        send_all = stream.send_all
        outbox = self._outbox
        while True:
            await self._requests_queued()
            data = b"".join(outbox)
            outbox.clear()
            try:
                await send_all(data)
            except OSError as exc:
                self._fail(f"send to {self.host}:{self.port} failed: {exc.strerror or exc}")
                return

    async def _requests_queued(self) -> None:
        """Park the writer until `submit` queues a request (woken directly: no Event per
        batch); a checkpoint either way."""
        if self._outbox:
            await trio.lowlevel.checkpoint()
            return
        self._writer = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._writer = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _read_forever(self, stream: PlainStream | TlsStream) -> None:
        recv = stream.recv
        if type(stream) is PlainStream and self._reader is None:
            self._reader = EdgePoller.reader(stream.sock)
            recv = self._reader.recv
        while True:
            try:
                data = await recv(nonblocking.READ_SIZE)
            except OSError as exc:
                self._fail(f"read from {self.host}:{self.port} failed: {exc.strerror or exc}")
                return
            if not self._received(data):
                return

    def readable(self) -> None:
        """LoopedSocket: the loop's pass found the socket readable: one read, served."""
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(nonblocking.READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(f"read from {self.host}:{self.port} failed: {exc.strerror or exc}")
            return
        try:
            self._received(data)
        except Exception:
            # As the task path's owner (NodePool._keep_slot) does: a bug here must not end
            # the loop, with every client in it; logged, counted, and the connection failed.
            log.exception("connection to %s:%s failed unexpectedly", self.host, self.port)
            self._fail("internal error")

    def _received(self, data: bytes) -> bool:
        """Settle the replies `data` completes, then tell their listeners; False when the
        connection failed (EOF, or a reply that does not answer its request)."""
        if not data:
            self._fail(f"{self.host}:{self.port} closed the connection")
            return False
        parser = self._parser
        pending = self._pending
        arrived = self._arrived
        self.received += len(data)
        parser.receive_data(data)
        try:
            head: PendingReply | None = None  # the reply the next event belongs to
            while True:
                event = parser.next_event()
                if event is NEED_DATA:
                    break
                if head is None:  # (its fields kept while a multi reply's events come)
                    if not pending:
                        raise ResponseError(f"a {type(event).__name__} reply to no request")
                    head = pending[0]
                    shape = head.shape
                    events = head.events
                    multi = head.multi
                if shape is not None and not shape.accepts(event):
                    # (never the event itself: its bytes may be another client's)
                    raise ResponseError(f"out of step: a {type(event).__name__} reply "
                                        f"does not answer the request it came for")
                events.append(event)
                kind = type(event)
                if not multi or kind is End or kind is ErrorReply or (
                        type(event) is Line and shape is not None and shape.ends(event)):
                    pending.popleft()
                    head._finish()
                    if head.listener is not None:
                        arrived.append(head.listener)
                    head = None
        except Unauthenticated as refusal:  # (its own name: mypyc types one by its first handler)
            self._fail(f"{self.host}:{self.port}: {refusal}" + (
                           "" if self.login is not None else
                           " and this proxy has no credentials: give it "
                           "--backend-auth-file"))
            return False
        except ResponseError as exc:
            self._fail(f"bad reply from {self.host}:{self.port}: {exc}")
            return False
        finally:
            # Told once the whole read is parsed, so a client's pipelined replies that
            # came in one read leave in one send.
            if arrived:
                for listener in arrived:
                    listener.reply_arrived()
                arrived.clear()
        if pending and pending[0].events:
            # A reply spanning reads is a big one: its client's budget is charged for each
            # read as it comes (ReplyStream.hold_arriving), not only once it is whole.
            owner = pending[0].listener
            hold = getattr(owner, "hold_arriving", None) if owner is not None else None
            if hold is not None:
                hold(len(data))
        self._on_success()
        return True

    def _date(self, deadline: float) -> None:
        """Give the replies submitted in the loop's pass (the newest, UNDATED) `deadline`."""
        for reply in reversed(self._pending):
            if reply.deadline != UNDATED:
                break
            reply.deadline = deadline

    async def _watch_deadlines(self) -> None:
        """Fail the connection when its oldest reply is overdue (or cut it, or wait on: the
        docstring's three cases). Replies come in order and deadlines grow with
        submission, so watching the head of the FIFO is enough; this costs about one
        wake-up per timeout period, not a cancel scope per read: a window before the head's
        deadline (where the bytes read are noted, the progress it is judged by) when the
        head is still there then, its deadline only when it is still there then too."""
        pending = self._pending
        window = self.timeout * PROGRESS_WINDOW
        clock = self._clock
        while True:
            if not pending:
                self._became_busy = trio.Event()
                await self._became_busy.wait()
                continue
            head = pending[0]
            if head.deadline == UNDATED:  # (dated at its pass's end, before any checkpoint)
                self._date(clock.current_time() + self.timeout)
            if self.on_cut is not None:  # a cut early (a quarter of the timeout) if worth it
                noted = await self._window_before(
                    head, head.deadline - self.timeout * (1 - EARLY_CUT))
                if noted is None:
                    continue
                if self.received != noted[0] and worth_cutting(pending):
                    self._cut()
                    return
            noted = await self._window_before(head, head.deadline)
            if noted is not None and not await self._overdue(noted[0], noted[1] + window):
                return

    async def _window_before(self, head: PendingReply, at: float) -> tuple[int, float] | None:
        """Sleep until `at`, noting the bytes read (and when) a window before it: the
        progress `head` is judged by there. None once `head` is no longer the oldest reply
        owed, unsettled, at either wake-up."""
        await trio.sleep_until(at - self.timeout * PROGRESS_WINDOW)
        if not self._waits_at_head(head):
            return None
        noted = self.received, self._clock.current_time()
        await trio.sleep_until(at)
        return noted if self._waits_at_head(head) else None

    def _waits_at_head(self, head: PendingReply) -> bool:
        """Whether `head` is still the oldest reply owed, unsettled: the watch's question at
        each of its wake-ups."""
        pending = self._pending
        return bool(pending) and pending[0] is head and not head.done

    async def _overdue(self, seen: int, judged_at: float) -> bool:
        """The head is past its deadline: wait while bytes arrive for live clients (until
        OVERDUE_LIMIT), cut the connection when some are owed to gone ones, fail it when
        none arrived since `seen` bytes had been read, a window before `judged_at`. True:
        the connection goes on (the overdue replies came)."""
        pending = self._pending
        window = self.timeout * PROGRESS_WINDOW
        clock = self._clock
        while True:
            if clock.current_time() < judged_at:  # (the head came late to the watch)
                await trio.sleep_until(judged_at)
            if not self.alive:
                return False
            now = clock.current_time()
            if not pending or pending[0].deadline > now:
                return True
            if self.received == seen:
                break  # nothing for a whole window: frozen, or gone
            if self.on_cut is not None and worth_cutting(pending):
                self._cut()
                return False
            if now > pending[0].deadline + OVERDUE_LIMIT * self.timeout:
                break
            seen, judged_at = self.received, now + window
        self._fail(f"timeout after {self.timeout * 1000:.0f} ms waiting for "
                   f"{self.host}:{self.port}")
        return False

    def _cut(self) -> None:
        """Close the connection without draining the replies owed to gone clients; the live
        reads nothing of which has arrived go to `on_cut` (sent again once), the rest fail."""
        on_cut = self.on_cut
        assert on_cut is not None
        again: list[PendingReply] = []
        failed: list[PendingReply] = []
        for reply in self._pending:
            (again if resendable(reply) else failed).append(reply)
        self._pending.clear()
        self._pending.extend(failed)  # failed by close(), in order
        reason = (f"connection to {self.host}:{self.port} cut: replies owed to closed "
                  f"clients stood ahead")
        log.debug("%s (%d request(s) sent again, %d failed)", reason, len(again), len(failed))
        self.close(reason)
        on_cut(again)

    def _fail(self, reason: str) -> None:
        """Close and report once, whichever of the reader, writer or watchdog saw it first."""
        if self.alive:
            self.close(reason)
            self._on_failure(reason)
