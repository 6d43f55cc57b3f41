"""Reads on the proxy's plain sockets without an epoll re-arm per read.

Theory of operation: trio's `wait_readable` arms one-shot epoll interest for every wait, so
each client request and each backend read cost the proxy one `epoll_ctl` (27% of its CPU
under the get/set bench, py-spy; docs/benchmarks.md). Here a socket joins one epoll set once,
edge-triggered, and its `EdgeReader` keeps a `ready` flag: set when epoll reports that new
bytes (or EOF, or an error) arrived, cleared when a `recv` returned less than it asked for
(the kernel had no more) or would block; once epoll has reported the peer's FIN or an error,
never again (a FIN read with the last bytes raises no later edge: the reader would park for
good; tests/unit/test_edge_reads.py). A reader whose flag is clear parks its task; the
`EdgePoller`, one trio system task per run, waits on the epoll fd itself (one re-arm per pass,
shared by every socket that became readable in it) and wakes the parked readers. Bytes that
arrive after the flag was cleared raise a new edge, which only the poller consumes, so no
wake-up is lost; a stale edge costs one `recv` that would block.

A reader must be closed (unregistered) before its socket is: a closed fd's number is reused.
TLS streams keep their own reads (netio.streams): only plain sockets use this, and since the
client connections went to the ReadyLoop (proxy/conversation.py), only backend connections.
"""

from __future__ import annotations

import select
import socket

import trio

_EDGE_IN = select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLET
_HUNG_UP = select.EPOLLRDHUP | select.EPOLLHUP | select.EPOLLERR
_MAX_EVENTS = 1024  # per epoll_wait; more wait for the next pass, which comes at once


class EdgeReader:
    """One socket's reads through the run's `EdgePoller`; `recv` as `PlainStream.recv`."""

    __slots__ = ("_fd", "_poller", "_task", "hung_up", "ready", "sock")

    def __init__(self, poller: EdgePoller, sock: socket.socket) -> None:
        self.sock = sock
        self.ready = True  # unknown until a recv says so: try it
        # The peer's FIN (or an error) was seen: it raises no further edge, so a short read
        # no longer means drained (the next recv returns b"" or raises).
        self.hung_up = False
        self._task: trio.lowlevel.Task | None = None
        self._poller = poller
        self._fd = sock.fileno()
        poller.register(self._fd, self)

    async def recv(self, size: int) -> bytes:
        """At least one byte, or b"" at the end of the stream; a checkpoint either way."""
        sock = self.sock
        while True:
            if self.ready:
                await trio.lowlevel.checkpoint()  # as trio's reads: never run without yielding
            else:
                await self._wait()
            try:
                data = sock.recv(size)
            except BlockingIOError:
                self.ready = False
                continue
            if len(data) < size and not self.hung_up:
                self.ready = False  # drained: the next bytes raise a new edge
            return data

    async def _wait(self) -> None:
        if self._task is not None:
            raise trio.BusyResourceError("another task is already reading this socket")
        self._task = trio.lowlevel.current_task()

        def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def readable(self, hung_up: bool = False) -> None:
        """The poller saw an edge: wake the parked reader, or let its next recv try."""
        self.ready = True
        if hung_up:
            self.hung_up = True
        task = self._task
        if task is not None:
            self._task = None
            trio.lowlevel.reschedule(task)

    def close(self) -> None:
        """Leave the epoll set (before the socket closes); a parked reader is woken to find
        the socket's state for itself."""
        if self._fd >= 0:
            self._poller.unregister(self._fd, self)
            self._fd = -1
        self.readable()


class EdgePoller:
    """The run's epoll set of plain sockets, edge-triggered; its task wakes their readers."""

    __slots__ = ("_epoll", "_readers")

    _current: trio.lowlevel.RunVar[EdgePoller] = trio.lowlevel.RunVar("edge_poller")

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, EdgeReader] = {}

    @classmethod
    def current(cls) -> EdgePoller:
        """This trio run's poller, started as a system task on first use (it lives as long
        as the run: the sockets it serves belong to tasks anywhere in it)."""
        try:
            return cls._current.get()
        except LookupError:
            poller = cls()
            cls._current.set(poller)
            trio.lowlevel.spawn_system_task(poller._run, name="memring.proxy.edge_poller")
            return poller

    @classmethod
    def reader(cls, sock: socket.socket) -> EdgeReader:
        return EdgeReader(cls.current(), sock)

    def register(self, fd: int, reader: EdgeReader) -> None:
        self._epoll.register(fd, _EDGE_IN)
        self._readers[fd] = reader

    def unregister(self, fd: int, reader: EdgeReader) -> None:
        if self._readers.get(fd) is reader:
            del self._readers[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:  # closed behind our back: the kernel dropped it already
                pass

    async def _run(self) -> None:
        epoll = self._epoll
        readers = self._readers
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, mask in epoll.poll(0, _MAX_EVENTS):
                    reader = readers.get(fd)
                    if reader is not None:
                        reader.readable(bool(mask & _HUNG_UP))
        finally:  # the run is ending: every other task is done
            readers.clear()
            epoll.close()
