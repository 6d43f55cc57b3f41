"""A TCP relay that can be cut: how the Jepsen run partitions one node from etcd, from its
followers or from everyone, without root and on loopback only.

Each backend reaches etcd through relays of its own, and is reached by its followers and the
proxy through relays it advertises (`--peer-advertise`, `--advertise`). `cut()` stops
forwarding in both directions and leaves every connection open, so the peers see what a
partition shows them: their calls hang, no error arrives, keepalives and acks stop. Connections
accepted while cut are held the same way, their upstream not yet dialled. `heal()` resumes
forwarding; the connections that survived carry on, as TCP's do after a real partition heals.
The kernel below the relay still acknowledges the bytes it buffers, so a sender notices nothing
until its own timers say so: the same as a partition in the middle of the network.
`hold_answers()` cuts only the way back (the target still receives and acts on every request,
its answers wait for `heal()`): a request applied whose answer is lost.
"""

from __future__ import annotations

import errno
import socket

import trio

HOST = "127.0.0.1"
CHUNK = 65536


class CutLink:
    """One listening relay to `target`; `cut()` / `heal()` from the same trio run."""

    def __init__(self, name: str, target: tuple[str, int]) -> None:
        self.name = name
        self.target = target
        self.port = 0
        self._open = trio.Event()
        self._open.set()
        self._answers = trio.Event()  # the way back, target -> client
        self._answers.set()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def cut(self) -> None:
        if self._open.is_set():
            self._open = trio.Event()

    def hold_answers(self) -> None:
        if self._answers.is_set():
            self._answers = trio.Event()

    def heal(self) -> None:
        self._open.set()
        self._answers.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        """Accept and relay until cancelled; started with `nursery.start` (the port is then
        known)."""
        listener = trio.socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await listener.bind((HOST, 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        with listener:
            async with trio.open_nursery() as nursery:
                task_status.started()
                while True:
                    client, _ = await listener.accept()
                    nursery.start_soon(self._relay, client)

    async def _relay(self, client: trio.socket.SocketType) -> None:
        with client:
            await self._open.wait()
            upstream = trio.socket.socket()
            with upstream:
                try:
                    await upstream.connect(self.target)
                except OSError:
                    return  # the target is down: the client sees its connection close
                for sock in (client, upstream):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, client, upstream, nursery.cancel_scope,
                                       False)
                    nursery.start_soon(self._pump, upstream, client, nursery.cancel_scope,
                                       True)

    async def _pump(self, source: trio.socket.SocketType, sink: trio.socket.SocketType,
                    done: trio.CancelScope, answers: bool) -> None:
        """Copy one direction; either side closing ends both (the relay holds no half-open
        state a real network would not)."""
        try:
            while True:
                await self._open.wait()
                data = await source.recv(CHUNK)
                if not data:
                    return
                await self._open.wait()  # cut while this chunk was read: it waits too
                if answers:
                    await self._answers.wait()
                view = memoryview(data)
                while view:
                    sent = await sink.send(view)
                    view = view[sent:]
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ENOTCONN, errno.EBADF):
                raise
        finally:
            done.cancel()
