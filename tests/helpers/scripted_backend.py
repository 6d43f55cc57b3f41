"""Backends that answer the proxy's `version` probe as memcached and other request lines by a
script: a faulty or hostile backend exactly when a test needs one.

`scripted_backend` runs in a thread of the test, for proxy processes (the isolation tests):
chosen lines get one fixed reply (one `recv` per connection per round, ~0.05 s a round,
bounded). `ScriptedBackend` is served by trio in the test's own run, for the proxy's parts
driven in-process (backend connections, pools, slots): each line gets its own answer, and
the test can stop its reading, split an answer or close after one.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from functools import partial

import trio

from tests.helpers import servers


@contextlib.contextmanager
def scripted_backend(answer: bytes | Callable[[int], bytes], answers: Callable[[bytes], bool]
                     ) -> Iterator[tuple[servers.RunningServer, list[int]]]:
    """Each request line for which `answers(line)` is true gets `answer` (or `answer(n)`
    for the n-th such line, from 0); the list counts the connections the proxy closed."""
    answered = 0
    listener = socket.create_server((servers.HOST, 0))
    stop = threading.Event()
    closed: list[int] = []

    def serve() -> None:
        nonlocal answered
        listener.settimeout(0.05)
        conns: list[socket.socket] = []
        for _ in range(2000):  # stopped well before, by `stop`
            if stop.is_set():
                break
            with contextlib.suppress(TimeoutError):
                conn, _ = listener.accept()
                conn.settimeout(0.02)
                conns.append(conn)
            for conn in list(conns):
                with contextlib.suppress(OSError):
                    data = conn.recv(65536)
                    if not data:  # the proxy closed it
                        closed.append(1)
                        conns.remove(conn)
                        conn.close()
                    for line in data.splitlines():
                        if line == b"version":
                            conn.sendall(b"VERSION 1.6.18\r\n")
                        elif answers(line):
                            conn.sendall(answer if isinstance(answer, bytes)
                                         else answer(answered))
                            answered += 1
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield (servers.RunningServer("scripted", listener.getsockname()[1],
                                     process=None),  # type: ignore[arg-type]
               closed)
    finally:
        stop.set()
        thread.join(5)
        listener.close()


class ScriptedBackend:
    """A backend on a loopback port served by trio: `version` answered, then each request
    line (its data block taken whole, kept in `blocks`) by `answer`: its bytes, or the
    connection closes if it returns None. It reads only while `reading` is set; after
    answering a line in `close` it closes; for a line in `split` it sends the first half of
    the answer and waits for `release` before the rest."""

    def __init__(self, answer: Callable[[bytes], bytes | None]) -> None:
        self.answer = answer
        self.reading = trio.Event()
        self.reading.set()
        self.release = trio.Event()
        self.close: set[bytes] = set()
        self.split: set[bytes] = set()
        self.asked: list[bytes] = []  # the request lines but `version`, in order
        self.blocks: list[bytes] = []  # the data blocks of the `set`s, in order
        self.port = 0

    async def listen(self, nursery: trio.Nursery) -> int:
        """Serve on a free loopback port in `nursery` (cancel it to stop); the port."""
        listeners = await nursery.start(partial(trio.serve_tcp, self.serve, 0,
                                                host=servers.HOST))
        self.port = listeners[0].socket.getsockname()[1]
        return self.port

    async def _more(self, stream: trio.SocketStream) -> bytes:
        await self.reading.wait()
        return await stream.receive_some(1 << 20)

    async def serve(self, stream: trio.SocketStream) -> None:
        buffer = b""
        async with stream:
            while True:
                while b"\r\n" not in buffer:
                    data = await self._more(stream)
                    if not data:
                        return
                    buffer += data
                line, _, buffer = buffer.partition(b"\r\n")
                if line == b"version":
                    await stream.send_all(b"VERSION 1.6.18\r\n")
                    continue
                if line.startswith(b"set "):
                    size = int(line.split()[4])
                    while len(buffer) < size + 2:
                        data = await self._more(stream)
                        if not data:
                            return
                        buffer += data
                    self.blocks.append(buffer[:size])
                    buffer = buffer[size + 2:]
                self.asked.append(line)
                reply = self.answer(line)
                if reply is None:
                    return
                if line in self.split:
                    half = len(reply) // 2
                    await stream.send_all(reply[:half])
                    await self.release.wait()
                    reply = reply[half:]
                await stream.send_all(reply)
                if line in self.close:
                    return
