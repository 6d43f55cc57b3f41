"""Hostile clients of a leader's peer port, speaking the replication protocol from a plain
socket (issues 12 and 13): a HELLO under any node id and lease, with no proof, a proof made
with any secret, or any bytes for a proof; an acknowledger that alternates acking and
silence; a crowd of connections that never say HELLO, held open (reopened when the leader
closes them); and everything a refused client received before the leader hung up. With peer
TLS (`context`): the same over a TLS client socket with any certificate or none, and a fake
leader behind a TLS port with any certificate."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import trio

from memring.backend.replication.peer_auth import PeerKey, new_nonce
from memring.cluster.coordinator import ClusterView, Incarnation, Session
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.records import LeaderRecord
from memring.protocol.replication import (
    NONCE_SIZE,
    ORIGIN,
    Ack,
    Challenge,
    Error,
    Event,
    Hello,
    ItemState,
    Mutation,
    Position,
    ReplicationParser,
    SnapshotBegin,
    SnapshotEnd,
    Welcome,
    encode,
)
from memring.protocol.sentinels import NEED_DATA
from tests.helpers.cluster import SHARD

CONNECT_TIMEOUT = 2.0


def leader_peer(view: ClusterView) -> tuple[str, int]:
    """The peer address the shard's leader publishes."""
    leader = view.shards[SHARD].leader
    assert leader is not None, "no leader"
    host, _, port = view.nodes[leader.node_id].peer_address.rpartition(":")
    return host, int(port)


def read_challenge(sock: socket.socket) -> tuple[Challenge, bytes]:
    """The leader's first frame, CHALLENGE, and its exact bytes (nothing past it is read)."""
    sock.settimeout(CONNECT_TIMEOUT)
    wire = b""
    size = len(encode(Challenge(bytes(NONCE_SIZE))))
    while len(wire) < size:
        data = sock.recv(size - len(wire))
        assert data, f"the leader closed after {wire!r}, before its CHALLENGE"
        wire += data
    parser = ReplicationParser()
    parser.receive_data(wire)
    challenge = parser.next_event()
    assert isinstance(challenge, Challenge), (challenge, wire)
    return challenge, wire


def tls_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """A follower's context: trusts `ca` (no host name check, as a member's), presents
    `cert` when given."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(ca)
    if cert:
        context.load_cert_chain(cert, key or None)
    return context


def connect(peer: tuple[str, int], context: ssl.SSLContext | None = None) -> socket.socket:
    """A connection to `peer`, over TLS with `context` (ssl.SSLError if the handshake fails
    on this side; with TLS 1.3 the leader's refusal of our certificate comes with the first
    read)."""
    sock = socket.create_connection(peer, timeout=CONNECT_TIMEOUT)
    if context is None:
        return sock
    try:
        return context.wrap_socket(sock)
    except BaseException:
        sock.close()
        raise


def plaintext_until_close(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str]:
    """What a TLS client read before the leader hung up, and how it ended ("closed" or the
    TLS alert's reason)."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ssl.SSLError as exc:
            return received, exc.reason or str(exc)
        except ConnectionResetError:
            return received, "reset"
        if not data:
            return received, "closed"
        received += data
    raise AssertionError(f"still open after {timeout} s; received {received[:200]!r}")


def handshake(peer: tuple[str, int], node_id: str, lease: int, position: Position = ORIGIN,
              key: PeerKey | None = None, context: ssl.SSLContext | None = None
              ) -> tuple[socket.socket, bytes]:
    """A connection to `peer` (over TLS with `context`) that said HELLO as (`node_id`,
    `lease`), with a proof made with `key` (None: no proof, as in plain mode), and the
    CHALLENGE's bytes it read first."""
    sock = connect(peer, context)
    challenge, wire = read_challenge(sock)
    nonce = new_nonce()
    proof = b"" if key is None else key.follower_proof(Incarnation(node_id, lease), position,
                                                        challenge.nonce, nonce)
    sock.sendall(encode(Hello(node_id, lease, position, nonce, proof)))
    return sock, wire


def hello(peer: tuple[str, int], node_id: str, lease: int, position: Position = ORIGIN,
          key: PeerKey | None = None) -> socket.socket:
    """A connection to `peer` that said HELLO as (`node_id`, `lease`)."""
    return handshake(peer, node_id, lease, position, key)[0]


def received_until_close(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Every byte the peer sends until it hangs up (AssertionError if it does not)."""
    sock.settimeout(timeout)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data
    raise AssertionError(f"still open after {timeout} s; received {received[:200]!r}")


def refusal(sock: socket.socket, timeout: float = 2.0) -> Error | None:
    """The ERROR the leader answered with (None: it streams, or closed without one)."""
    sock.settimeout(timeout)
    parser = ReplicationParser()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        event = parser.next_event()
        if isinstance(event, Error):
            return event
        if event is not NEED_DATA:
            return None
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        if not data:
            return None
        parser.receive_data(data)
    return None


class Acknowledger(threading.Thread):
    """Says HELLO as (`node_id`, `lease`), reads the stream and ACKs the newest position for
    `acking` s, then stays silent (reads nothing, acks nothing) for `silent` s, in turn,
    until `stop()`; counts the acks sent."""

    def __init__(self, peer: tuple[str, int], node_id: str, lease: int, *,
                 acking: float, silent: float, key: PeerKey | None = None) -> None:
        super().__init__(daemon=True)
        self.sock = hello(peer, node_id, lease, key=key)
        self.sock.settimeout(0.02)
        self.acking, self.silent = acking, silent
        self.acks = 0
        self.closed_by_leader = False
        self._done = threading.Event()

    def run(self) -> None:
        parser = ReplicationParser()
        newest = ORIGIN
        with contextlib.suppress(OSError):
            while not self._done.is_set():
                until = time.monotonic() + self.acking
                while time.monotonic() < until and not self._done.is_set():
                    try:
                        data = self.sock.recv(65536)
                    except TimeoutError:
                        continue
                    if not data:
                        self.closed_by_leader = True
                        return
                    parser.receive_data(data)
                    while (event := parser.next_event()) is not NEED_DATA:
                        if isinstance(event, Mutation | SnapshotEnd):
                            newest = event.position
                        elif isinstance(event, Error):
                            self.closed_by_leader = True
                            return
                    self.sock.sendall(encode(Ack(newest)))
                    self.acks += 1
                self._done.wait(self.silent)

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        self.sock.close()


class SilentCrowd(threading.Thread):
    """`count` connections to `peer` that never say anything, reopened (every `every` s)
    when the leader closes them; counts how many the leader closed or refused."""

    def __init__(self, peer: tuple[str, int], count: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.peer, self.count, self.every = peer, count, every
        self.socks: list[socket.socket] = []
        self.closed = 0
        self._done = threading.Event()

    def _fill(self) -> None:
        while len(self.socks) < self.count:
            try:
                self.socks.append(socket.create_connection(self.peer, timeout=CONNECT_TIMEOUT))
            except OSError:
                self.closed += 1
                return

    def run(self) -> None:
        while not self._done.is_set():
            self._fill()
            readable, _, _ = select.select(self.socks, [], [], self.every)
            for sock in readable:  # a silent client reads a CHALLENGE, a refusal, the end
                data = b""
                with contextlib.suppress(OSError):
                    data = sock.recv(4096)
                if data:
                    continue
                sock.close()
                self.socks.remove(sock)
                self.closed += 1
            self._done.wait(self.every)

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        for sock in self.socks:
            sock.close()


@contextlib.contextmanager
def silent_crowd(peer: tuple[str, int], count: int) -> Iterator[SilentCrowd]:
    crowd = SilentCrowd(peer, count)
    crowd._fill()
    crowd.start()
    try:
        yield crowd
    finally:
        crowd.stop()


class FakeLeader(threading.Thread):
    """A peer port that plays the leader (over TLS with `context`, a server context with any
    certificate): CHALLENGE, then after a HELLO a WELCOME claiming `claim` (node, lease,
    epoch) with a made-up proof, at once followed by a snapshot that would empty the store
    and plant a key. Records what followers sent."""

    def __init__(self, claim: tuple[str, int, int], context: ssl.SSLContext | None = None
                 ) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.address = "{}:{}".format(*self.listener.getsockname()[:2])
        self.claim = claim
        self.context = context
        self.received: list[Event] = []
        self.handshake_failures: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                sock, _ = self.listener.accept()
            except TimeoutError:
                continue
            with sock, contextlib.suppress(OSError):
                sock.settimeout(2.0)
                if self.context is not None:
                    try:
                        sock = self.context.wrap_socket(sock, server_side=True)
                    except ssl.SSLError as exc:
                        self.handshake_failures.append(exc.reason or str(exc))
                        continue
                self._serve(sock)

    def _serve(self, sock: socket.socket) -> None:
        sock.sendall(encode(Challenge(new_nonce())))
        parser = ReplicationParser()
        sent = False
        while True:
            data = sock.recv(65536)
            if not data:
                return
            parser.receive_data(data)
            while (event := parser.next_event()) is not NEED_DATA:
                assert not isinstance(event, type(NEED_DATA))
                self.received.append(event)
                if isinstance(event, Hello) and not sent:
                    sent = True
                    node, lease, epoch = self.claim
                    far = Position(epoch, 1 << 40)
                    sock.sendall(b"".join(encode(m) for m in (
                        Welcome(node, lease, epoch, os.urandom(32)),
                        SnapshotBegin(far), SnapshotEnd(far, 0),
                        Mutation(epoch, (1 << 40) + 1, ItemState(b"planted", b"evil", 0, 0, 1)),
                    )))

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        self.listener.close()


def forge_leader_address(etcd_url: str, cluster: str, view: ClusterView, leader: LeaderRecord,
                         address: str) -> None:
    """What an attacker who can write etcd does: the leader's node record, under its own
    lease, now gives `address` as its peer address."""
    forged = dataclasses.replace(view.nodes[leader.node_id], peer_address=address)

    async def forge() -> None:
        async with EtcdCoordinator.connect(etcd_url, cluster) as etcd_api:
            session = Session(etcd_api, leader.lease_id, 2.0, 0.0, 0.0)
            await etcd_api.register_node(session, forged)
    trio.run(forge)
