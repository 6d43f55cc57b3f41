"""The follower's side of replication: follow the shard's current leader over the peer port.

Theory of operation: while this node does not lead, one task finds the leader's peer address
in the cluster view (`ClusterMember.leader_peer`), connects, sends HELLO with the position of
the last mutation applied, and applies what comes back through FollowerState, in order:
mutations, or a snapshot followed by the tail. After each read it ACKs its position. It hangs
up and starts over (capped backoff) when the connection drops, the leader changes, the leader
answers ERROR, or a message does not follow (a gap or an older epoch: it says so with ERROR
and asks again from its position, and the leader falls back to a snapshot if it must). A
snapshot cut off half-way leaves a partial store: it is emptied and the follower asks again
from the origin. When this node is promoted the task stops applying at once.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING

import trio

from memring.backend.replication.follower_apply import FollowerState, ReplicationRejected
from memring.backend.replication.leader_side import READ_SIZE
from memring.backend.replication.mutation_log import ReplicationGap
from memring.backend.settings import SettingsError, split_address
from memring.netio import nonblocking
from memring.protocol.replication import (
    NEED_DATA,
    ORIGIN,
    Ack,
    Error,
    ErrorCode,
    Hello,
    MalformedFrame,
    Mutation,
    ReplicationParser,
    SnapshotBegin,
    SnapshotEnd,
    SnapshotItem,
    encode,
)

if TYPE_CHECKING:
    from memring.backend.replication.replicator import Replicator

log = logging.getLogger("memring.backend.replication")

CONNECT_TIMEOUT = 1.0
WATCH_INTERVAL = 0.05
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 1.0


async def follow_leader(rep: Replicator) -> None:
    backoff = BACKOFF_FIRST
    failures = 0
    while True:
        target = await _leader(rep)
        before = rep.applied
        try:
            await _session(rep, target)
        except* (OSError, trio.TooSlowError, SettingsError) as group:
            failures += 1
            if failures == 1 or failures % 50 == 0:
                exc = group.exceptions[0]
                log.info("replication from %s: %s", target[0], exc or type(exc).__name__)
        if rep.applied != before:
            backoff, failures = BACKOFF_FIRST, 0
        else:
            backoff = min(BACKOFF_MAX, backoff * 2)
        await trio.sleep(backoff)


async def _leader(rep: Replicator) -> tuple[str, int]:
    """Wait until another node leads and publishes a peer address."""
    while True:
        target = None if rep.leading else rep.member.leader_peer()
        if target is not None:
            return target
        with trio.move_on_after(WATCH_INTERVAL):
            await rep.role_changed.park()


async def _session(rep: Replicator, target: tuple[str, int]) -> None:
    host, port = split_address(target[0])
    with trio.fail_after(CONNECT_TIMEOUT):
        sock = await nonblocking.connect(host, port)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch, rep, target, nursery.cancel_scope)
            await _receive(rep, sock)
            nursery.cancel_scope.cancel()
    finally:
        nonblocking.close(sock)


async def _watch(rep: Replicator, target: tuple[str, int], scope: trio.CancelScope) -> None:
    """Hang up when this node leads or another node (or epoch) does."""
    while not rep.leading and rep.member.leader_peer() == target:
        with trio.move_on_after(WATCH_INTERVAL):
            await rep.role_changed.park()
    scope.cancel()


def _fresh_state(rep: Replicator) -> FollowerState:
    """A follower cut off inside a snapshot holds a partial store: empty it, start over."""
    rep.store.apply_flush(0)
    rep.log.reset(ORIGIN)
    # From the origin the leader may replay its backlog, older epochs first: that history is
    # not a deposed leader speaking (the gap checks and following only the leader etcd names
    # guard that), so the newest epoch seen starts over too.
    state = FollowerState(rep.store, ORIGIN, rep.log)
    rep.follower = state
    return state


async def _receive(rep: Replicator, sock: socket.socket) -> None:
    """Apply the leader's stream until it ends (counting in `rep.applied`)."""
    state = rep.follower
    if state.in_snapshot:
        state = _fresh_state(rep)
    member = rep.member
    session = member.session
    await nonblocking.send_all(sock, encode(Hello(
        member.identity.node_id, session.lease_id if session is not None else 0,
        state.position)))
    parser = ReplicationParser()
    acked = state.position
    while True:
        data = await nonblocking.recv(sock, READ_SIZE)
        if not data:
            return
        parser.receive_data(data)
        while True:
            event = parser.next_event()
            if event is NEED_DATA:
                break
            if rep.leading or rep.follower is not state:
                return  # promoted: apply nothing more
            try:
                if isinstance(event, Mutation):
                    state.apply(event)
                elif isinstance(event, SnapshotItem):
                    state.install(event.state)
                elif isinstance(event, SnapshotBegin):
                    rep.snapshots_received += 1
                    log.info("snapshot from the leader at %s", tuple(event.position))
                    state.begin_snapshot(event)
                elif isinstance(event, SnapshotEnd):
                    state.end_snapshot(event)
                    log.info("snapshot of %d items installed", event.count)
                elif isinstance(event, Error):
                    log.info("leader says %s: %s", event.code.name, event.message)
                    return
                else:
                    reason = event.reason if isinstance(event, MalformedFrame) else \
                        f"unexpected {type(event).__name__}"
                    log.warning("replication stream: %s", reason)
                    await nonblocking.send_all(sock, encode(Error(
                        ErrorCode.MALFORMED, state.newest_epoch, reason)))
                    return
            except ReplicationRejected as exc:
                log.info("refusing the leader's stream: %s", exc)
                await nonblocking.send_all(sock, encode(exc.error))
                return
            except ReplicationGap as exc:  # the mirrored log disagrees: start over
                log.warning("replication log: %s; starting over", exc)
                _fresh_state(rep)
                return
            rep.applied += 1
        if not state.in_snapshot and state.position != acked:
            acked = state.position
            await nonblocking.send_all(sock, encode(Ack(acked)))
