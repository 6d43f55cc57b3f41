"""Backend replies that reach the proxy a byte at a time: clients still get memcached's bytes.

The proxy's backend connections parse replies that span reads (protocol/response_parser.py,
a big one charged as it arrives: proxy/reply_stream.py `hold_arriving`). Here a relay between
the proxy and each real backend passes the backend's replies on one byte per segment, so every
line, every data block and every "\\r\\n" of a reply arrives split at each of its boundaries,
while a second client of the same proxy is answered in the same dribble. The answers must be
what memcached answers to the same pipeline. Real memcached, backends and proxy on loopback.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

KEYS = [b"drib:%d" % i for i in range(5)]
ITEMS = {KEYS[0]: b"ab\r\nc", KEYS[1]: b"", KEYS[2]: b"END\r\n", KEYS[3]: b"12",
         KEYS[4]: b"v" * 300}
PIPELINE = b"".join([
    b"get %s\r\n" % b" ".join([*KEYS, b"drib:miss", KEYS[0]]),
    b"get %s\r\n" % KEYS[2],
    b"mg %s v f k\r\nmg drib:miss v\r\nmg %s s v q\r\n" % (KEYS[4], KEYS[1]),
    b"incr %s 5\r\nma %s v\r\n" % (KEYS[3], KEYS[3]),
    b"ms %s 2 ME C0\r\nxy\r\n" % KEYS[0],
    b"delete %s\r\ndelete drib:miss\r\n" % KEYS[2],
    b"touch %s 0\r\n" % KEYS[4],
])
PER_BYTE = 0.0005  # seconds between the relay's one-byte segments


class DribbleRelay:
    """Listens on a free port; each connection is piped to `target`, requests as they come,
    replies one byte per segment. Bounded: it stops with the test (`close`)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server((servers.HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.closed = threading.Event()
        self.threads: list[threading.Thread] = []
        self._start(self._accept)

    def _start(self, run: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=run, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.closed.is_set():
            try:
                near, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            far = socket.create_connection(self.target)
            near.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._start(self._pipe, near, far, False)
            self._start(self._pipe, far, near, True)

    def _pipe(self, source: socket.socket, sink: socket.socket, dribble: bool) -> None:
        source.settimeout(0.2)
        with contextlib.suppress(OSError):
            while not self.closed.is_set():
                try:
                    data = source.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if not dribble:
                    sink.sendall(data)
                    continue
                for at in range(len(data)):
                    sink.sendall(data[at:at + 1])
                    time.sleep(PER_BYTE)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.closed.set()
        self.listener.close()
        for thread in self.threads:
            thread.join(5)


@pytest.fixture(scope="module", params=["backend", "memcached"])
def dribbled(request: pytest.FixtureRequest) -> Iterator[servers.RunningServer]:
    with contextlib.ExitStack() as stack:
        shards = [stack.enter_context(servers.start(str(request.param))) for _ in range(2)]
        relays = [DribbleRelay((servers.HOST, shard.port)) for shard in shards]
        for relay in relays:
            stack.callback(relay.close)
        fronts = [servers.RunningServer("relay", relay.port, shard.process)
                  for relay, shard in zip(relays, shards, strict=True)]
        yield stack.enter_context(servers.proxy([[front] for front in fronts], pool_size=1))


def test_replies_split_at_every_byte_reach_clients_as_memcacheds(
        dribbled: servers.RunningServer) -> None:
    with servers.memcached() as memcached:
        wire.store(memcached, ITEMS)
        answer = wire.request(memcached, PIPELINE)
    wire.store(dribbled, ITEMS)
    other_key = b"drib:other"
    with wire.connect(dribbled) as sock, wire.connect(dribbled) as other:
        sock.sendall(PIPELINE + wire.SENTINEL)
        other.sendall(b"set %s 0 0 3\r\nabc\r\nget %s\r\n" % (other_key, other_key))
        assert wire.read_until(other, b"END\r\n", timeout=20) == \
            b"STORED\r\nVALUE %s 0 3\r\nabc\r\nEND\r\n" % other_key
        got = wire.read_until(sock, wire.SENTINEL_REPLY, timeout=30)
    assert got == answer + wire.SENTINEL_REPLY
    wire.request(dribbled, b"".join(b"delete %s noreply\r\n" % k for k in [*KEYS, other_key]))
