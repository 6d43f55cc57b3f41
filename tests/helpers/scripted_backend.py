"""A backend that answers the proxy's `version` probe as memcached and chosen request lines
with one fixed reply: a faulty or hostile backend for the proxy's isolation tests, in a
thread of the test (one `recv` per connection per round, ~0.05 s a round, bounded)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

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
