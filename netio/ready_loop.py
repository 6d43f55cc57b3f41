"""Many plain connections served by one task over one persistent, level-triggered epoll set.

Why: with a task per connection, every request pays a trio scheduler round trip and an
epoll re-arm (trio's `wait_readable` registers one-shot interest). Here the connections
waiting for input stay registered in one `select.epoll` set of our own, which trio watches
through `wait_readable(epoll.fileno())`; one pass serves every ready socket, paying neither
(docs/benchmarks.md "Backend vs memcached -t 1"; /work/shared/perf-calibration.md).

Theory of operation: a pass does one recv (at most nonblocking.READ_SIZE) per ready
connection and gives the bytes to the `ReadyHandler`, which runs the complete requests and
sends their replies synchronously. When a connection must await (a reply the kernel did not
take at once, a replication wait, a streamed dump, `watch`), the handler returns the rest of
its batch as a `Handoff`: the connection leaves the set and runs it in a task of its own (in
the connection nursery, under `conn.scope`), and comes back to the set when the handoff says
it is waiting for input again. A connection whose wait ends with a synchronous callback
(sync replication's acknowledgement) *parks* instead (`Parked`): it leaves the set without a
task, and `resume(conn, resumption)` (the callback's) queues what it does next, which the
loop runs at the start of its next pass (woken if it naps), as it runs a read: back to the
set, closed, or handed off. A task start per replicated write cost more than the wait's own
bookkeeping (docs/benchmarks.md "Whole cluster end to end"). A pass ends with a checkpoint, so with one read per connection
per pass a pipelining client cannot starve the others, and trio's other tasks (accepts,
timers, handed-off connections) run between passes.

A client's end of input closes its connection, unless the handler set
`conn.at_end_of_input`, which says what it still owes (the proxy: replies on their way).

Closing a connection unregisters it from the set first (the descriptor may be reused by the
next accept). The loop is one task of the `ConnectionServer`'s connection nursery: cancelling
that nursery (the shutdown grace deadline) closes every connection still in the set or
parked; at shutdown it ends once the set is empty and no connection is parked.

Other sockets (`LoopedSocket`: the proxy's plain backend connections) may join the set too,
through the run's first running loop (`serving_loop()`): the pass calls their `readable()`
as it serves a client's read, so a backend's reply settles and its client's reply leaves in
the loop's own pass, and what they queued during a pass (`flush_after_pass`) is sent once at
its end, with no task woken for either (issue 16, round five: docs/benchmarks.md). They do
not keep the loop running: when it ends it `detached()`s them, and their owners serve them
from tasks of their own again.

The pass clock: what a pass dates (a client's idle timeout restarting, `rearm`; the
deadlines of the backend requests its flushes send) takes one clock reading at the pass's
end, not one per request (two per request, some through interpreted frames, cost ~2% of
the proxy's CPU: docs/benchmarks.md "Round six: proxy"). A date is late by at most the rest
of its pass, never early.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from typing import Final, Protocol

import trio

from memring.netio import nonblocking
from memring.netio.connection import (
    Connection,
    Handoff,
    HangUp,
    Parked,
    ReadyHandler,
    Receiver,
    Resumption,
    log_failure,
)

MAX_EVENTS: Final = 512  # ready connections served in one pass at most (the rest: the next pass)


class LoopedSocket(Protocol):
    """A socket served in the loop's pass that is not a client connection (the proxy's
    backend connections): none of its calls may raise, or await."""

    def readable(self) -> None:
        """Its socket is readable (level-triggered): read once and serve what came."""

    def flush(self, now: float) -> None:
        """The pass in which it asked `flush_after_pass` has ended (at `now`, the run's
        clock): send what it queued."""

    def detached(self) -> None:
        """The loop is ending and no longer reads its socket: its owner takes over."""


# The run's loop that serves LoopedSockets: the first one running (the proxy has one).
_SERVING: trio.lowlevel.RunVar[ReadyLoop | None] = trio.lowlevel.RunVar(
    "memring.ready_loop", default=None)


def serving_loop() -> ReadyLoop | None:
    """The running ReadyLoop that LoopedSockets join, if any (in a trio run)."""
    return _SERVING.get()

class ReadyLoop:
    """The connections waiting for input, and the one task that serves them."""

    def __init__(self, handler: ReadyHandler, hand_off: Callable[[Connection, Handoff], None],
                 release: Callable[[Connection], None]) -> None:
        """`hand_off(conn, handoff)` starts the connection's own task; `release(conn)` closes
        a connection that has left the set."""
        self.handler = handler
        self._hand_off = hand_off
        self._release = release
        self._epoll = select.epoll()
        # by file descriptor: the connection, what serves its reads, its socket's recv (held:
        # no method lookup per read)
        self._waiting: dict[int, tuple[Connection, Receiver, Callable[[int], bytes]]] = {}
        self._parked: dict[Connection, None] = {}  # out of the set until resumed
        self._resumed: list[tuple[Connection, Resumption]] = []  # for the next pass
        self._nap = trio.CancelScope()  # the loop's wait for readiness; wake() cancels it
        self.stopping = False  # set by stop(): close connections as their batch ends
        self._others: dict[int, LoopedSocket] = {}  # by file descriptor: not clients
        self._flushes: list[LoopedSocket] = []  # to call at the end of this pass
        self._rearmed: list[Connection] = []  # to date at the end of this pass (`rearm`)
        self.in_pass = False  # the loop's task is in a pass (what it calls runs in it)

    def __len__(self) -> int:
        return len(self._waiting)

    def add(self, conn: Connection) -> None:
        """`conn` waits for input: serve it from now on."""
        conn.reading = True
        conn.looped = True
        conn.resume = self.resume
        assert conn.receiver is not None  # opened
        fd = conn.sock.fileno()
        self._waiting[fd] = (conn, conn.receiver, conn.sock.recv)
        self._epoll.register(fd, select.EPOLLIN)

    def close(self, conn: Connection) -> None:
        """Close `conn` (in the set, or parked) now: the idle timeout, eviction, shutdown."""
        if conn.parked:
            del self._parked[conn]
            conn.parked = False
        else:
            self._remove(conn)
        self._release(conn)

    def resume(self, conn: Connection, resumption: Resumption) -> None:
        """A parked connection's wait is over: the loop's next pass runs `resumption` (safe
        from any task; nothing if `conn` closed meanwhile)."""
        if conn.parked:
            self._resumed.append((conn, resumption))
            self.wake()

    def stop(self) -> None:
        """Shutdown: connections close when their batch ends; the loop ends with the last."""
        self.stopping = True
        self.wake()

    def wake(self) -> None:
        self._nap.cancel()

    def watch(self, fd: int, sock: LoopedSocket) -> None:
        """Serve `sock` (open on `fd`) in the passes from now on, until `unwatch(fd)`."""
        self._others[fd] = sock
        self._epoll.register(fd, select.EPOLLIN)

    def unwatch(self, fd: int) -> None:
        """Stop serving what `watch` registered on `fd` (before it closes: its number may come
        back); nothing if it is not served (any more)."""
        if self._others.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def rearm(self, conn: Connection) -> None:
        """`conn` completed a request: its idle timeout restarts when this pass ends (outside
        a pass: now), as `ConnectionServer.rearm` but with the pass's one clock reading."""
        if self.in_pass:
            self._rearmed.append(conn)
        else:
            conn.active = trio.current_time()

    def flush_after_pass(self, sock: LoopedSocket) -> None:
        """In a pass (`in_pass`): call `sock.flush()` once it ends (once per call)."""
        self._flushes.append(sock)

    def _remove(self, conn: Connection) -> None:
        fd = conn.sock.fileno()
        del self._waiting[fd]
        self._epoll.unregister(fd)  # before the socket closes: its number may come back
        conn.looped = False

    async def run(self) -> None:
        """Serve until stopped and the set is empty (or cancelled: the set is closed)."""
        epoll = self._epoll
        waiting = self._waiting
        others = self._others
        read_size = nonblocking.READ_SIZE
        clock = trio.lowlevel.current_clock()
        rearmed = self._rearmed
        serves_others = _SERVING.get() is None
        if serves_others:
            _SERVING.set(self)
        try:
            while not (self.stopping and not waiting and not self._parked):
                self.in_pass = True
                if self._resumed:
                    self._resume_all()
                ready = epoll.poll(0, MAX_EVENTS)
                for fd, _events in ready:
                    entry = waiting.get(fd)
                    if entry is None:
                        other = others.get(fd)
                        if other is not None:
                            other.readable()
                        continue  # (else a connection closed earlier in the pass)
                    conn, receiver, recv = entry
                    try:
                        data = recv(read_size)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        self._failed(conn, exc)
                        continue
                    conn.reading = conn.idle = False
                    if not data:
                        if conn.at_end_of_input is None:
                            self.close(conn)
                        else:  # replies may still be owed (a client that half-closed)
                            self._after(conn, conn.at_end_of_input())
                        continue
                    try:
                        outcome = receiver(data)
                    except Exception as exc:
                        self._failed(conn, exc)
                        continue
                    if outcome is None and not self.stopping:
                        conn.reading = True  # the common case, inline
                    elif conn.looped:  # (a handler may have closed it meanwhile: the proxy)
                        self._after(conn, outcome)
                self.in_pass = False
                if rearmed or self._flushes:  # the pass's one clock reading
                    now = clock.current_time()
                    for conn in rearmed:
                        conn.active = now
                    rearmed.clear()
                    if self._flushes:
                        flushes, self._flushes = self._flushes, []
                        for sock in flushes:
                            sock.flush(now)
                if not ready:
                    if self._resumed:  # by a flush's failure: no nap before running it
                        continue
                    with trio.CancelScope() as self._nap:
                        await trio.lowlevel.wait_readable(epoll)
                    continue
                await trio.lowlevel.checkpoint()  # fairness: others run between passes
        finally:
            self.in_pass = False
            if rearmed:  # (a pass that raised)
                now = clock.current_time()
                for conn in rearmed:
                    conn.active = now
                rearmed.clear()
            if serves_others:
                _SERVING.set(None)
            for conn, _receiver, _recv in list(waiting.values()):
                self.close(conn)
            for conn in list(self._parked):
                self.close(conn)
            detached, self._others = others, {}
            self._flushes = []
            for sock in detached.values():  # (what they queued, their owners send)
                sock.detached()
            epoll.close()

    def _resume_all(self) -> None:
        """Run what the parked connections resumed since the last pass do next."""
        resumed, self._resumed = self._resumed, []
        for conn, resumption in resumed:
            if not conn.parked:  # closed meanwhile
                continue
            del self._parked[conn]
            conn.parked = False
            try:
                outcome = resumption()
            except Exception as exc:
                log_failure(exc)  # only this connection closes
                self._release(conn)
                continue
            if outcome is None and not self.stopping:
                self.add(conn)
            elif outcome is None or outcome is HangUp:
                self._release(conn)
            else:
                assert not isinstance(outcome, type)
                self._hand_off(conn, outcome)

    def _after(self, conn: Connection,
               outcome: Handoff | type[HangUp] | type[Parked] | None) -> None:
        """A read served, other than the common case: close, park, or hand off."""
        if outcome is None or outcome is HangUp:  # None: the server is stopping
            self.close(conn)
        elif outcome is Parked:
            self._remove(conn)
            conn.parked = True
            self._parked[conn] = None
        else:
            assert not isinstance(outcome, type)
            self._remove(conn)
            self._hand_off(conn, outcome)

    def _failed(self, conn: Connection, exc: Exception) -> None:
        log_failure(exc)  # as a connection task's: only this connection closes
        self.close(conn)
