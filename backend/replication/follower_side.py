"""The follower's side of replication: follow the shard's current leader over the peer port.

Theory of operation: while this node does not lead, one task finds the leader in the cluster
view (`leader_peer`: its peer address, node id, lease and epoch), connects, and authenticates
it (issue 13): it answers the leader's CHALLENGE with HELLO (the position of the last
mutation applied, a fresh nonce and, with a peer secret, its proof; `peer_auth`), and takes
nothing from the leader until its WELCOME names the leader etcd names (node, lease, epoch:
else ERROR NOT_LEADER) and proves the secret over this HELLO's nonce (else ERROR
UNAUTHENTICATED), all within HANDSHAKE_TIMEOUT. A refused "leader" (a fake one an etcd
record points at) never changes the store. Then it applies what comes through FollowerState,
in order:
mutations, or a snapshot followed by the tail. After each read it ACKs its position. It hangs
up and starts over (capped backoff) when the connection drops, the leader changes, the leader
answers ERROR, or a message does not follow (a gap or an older epoch: it says so with ERROR
and asks again from its position, and the leader falls back to a snapshot if it must). A
snapshot cut off half-way leaves a partial store: it is emptied and the follower asks again
from the origin. When this node is promoted the task stops applying at once.

HELLO names this node's incarnation (node id + lease), which the leader writes into the ISR.
A node that lost its etcd session and opened a new one (a new lease) is a new incarnation even
though its peer connection may have survived (a freeze past the TTL): it hangs up and says
HELLO again at once with the new lease, from its position (the leader's backlog, no snapshot),
so the leader drops the old incarnation from the ISR and adds the new one once caught up.
A session merely lost (lease 0 until the next one) or resumed under the same lease changes
nothing. The leader refuses a HELLO whose incarnation is not a current member of its shard
in its view (ERROR NOT_MEMBER): a new lease may simply not have reached it yet, so the
follower asks again every NOT_MEMBER_RETRY s rather than backing off. All it knows of the
node is its `ports.FollowerSideHost`.

With peer TLS (`peer_tls`) the connection starts with a TLS handshake, within the same
HANDSHAKE_TIMEOUT: this node presents its certificate and verifies the leader's chain against
the cluster's CA, not a host name (peer_tls says why); a failed handshake counts as a refused
leader (logged with the address and OpenSSL's reason, rate-limited). Then every frame goes
through the TLS stream, and WELCOME's node id, once it is the one etcd names, must also be
named by the leader's certificate, else ERROR WRONG_IDENTITY and nothing is applied.
"""

from __future__ import annotations

import logging
import socket
import ssl
from enum import Enum

import trio

from memring.backend.cluster_member import LeaderPeer
from memring.backend.replication.follower_apply import FollowerState, ReplicationRejected
from memring.backend.replication.leader_side import next_event
from memring.backend.replication.mutation_log import ReplicationGap
from memring.backend.replication.peer_auth import new_nonce
from memring.backend.replication.peer_tls import certifies, described
from memring.backend.replication.ports import FollowerSideHost
from memring.cluster.coordinator import Incarnation
from memring.netio import nonblocking
from memring.netio.settings import SettingsError, split_address
from memring.netio.streams import PlainStream, Stream, TlsStream
from memring.netio.tls import handshake_failure
from memring.protocol.replication import (
    PROTOCOL_VERSION,
    Ack,
    Challenge,
    Error,
    ErrorCode,
    Hello,
    MalformedFrame,
    Mutation,
    Position,
    ReplicationParser,
    SnapshotBegin,
    SnapshotEnd,
    SnapshotItem,
    Welcome,
    encode,
)
from memring.protocol.sentinels import NEED_DATA

log = logging.getLogger("memring.backend.replication")

CONNECT_TIMEOUT = 1.0
HANDSHAKE_TIMEOUT = 2.0  # CHALLENGE to WELCOME, as the leader allows (leader_side)
# The role watchers wake on every role change and cluster view (Replicator.configure); this is
# only a safety net (at 0.05 s it woke 24 idle followers 20 times a second, at 1 s every idle
# backend, leaders included, once a second; docs/scaling.md)
WATCH_INTERVAL = 5.0
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0
# The leader refused HELLO (NOT_MEMBER): its view may trail etcd by a watch round trip
# behind this node's new lease, so ask again soon, at a fixed pace (not the growing backoff)
NOT_MEMBER_RETRY = 0.1
LOG_REFUSALS = 100  # of the leaders refused, the first and every 100th are logged


class SessionEnd(Enum):
    """Why a connection to the leader ended, which says when to connect again."""

    DROPPED = "dropped"  # hung up, an error, a change of leader: the capped backoff
    REBORN = "reborn"  # this node is a new incarnation: say HELLO again at once
    NOT_MEMBER = "not a member"  # the leader does not know this incarnation (yet): soon


async def follow_leader(host: FollowerSideHost) -> None:
    backoff = BACKOFF_FIRST
    failures = refusals = 0
    counters = host.counters
    while True:
        target = await _leader(host)
        before = counters.applied
        try:
            end = await _session(host, target)
            if end is SessionEnd.REBORN:
                backoff, failures = BACKOFF_FIRST, 0
                continue  # a new incarnation: introduce it to the leader at once
            if end is SessionEnd.NOT_MEMBER:
                refusals += 1
                if refusals == 1 or refusals % 100 == 0:
                    log.info("leader %s does not know lease %x yet (%d refusals): retrying "
                             "every %g s", target.address, host.incarnation().lease_id, refusals,
                             NOT_MEMBER_RETRY)
                await trio.sleep(NOT_MEMBER_RETRY)
                continue
            refusals = 0
        except* (OSError, trio.TooSlowError, SettingsError) as group:
            failures += 1
            if failures == 1 or failures % 50 == 0:
                exc = group.exceptions[0]
                log.info("replication from %s: %s", target.address, exc or type(exc).__name__)
        if counters.applied != before:
            backoff, failures = BACKOFF_FIRST, 0
        else:
            backoff = min(BACKOFF_MAX, backoff * 2)
        await trio.sleep(backoff)


async def _leader(host: FollowerSideHost) -> LeaderPeer:
    """Wait until another node leads and publishes a peer address."""
    while True:
        target = None if host.leading else host.leader_peer()
        if target is not None:
            return target
        with trio.move_on_after(WATCH_INTERVAL):
            await host.next_role_change()


async def _session(host: FollowerSideHost, target: LeaderPeer) -> SessionEnd:
    """One connection to the leader, and why it ended."""
    peer_host, peer_port = split_address(target.address)
    with trio.fail_after(CONNECT_TIMEOUT):
        sock = await nonblocking.connect(peer_host, peer_port)
    me = host.incarnation()  # as HELLO will name it
    refused: ErrorCode | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, host, target, me, nursery.cancel_scope)
            refused = await _receive(host, sock, me, target)
            nursery.cancel_scope.cancel()
    finally:
        nonblocking.close(sock)
    if _reborn(host, me):
        return SessionEnd.REBORN
    return SessionEnd.NOT_MEMBER if refused is ErrorCode.NOT_MEMBER else SessionEnd.DROPPED


def _reborn(host: FollowerSideHost, introduced: Incarnation) -> bool:
    """This node holds a lease other than the one its HELLO named (lease 0, between two
    sessions, is not an incarnation to announce: wait for the next lease)."""
    current = host.incarnation()
    return current.lease_id != 0 and current != introduced


async def _watch(host: FollowerSideHost, target: LeaderPeer, introduced: Incarnation,
                 scope: trio.CancelScope) -> None:
    """Hang up when this node leads or another node (or epoch) does, or when this node is
    a new incarnation (a new session's lease) that the leader must hear of."""
    while not host.leading and host.leader_peer() == target:
        if _reborn(host, introduced):
            log.info("new incarnation (lease %x, was %x): saying HELLO to the leader again",
                     host.incarnation().lease_id, introduced.lease_id)
            break
        with trio.move_on_after(WATCH_INTERVAL):
            await host.next_role_change()
    scope.cancel()


def _count_refusal(host: FollowerSideHost, sock: socket.socket, why: str) -> None:
    """Count a refused leader; log the first refusal and every LOG_REFUSALS-th (the follower
    asks again within its backoff; `stats` has the count)."""
    counters = host.counters
    counters.leaders_refused += 1
    refused = counters.leaders_refused
    level = logging.WARNING if refused == 1 or refused % LOG_REFUSALS == 0 else logging.DEBUG
    log.log(level, "refusing the leader at %s: %s (%d refused so far)", _peer_name(sock), why,
            refused)


async def _refuse(host: FollowerSideHost, stream: Stream, code: ErrorCode, epoch: int,
                  why: str) -> None:
    """Count and log the refusal, and say why with ERROR."""
    _count_refusal(host, stream.sock, why)
    await stream.send_all(encode(Error(code, epoch, why)))


def _peer_name(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"


async def _secure(host: FollowerSideHost, sock: socket.socket) -> Stream | None:
    """The connection's stream: plain, or TLS once its handshake verified the leader's chain
    (None: it failed, counted and logged as a refused leader). The caller bounds its time."""
    tls = host.peer_tls
    if tls is None:
        return PlainStream(sock)
    stream = TlsStream(sock, tls.client, server_side=False)
    try:
        await stream.handshake()
    except (ssl.SSLError, EOFError, OSError) as exc:
        _count_refusal(host, sock, f"TLS handshake failed: {handshake_failure(exc)}")
        return None
    return stream


async def _handshake(host: FollowerSideHost, stream: Stream, parser: ReplicationParser,
                     me: Incarnation, position: Position, target: LeaderPeer
                     ) -> ErrorCode | bool:
    """CHALLENGE, HELLO with this node's proof, WELCOME checked against the leader etcd names
    (`target`), its certificate (peer TLS) and its proof: True when the leader is
    authenticated; else False (this side refused, ERROR sent) or the code of the leader's
    ERROR."""
    epoch = host.follower.newest_epoch
    challenge = await next_event(stream, parser)
    if isinstance(challenge, Error):
        log.info("leader says %s: %s", challenge.code.name, challenge.message)
        return challenge.code
    if not isinstance(challenge, Challenge) or challenge.version != PROTOCOL_VERSION:
        what = f"version {challenge.version}" if isinstance(challenge, Challenge) else \
            type(challenge).__name__ if challenge is not None else "nothing"
        await _refuse(host, stream, ErrorCode.VERSION if isinstance(challenge, Challenge) else
                      ErrorCode.MALFORMED, epoch, f"expected CHALLENGE version "
                      f"{PROTOCOL_VERSION}, got {what}")
        return False
    key = host.peer_key
    nonce = new_nonce()
    proof = key.follower_proof(me, position, challenge.nonce, nonce)
    await stream.send_all(encode(Hello(me.node_id, me.lease_id, position, nonce, proof)))
    welcome = await next_event(stream, parser)
    if isinstance(welcome, Error):
        if welcome.code is ErrorCode.UNAUTHENTICATED:  # follow_leader's backoff: ~1/s
            log.warning("the leader at %s refused this node's proof: is --peer-secret-file "
                        "the cluster's?", _peer_name(stream.sock))
        else:
            log.info("leader says %s: %s", welcome.code.name, welcome.message)
        return welcome.code
    if not isinstance(welcome, Welcome):
        what = type(welcome).__name__ if welcome is not None else "nothing"
        await _refuse(host, stream, ErrorCode.MALFORMED, epoch,
                      f"expected WELCOME, got {what}")
        return False
    claimed = (welcome.node_id, welcome.lease_id, welcome.epoch)
    if claimed != (target.node_id, target.lease_id, target.epoch):
        await _refuse(host, stream, ErrorCode.NOT_LEADER, epoch,
                      f"{welcome.node_id} (lease {welcome.lease_id:x}, epoch {welcome.epoch}) "
                      f"is not the leader etcd names ({target.node_id}, lease "
                      f"{target.lease_id:x}, epoch {target.epoch})")
        return False
    certificate = stream.peer_certificate
    if host.peer_tls is not None and not certifies(certificate, welcome.node_id):
        # a valid certificate of another member (an etcd record pointing at it): not the leader
        await _refuse(host, stream, ErrorCode.WRONG_IDENTITY, epoch,
                      f"the certificate names {described(certificate)}, not the leader "
                      f"{welcome.node_id}")
        return False
    leader = Incarnation(welcome.node_id, welcome.lease_id)
    expected = key.leader_proof(leader, welcome.epoch, me, nonce, challenge.nonce)
    if not key.verify(expected, welcome.proof):
        await _refuse(host, stream, ErrorCode.UNAUTHENTICATED, epoch,
                      f"{welcome.node_id}'s proof is " + ("missing" if not welcome.proof
                                                          else "wrong (not the peer secret)"))
        return False
    if key.required and not welcome.proof:
        log.info("following %s without its proof (--peer-secret-optional)", welcome.node_id)
    return True


async def _receive(host: FollowerSideHost, sock: socket.socket, me: Incarnation,
                   target: LeaderPeer) -> ErrorCode | None:
    """Authenticate the leader, then apply its stream until it ends (counting in
    `counters.applied`); the code of the ERROR the leader ended it with, if it did."""
    state: FollowerState = host.follower
    if state.in_snapshot:  # cut off inside a snapshot: a partial store
        state = host.start_over()
    parser = ReplicationParser()
    with trio.fail_after(HANDSHAKE_TIMEOUT):
        stream = await _secure(host, sock)
        if stream is None:
            return None
        authenticated = await _handshake(host, stream, parser, me, state.position, target)
    if authenticated is not True:
        return authenticated if isinstance(authenticated, ErrorCode) else None
    send_all, recv = stream.send_all, stream.recv
    counters = host.counters
    acked = state.position
    while True:
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if host.leading or host.follower is not state:
                return None  # promoted: apply nothing more
            try:
                if isinstance(event, Mutation):
                    state.apply(event)
                elif isinstance(event, SnapshotItem):
                    state.install(event.state)
                elif isinstance(event, SnapshotBegin):
                    counters.snapshots_received += 1
                    log.info("snapshot from the leader at %s", tuple(event.position))
                    state.begin_snapshot(event)
                elif isinstance(event, SnapshotEnd):
                    state.end_snapshot(event)
                    log.info("snapshot of %d items installed", event.count)
                elif isinstance(event, Error):
                    log.info("leader says %s: %s", event.code.name, event.message)
                    return event.code
                else:
                    reason = event.reason if isinstance(event, MalformedFrame) else \
                        f"unexpected {type(event).__name__}"
                    log.warning("replication stream: %s", reason)
                    await send_all(encode(Error(ErrorCode.MALFORMED, state.newest_epoch,
                                                reason)))
                    return None
            except ReplicationRejected as exc:
                log.info("refusing the leader's stream: %s", exc)
                await send_all(encode(exc.error))
                return None
            except ReplicationGap as exc:  # the mirrored log disagrees: start over
                log.warning("replication log: %s; starting over", exc)
                host.start_over()
                return None
            counters.applied += 1
        if not state.in_snapshot and state.position != acked:
            acked = state.position
            await send_all(encode(Ack(acked)))
        data = await recv(nonblocking.READ_SIZE)
        if not data:
            return None
        parser.receive_data(data)
