"""The leader's side of replication: one task per follower connection on the peer port.

Theory of operation: a follower sends HELLO with its position. While this node leads, its
task answers with the log's mutations after that position (`ReplicationLog.since`), or, when
the backlog no longer holds it, with a snapshot (SNAPSHOT_BEGIN, the items a chunk at a time
with a yield to the clients between chunks, SNAPSHOT_END) and then the mutations after the
snapshot's position; if the backlog dropped that position meanwhile, it snapshots again.
Then it waits for the next change (`LeaderSideHost.next_change`: every committed write wakes
it) and sends what is new, in batches. A second task reads the follower's ACKs and reports
them to the leadership's InSyncReplicas (`in_sync`) on that connection's own link, which
the ISR and sync-mode replies follow. When this node stops leading, every follower
connection gets ERROR NOT_LEADER and is closed, and followers look for the new leader. All it
knows of the node is its `ports.LeaderSideHost`.

Who may be served (issues 12 and 13): on accept the leader sends CHALLENGE (a fresh nonce)
and waits HANDSHAKE_TIMEOUT for HELLO. With a peer secret, HELLO's proof must be the HMAC of
the follower's identity over both nonces (`peer_auth`), else ERROR UNAUTHENTICATED; then the
HELLO must name a current incarnation, a node registered in this shard (its `nodes/` key,
not this node's) whose lease is the one named, else ERROR NOT_MEMBER (a real follower whose
new lease has not reached this node's view yet retries shortly). Only then does the leader
answer WELCOME with its own proof, and stream. A refused peer receives CHALLENGE and one
ERROR, nothing else. Until admitted a connection is *pending*: the peer server keeps only a
few of those, a new arrival evicting the oldest (replicator.PEER_PENDING); once admitted, a
newer connection of the same node supersedes it. So silent, unauthenticated or unregistered
clients cannot fill the port, and the peer connections stay bounded by the shard's members
plus the pending cap.

With peer TLS (`peer_tls`) the connection's first bytes are a TLS handshake that requires a
certificate from the cluster's CA, within the same HANDSHAKE_TIMEOUT and while the connection
is pending; a failed handshake is refused as a wrong proof is (counted, logged with the
peer's address and OpenSSL's reason, rate-limited) and the peer gets no CHALLENGE. After it
everything, CHALLENGE included, travels through the connection's TLS stream, and HELLO's
node id must be one the certificate names (else ERROR WRONG_IDENTITY, before the proof and
etcd checks).
"""

from __future__ import annotations

import logging
import ssl

import trio

from memring.backend.replication.in_sync import FollowerLink, InSyncReplicas
from memring.backend.replication.peer_auth import new_nonce
from memring.backend.replication.peer_tls import PeerTls, certifies, described
from memring.backend.replication.ports import LeaderSideHost
from memring.cluster.coordinator import Incarnation
from memring.netio.connection import Connection
from memring.netio.nonblocking import READ_SIZE
from memring.netio.streams import Stream, TlsStream
from memring.netio.tls import handshake_failure
from memring.protocol.replication import (
    PROTOCOL_VERSION,
    Ack,
    Challenge,
    Error,
    ErrorCode,
    Event,
    Hello,
    MalformedFrame,
    Position,
    ReplicationParser,
    SnapshotItem,
    Welcome,
    encode,
)
from memring.protocol.sentinels import NEED_DATA

log = logging.getLogger("memring.backend.replication")

# A peer connection completes the handshake (CHALLENGE, HELLO, WELCOME) within this, or is
# closed: together with replicator.PEER_PENDING it bounds what impostors can hold (issue 13)
HANDSHAKE_TIMEOUT = 2.0
BATCH = 1024  # mutations per send
LOG_REFUSALS = 100  # of the refused proofs, the first and every 100th are logged


class _Deposed(Exception):
    """This node no longer leads the epoch the connection was serving."""


async def next_event(stream: Stream, parser: ReplicationParser) -> Event | None:
    """The next event from the peer, or None when it hung up (both sides read with it)."""
    while True:
        event = parser.next_event()
        if event is not NEED_DATA:
            return event
        data = await stream.recv(READ_SIZE)
        if not data:
            return None
        parser.receive_data(data)


async def _send(conn: Connection, message: Error) -> None:
    try:
        await conn.stream.send_all(encode(message))
    except OSError:
        pass


async def serve_follower(host: LeaderSideHost, conn: Connection) -> None:
    parser = ReplicationParser()
    admitted: tuple[Hello, int, InSyncReplicas] | None = None
    tls = host.peer_tls
    secured = tls is None  # an ERROR may be sent (plain, or once TLS is up)
    with trio.move_on_after(HANDSHAKE_TIMEOUT) as handshake:
        if tls is not None:
            secured = await _secure(host, conn, tls)
        if secured:
            admitted = await _handshake(host, conn, parser)
    if handshake.cancelled_caught:
        if not secured:
            _refused(host, "TLS handshake with %s failed: no handshake within %g s",
                     _peer_name(conn), HANDSHAKE_TIMEOUT)
            return
        log.info("peer %s: no handshake within %g s", _peer_name(conn), HANDSHAKE_TIMEOUT)
        await _send(conn, Error(ErrorCode.MALFORMED, host.log.newest.epoch,
                                f"no HELLO within {HANDSHAKE_TIMEOUT:g} s"))
    if admitted is None:
        return
    hello, epoch, insync = admitted
    node = hello.node_id
    incarnation = Incarnation(node, hello.incarnation)
    conn.pending = False  # admitted: at most one such connection per node (below)
    link = insync.connected(incarnation, hello.position,
                            snapshotting=not host.log.covers(hello.position),
                            hang_up=conn.scope.cancel)
    log.info("follower %s connected at %s", node, tuple(hello.position))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_read_acks, insync, conn, parser, link, nursery.cancel_scope)
            try:
                await _stream(host, conn, hello.position, epoch, link)
            except _Deposed:
                await _send(conn, Error(ErrorCode.NOT_LEADER, epoch, "no longer the leader"))
            except OSError as exc:  # the follower went away
                log.info("follower %s: %s", node, exc)
            nursery.cancel_scope.cancel()
    finally:
        insync.disconnected(link)  # its own link only: not a newer connection's
        log.info("follower %s disconnected", node)


def _refused(host: LeaderSideHost, message: str, *args: object) -> None:
    """Count a refused proof; log the first and every LOG_REFUSALS-th as a warning (an
    impostor retrying in a loop does not flood the log; `stats` has the count)."""
    counters = host.counters
    counters.peers_refused += 1
    refused = counters.peers_refused
    level = logging.WARNING if refused == 1 or refused % LOG_REFUSALS == 0 else logging.DEBUG
    log.log(level, message + " (%d refused so far)", *args, refused)


async def _secure(host: LeaderSideHost, conn: Connection, tls: PeerTls) -> bool:
    """The TLS handshake (a follower certificate from the CA required); False when it
    failed (refused: counted and logged). The caller bounds its time."""
    peer = _peer_name(conn)  # now: a peer that gave up is gone from the socket by the log
    stream = TlsStream(conn.sock, tls.server, server_side=True)  # the newest context
    conn.stream = stream
    try:
        await stream.handshake()
    except (ssl.SSLError, EOFError, OSError) as exc:
        _refused(host, "TLS handshake with %s failed: %s", peer, handshake_failure(exc))
        return False
    return True


def _peer_name(conn: Connection) -> str:
    try:
        host, port = conn.sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def _handshake(host: LeaderSideHost, conn: Connection, parser: ReplicationParser
                     ) -> tuple[Hello, int, InSyncReplicas] | None:
    """CHALLENGE, the follower's HELLO checked (its proof, then its identity in etcd), and
    WELCOME with this leader's proof; once admitted, the HELLO with the epoch and followers
    it was admitted to, else None (refused: ERROR sent). Nothing but CHALLENGE and an ERROR
    reaches a peer that is not admitted."""
    nonce = new_nonce()
    stream = conn.stream
    try:
        await stream.send_all(encode(Challenge(nonce)))
        hello = await next_event(stream, parser)
    except OSError:
        return None
    epoch = host.log.newest.epoch
    if not isinstance(hello, Hello):
        await _send(conn, Error(ErrorCode.MALFORMED, epoch, "expected HELLO"))
        return None
    if hello.version != PROTOCOL_VERSION:
        await _send(conn, Error(ErrorCode.VERSION, epoch, f"version {PROTOCOL_VERSION} only"))
        return None
    certificate = stream.peer_certificate
    if host.peer_tls is not None and not certifies(certificate, hello.node_id):
        # a valid certificate of another member (or of anyone the CA signed): not this node
        _refused(host, "refused HELLO of %s from %s: its certificate names %s", hello.node_id,
                 _peer_name(conn), described(certificate))
        await _send(conn, Error(ErrorCode.WRONG_IDENTITY, epoch,
                                "the certificate does not name this node id"))
        return None
    key = host.peer_key
    follower = Incarnation(hello.node_id, hello.incarnation)
    expected = key.follower_proof(follower, hello.position, nonce, hello.nonce)
    if not key.verify(expected, hello.proof):
        # Not the cluster's secret (or none): whoever it claims to be, it learns nothing
        _refused(host, "refused HELLO of %s (lease %x) from %s: %s", hello.node_id,
                 hello.incarnation, _peer_name(conn),
                 "no proof" if not hello.proof else "wrong proof (not the peer secret)")
        await _send(conn, Error(ErrorCode.UNAUTHENTICATED, epoch, "proof missing or wrong"))
        return None
    if key.required and not hello.proof:
        log.info("accepted HELLO of %s without a proof (--peer-secret-optional)",
                 hello.node_id)
    leadership, insync = host.leadership, host.insync
    if not host.leading or insync is None or leadership is None \
            or leadership.epoch != epoch:
        await _send(conn, Error(ErrorCode.NOT_LEADER, epoch, "not the leader"))
        return None
    if not insync.current(follower):
        # Not a registered member of this shard under this lease in our view: an impostor,
        # or a real follower whose new lease has not reached us yet (it retries soon).
        host.counters.peers_refused += 1
        log.info("refused HELLO of %s (lease %x): not a current member of the shard",
                 hello.node_id, hello.incarnation)
        await _send(conn, Error(ErrorCode.NOT_MEMBER, epoch, "not a current member"))
        return None
    me = Incarnation(leadership.node_id, leadership.lease_id)
    proof = key.leader_proof(me, epoch, follower, hello.nonce, nonce)
    try:
        await stream.send_all(encode(Welcome(me.node_id, me.lease_id, epoch, proof)))
    except OSError:
        return None
    return hello, epoch, insync


def _check(host: LeaderSideHost, epoch: int) -> None:
    if not host.leading or host.log.newest.epoch != epoch:
        raise _Deposed


async def _stream(host: LeaderSideHost, conn: Connection, position: Position, epoch: int,
                  link: FollowerLink) -> None:
    send_all = conn.stream.send_all
    while True:
        _check(host, epoch)
        tail = host.log.since(position, limit=BATCH)
        if tail is None:
            link.snapshotting = True  # not to be waited for, nor added to the ISR
            position = await _send_snapshot(host, conn, epoch)
            link.snapshotting = False
            continue
        if tail:
            await send_all(b"".join(map(encode, tail)))
            position = tail[-1].position
            continue
        await host.next_change()


async def _send_snapshot(host: LeaderSideHost, conn: Connection, epoch: int) -> Position:
    send_all = conn.stream.send_all
    snapshot = host.snapshot()
    host.counters.snapshots_sent += 1
    started = trio.current_time()
    await send_all(encode(snapshot.begin()))
    while not snapshot.done:
        chunk = snapshot.next_chunk()
        if chunk:
            await send_all(b"".join(encode(SnapshotItem(s)) for s in chunk))
        await trio.sleep(0)  # let clients write while the snapshot streams
        _check(host, epoch)
    await send_all(encode(snapshot.end()))
    log.info("snapshot of %d items at %s sent in %.3f s", snapshot.sent,
             tuple(snapshot.position), trio.current_time() - started)
    return snapshot.position


async def _read_acks(insync: InSyncReplicas, conn: Connection, parser: ReplicationParser,
                     link: FollowerLink, done: trio.CancelScope) -> None:
    node = link.incarnation.node_id
    try:
        while True:
            event = await next_event(conn.stream, parser)
            if isinstance(event, Ack):
                insync.acked(link, event.position)  # this connection's link, nobody else's
                continue
            if isinstance(event, Error):
                log.info("follower %s: %s %s", node, event.code.name, event.message)
            elif isinstance(event, MalformedFrame):
                log.warning("follower %s: bad frame (%s)", node, event.reason)
            elif event is not None:
                log.warning("follower %s: unexpected %s", node, type(event).__name__)
            return
    except OSError:
        return
    finally:
        done.cancel()
