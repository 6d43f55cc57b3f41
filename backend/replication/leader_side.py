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

Who may be served (issue 12; the peer port has no authentication yet): a HELLO must name a
current incarnation, a node registered in this shard (its `nodes/` key, not this node's)
whose lease is the one named; any other gets ERROR NOT_MEMBER and is closed (a real follower
whose new lease has not reached this node's view yet retries shortly). Until its HELLO is
accepted a connection is *pending*: the peer server keeps only a few of those, a new arrival
evicting the oldest (replicator.PEER_PENDING), and the HELLO timeout still applies; once
accepted, a newer connection of the same node supersedes it. So silent or unregistered
clients cannot fill the port, and the peer connections stay bounded by the shard's members
plus the pending cap.
"""

from __future__ import annotations

import logging
import socket

import trio

from memring.backend.replication.in_sync import FollowerLink, InSyncReplicas
from memring.backend.replication.ports import LeaderSideHost
from memring.cluster.coordinator import Incarnation
from memring.netio import nonblocking
from memring.netio.connection_server import Connection
from memring.protocol.replication import (
    PROTOCOL_VERSION,
    Ack,
    Error,
    ErrorCode,
    Event,
    Hello,
    MalformedFrame,
    Position,
    ReplicationParser,
    SnapshotItem,
    encode,
)
from memring.protocol.sentinels import NEED_DATA

log = logging.getLogger("memring.backend.replication")

HELLO_TIMEOUT = 5.0
BATCH = 1024  # mutations per send


class _Deposed(Exception):
    """This node no longer leads the epoch the connection was serving."""


async def next_event(sock: socket.socket, parser: ReplicationParser) -> Event | None:
    """The next event from the peer, or None when it hung up."""
    while True:
        event = parser.next_event()
        if event is not NEED_DATA:
            return event
        data = await nonblocking.recv(sock, nonblocking.READ_SIZE)
        if not data:
            return None
        parser.receive_data(data)


async def _send(conn: Connection, message: Error) -> None:
    try:
        await nonblocking.send_all(conn.sock, encode(message))
    except OSError:
        pass


async def serve_follower(host: LeaderSideHost, conn: Connection) -> None:
    parser = ReplicationParser()
    hello: Event | None = None
    with trio.move_on_after(HELLO_TIMEOUT):
        hello = await next_event(conn.sock, parser)
    epoch = host.log.newest.epoch
    if not isinstance(hello, Hello):
        await _send(conn, Error(ErrorCode.MALFORMED, epoch, "expected HELLO"))
        return
    if hello.version != PROTOCOL_VERSION:
        await _send(conn, Error(ErrorCode.VERSION, epoch, f"version {PROTOCOL_VERSION} only"))
        return
    insync = host.insync
    if not host.leading or insync is None:
        await _send(conn, Error(ErrorCode.NOT_LEADER, epoch, "not the leader"))
        return
    node = hello.node_id
    incarnation = Incarnation(node, hello.incarnation)
    if not insync.current(incarnation):
        # Not a registered member of this shard under this lease in our view: an impostor,
        # or a real follower whose new lease has not reached us yet (it retries soon).
        log.info("refused HELLO of %s (lease %x): not a current member of the shard",
                 node, hello.incarnation)
        await _send(conn, Error(ErrorCode.NOT_MEMBER, epoch, "not a current member"))
        return
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


def _check(host: LeaderSideHost, epoch: int) -> None:
    if not host.leading or host.log.newest.epoch != epoch:
        raise _Deposed


async def _stream(host: LeaderSideHost, conn: Connection, position: Position, epoch: int,
                  link: FollowerLink) -> None:
    sock = conn.sock
    send_all = nonblocking.send_all
    while True:
        _check(host, epoch)
        tail = host.log.since(position, limit=BATCH)
        if tail is None:
            link.snapshotting = True  # not to be waited for, nor added to the ISR
            position = await _send_snapshot(host, conn, epoch)
            link.snapshotting = False
            continue
        if tail:
            await send_all(sock, b"".join(map(encode, tail)))
            position = tail[-1].position
            continue
        await host.next_change()


async def _send_snapshot(host: LeaderSideHost, conn: Connection, epoch: int) -> Position:
    sock = conn.sock
    snapshot = host.snapshot()
    host.counters.snapshots_sent += 1
    started = trio.current_time()
    await nonblocking.send_all(sock, encode(snapshot.begin()))
    while not snapshot.done:
        chunk = snapshot.next_chunk()
        if chunk:
            await nonblocking.send_all(sock, b"".join(encode(SnapshotItem(s)) for s in chunk))
        await trio.sleep(0)  # let clients write while the snapshot streams
        _check(host, epoch)
    await nonblocking.send_all(sock, encode(snapshot.end()))
    log.info("snapshot of %d items at %s sent in %.3f s", snapshot.sent,
             tuple(snapshot.position), trio.current_time() - started)
    return snapshot.position


async def _read_acks(insync: InSyncReplicas, conn: Connection, parser: ReplicationParser,
                     link: FollowerLink, done: trio.CancelScope) -> None:
    node = link.incarnation.node_id
    try:
        while True:
            event = await next_event(conn.sock, parser)
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
