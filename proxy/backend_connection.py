"""One pipelined connection from the proxy to a backend node.

Theory of operation: callers `submit()` an encoded request and get a `PendingReply`; the
bytes go to an outbox that a writer task sends in batches, and the reply slot joins a
FIFO. Because every forwarded request asks for a reply (the encoder strips noreply and
`q`), the reader task matches reply events to slots by order alone. Many client
requests are thus in flight on one connection at once.

A reply not complete by its deadline fails the connection: the socket is closed and every
slot still waiting is failed, because after a lost reply the stream can no longer be
matched. The owner (`NodePool`) counts the failure towards ejection and reconnects.
"""

from __future__ import annotations

import math
import socket as stdlib_socket
from collections import deque
from collections.abc import Callable

import trio

from protocol import NEED_DATA, ResponseError, ResponseParser
from protocol.responses import End, ErrorReply, Response

READ_SIZE = 65536


class PendingReply:
    """The reply to one forwarded request, filled in by the connection's reader."""

    __slots__ = ("_event", "deadline", "done", "error", "events", "multi")

    def __init__(self, multi: bool, deadline: float) -> None:
        self.multi = multi            # get/gets/gat/gats/stats: events until END
        self.deadline = deadline
        self.events: list[Response] = []
        self.done = False
        self.error: str | None = None
        self._event: trio.Event | None = None

    def _finish(self) -> None:
        self.done = True
        if self._event is not None:
            self._event.set()

    def fail(self, reason: str) -> None:
        if not self.done:
            self.error = reason
            self._finish()

    async def wait(self) -> None:
        if not self.done:
            if self._event is None:
                self._event = trio.Event()
            await self._event.wait()


class ConnectionFailed(Exception):
    pass


class BackendConnection:
    def __init__(self, host: str, port: int, timeout: float,
                 on_failure: Callable[[str], None], on_success: Callable[[], None]) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self._on_failure = on_failure
        self._on_success = on_success
        self._sock: trio.socket.SocketType | None = None
        self._outbox: list[bytes] = []
        self._wake_writer = trio.Event()
        self._pending: deque[PendingReply] = deque()
        self._recv_scope: trio.CancelScope | None = None
        self._cancel = trio.CancelScope()
        self.alive = False
        self.requests = 0
        self.max_in_flight = 0

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def connect(self) -> None:
        sock = trio.socket.socket(stdlib_socket.AF_INET6 if ":" in self.host
                                  else stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
        try:
            with trio.fail_after(self.timeout):
                await sock.connect((self.host, self.port))
        except (OSError, trio.TooSlowError) as exc:
            sock.close()
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: "
                                   f"{getattr(exc, 'strerror', None) or 'timed out'}") from None
        sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        self._sock = sock
        self.alive = True

    async def run(self) -> None:
        """Read and write until the connection fails or is closed; owned by the pool."""
        assert self._sock is not None
        with self._cancel:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_forever)
                await self._read_forever()
                nursery.cancel_scope.cancel()

    def submit(self, request: bytes, multi: bool) -> PendingReply:
        reply = PendingReply(multi, trio.current_time() + self.timeout)
        if not self.alive:
            reply.fail(f"no connection to {self.host}:{self.port}")
            return reply
        self._pending.append(reply)
        self._outbox.append(request)
        self.requests += 1
        if len(self._pending) > self.max_in_flight:
            self.max_in_flight = len(self._pending)
        self._wake_writer.set()
        if self._recv_scope is not None and self._recv_scope.deadline == math.inf:
            self._recv_scope.deadline = reply.deadline
        return reply

    def close(self, reason: str) -> None:
        if self.alive:
            self.alive = False
            self._cancel.cancel()
        while self._pending:
            self._pending.popleft().fail(reason)
        self._outbox.clear()
        if self._sock is not None:
            self._sock.close()

    async def _write_forever(self) -> None:
        assert self._sock is not None
        sock = self._sock
        while True:
            await self._wake_writer.wait()
            self._wake_writer = trio.Event()
            data = b"".join(self._outbox)
            self._outbox.clear()
            view = memoryview(data)
            try:
                while view:
                    sent = await sock.send(view)
                    view = view[sent:]
            except OSError as exc:
                self._fail(f"send to {self.host}:{self.port} failed: {exc.strerror}")
                return

    async def _read_forever(self) -> None:
        assert self._sock is not None
        sock = self._sock
        parser = ResponseParser()
        pending = self._pending
        while True:
            deadline = pending[0].deadline if pending else math.inf
            with trio.CancelScope(deadline=deadline) as scope:
                self._recv_scope = scope
                try:
                    data = await sock.recv(READ_SIZE)
                except OSError as exc:
                    self._fail(f"read from {self.host}:{self.port} failed: {exc.strerror}")
                    return
            self._recv_scope = None
            if scope.cancelled_caught:
                if pending and pending[0].deadline <= trio.current_time():
                    self._fail(f"timeout after {self.timeout * 1000:.0f} ms waiting for "
                               f"{self.host}:{self.port}")
                    return
                continue
            if not data:
                self._fail(f"{self.host}:{self.port} closed the connection")
                return
            parser.receive_data(data)
            try:
                while True:
                    event = parser.next_event()
                    if event is NEED_DATA:
                        break
                    if not pending:
                        raise ResponseError(f"unexpected reply {event!r}")
                    head = pending[0]
                    head.events.append(event)  # type: ignore[arg-type]
                    if not head.multi or type(event) is End or type(event) is ErrorReply:
                        pending.popleft()
                        head._finish()
            except ResponseError as exc:
                self._fail(f"bad reply from {self.host}:{self.port}: {exc}")
                return
            self._on_success()

    def _fail(self, reason: str) -> None:
        self.close(reason)
        self._on_failure(reason)
