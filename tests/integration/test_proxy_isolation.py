"""One client's request can never shift another client's replies on a shared backend connection.

The proxy pipelines many clients' requests on few backend connections and matches replies
to requests by order, so every forwarded request must get exactly one reply. These are the
two leaks an attacker found (issue 11): a key named `noreply` read as the noreply flag by
the backend (`delete noreply`: memcached answers NOT_FOUND), and a meta flag spelled like
`q` but not exactly `q` (`qz`: memcached reads a flag by its first character) forwarded as
quiet. Either way the backend stayed silent and the victim's VALUE went to another client.
Each case runs the attacker's request between a victim's set and another client's get of a
missing key, on one pooled backend connection, many times. And should a backend ever answer
out of step, the reply is checked against the request it came for and never delivered.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

ROUNDS = 20
SECRET = b"victim-secret-value"


@pytest.fixture(scope="module")
def proxy() -> Iterator[servers.RunningServer]:
    # one shard, one connection per node: every client's requests share it
    with servers.proxy_over("backend", shards=1, pool_size=1) as proxy:
        yield proxy


def ask(sock: socket.socket, payload: bytes, end: bytes) -> bytes:
    sock.sendall(payload)
    return wire.read_until(sock, end, timeout=2.0)


@pytest.mark.parametrize(("attack", "memcached_says"), [
    (b"delete noreply\r\n", b"NOT_FOUND\r\n"),
    (b"touch noreply 10\r\n", b"NOT_FOUND\r\n"),
    (b"mg some-key qz v\r\n", b""),  # quiet: a miss says nothing, as memcached
    (b"mg some-key q1\r\n", b""),
    (b"md some-key qq\r\n", b"NF\r\n"),  # q hides only md's HD
])
def test_a_silent_looking_request_shifts_no_reply(proxy: servers.RunningServer, attack: bytes,
                                                  memcached_says: bytes) -> None:
    with wire.connect(proxy) as victim, wire.connect(proxy) as attacker, \
            wire.connect(proxy) as bystander:
        for i in range(ROUNDS):
            key = b"victim-%d" % i
            assert ask(victim, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(SECRET), SECRET),
                       b"\r\n") == b"STORED\r\n"
            # the attacker's request, then `mn` so its own reply (or silence) is delimited
            attacked = ask(attacker, attack + b"mn\r\n", b"MN\r\n")
            assert ask(bystander, b"get missing-%d\r\n" % i, b"END\r\n") == b"END\r\n"
            assert ask(victim, b"get %s\r\n" % key, b"END\r\n") == \
                b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(SECRET), SECRET)
            assert attacked == memcached_says + b"MN\r\n"


def test_a_reply_that_answers_another_request_is_never_delivered() -> None:
    listener = socket.create_server((servers.HOST, 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        # answers `version` (the proxy's probe), and every other request with a value of a
        # key nobody asked for: what a backend out of step would send
        listener.settimeout(0.1)
        conns: list[socket.socket] = []
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                conn, _ = listener.accept()
                conn.settimeout(0.02)
                conns.append(conn)
            for conn in conns:
                with contextlib.suppress(OSError):
                    for line in conn.recv(65536).splitlines():
                        conn.sendall(b"VERSION 1.6.18\r\n" if line == b"version" else
                                     b"VALUE victim 0 6\r\nsecret\r\nEND\r\n")
        for conn in conns:
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    rogue = servers.RunningServer("rogue", port, process=None)  # type: ignore[arg-type]
    try:
        with servers.proxy([[rogue]], on_shard_error="error") as proxy, \
                wire.connect(proxy) as client:
            for _ in range(3):
                reply = ask(client, b"get a\r\n", b"\r\n")
                assert reply.startswith(b"SERVER_ERROR "), reply
                assert b"secret" not in reply and b"victim" not in reply
    finally:
        stop.set()
        thread.join(5)
        listener.close()
