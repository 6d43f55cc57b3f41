"""Who leads a shard, asked of its replicas while a write waits for a leader.

Theory of operation. The proxy routes writes by its etcd view, which names a shard's new
leader some time after that node leads (25-1,389 ms per run in docs/scaling.md, round five:
the proxy's watch moved off a frozen etcd member, then views applied one after another).
While a write waits for a leader (proxy/slots.py `LeaderWrite._await_leader`), `leader()`
also asks the shard's nodes a plain `stats` over the proxy's own (authenticated) backend
connections, at most one probe per node in flight and one per PROBE_INTERVAL, none while no
write waits, and reads its `memring_role`, `memring_shard` and `memring_epoch` lines. A node
that says it leads this shard at an epoch newer than any the view has named is a *claim*,
and the waiting write is sent there.

A claim only picks where a write goes; the backend decides whether to take it: a node that
does not lead (or whose lease ran out) refuses the write before applying it
(protocol/write_refusals.py), the write waits on and may go elsewhere, and the node's claim
at that epoch is not taken again (`refused`). A claim lasts until the view names a leader of
its epoch or newer (`follow_view`). Reads never follow a claim: a backend's read gate answers
follower reads too (backend/cluster_member.py `read_refusal`), so a read sent to a node that
stopped leading since its probe could miss a write the new leader acknowledged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Final

import trio

from memring.protocol.responses import Stat
from memring.proxy.pending_reply import PendingReply
from memring.proxy.pool import NodePool

log = logging.getLogger("memring.proxy")

PROBE: Final = b"stats\r\n"  # its memring_* lines end a plain `stats` (backend/commands.py)
# Between two probes of one node while a write waits: a new leader is found within this (plus
# a round trip) of leading, and a failover of a few shards costs tens of probes a second.
PROBE_INTERVAL: Final = 0.025


class Claim:
    """A node that said it leads the shard at `epoch`."""

    __slots__ = ("epoch", "node_id", "pool")

    def __init__(self, pool: NodePool, epoch: int, node_id: str) -> None:
        self.pool = pool
        self.epoch = epoch
        self.node_id = node_id


class _Probe:
    """One `stats` in flight to a node; its arrival wakes the writes waiting for its shard."""

    __slots__ = ("affinity", "answered_at", "claims", "reply", "sent_at", "shard")

    def __init__(self, claims: LeaderClaims, shard: str, sent_at: float) -> None:
        self.affinity = 0  # the pool's first connection
        self.claims = claims
        self.shard = shard
        self.sent_at = sent_at
        self.reply: PendingReply | None = None
        self.answered_at = -math.inf

    def reply_arrived(self) -> None:
        self.answered_at = trio.current_time()
        self.claims.wake(self.shard)


def said_leader(reply: PendingReply, shard: str) -> tuple[int, str] | None:
    """(epoch, node id) if a `stats` reply says its node leads `shard`, else None."""
    if reply.error is not None:
        return None
    found: dict[bytes, bytes] = {}
    for event in reply.events:
        if type(event) is Stat and event.name.startswith(b"memring_"):
            found[event.name] = event.value
    if found.get(b"memring_role") != b"leader" or \
            found.get(b"memring_shard") != shard.encode():
        return None
    try:
        epoch = int(found.get(b"memring_epoch", b"0"))
    except ValueError:
        return None
    return epoch, found.get(b"memring_node_id", b"?").decode(errors="replace")


class LeaderClaims:
    """The claims of the shards whose writes wait for a leader, and the view's epochs."""

    def __init__(self) -> None:
        self._view_epochs: dict[str, int] = {}  # the newest epoch any view named, per shard
        self._claims: dict[str, Claim] = {}
        self._refused: dict[str, tuple[NodePool, int]] = {}  # a claim a write disproved
        self._probes: dict[str, dict[NodePool, _Probe]] = {}
        # per shard, set (and dropped) by a probe's reply; every one by a new view: a probe
        # wakes only the writes waiting for its own shard (a storm of 24 leaderless shards
        # would otherwise wake every waiting write for every probe's reply)
        self._changed: dict[str, trio.Event] = {}
        self.probes_sent = 0
        self.claims_taken = 0

    def changed(self, shard: str) -> trio.Event:
        """Set when a probe of `shard` is answered or a new view comes."""
        event = self._changed.get(shard)
        if event is None:
            event = self._changed[shard] = trio.Event()
        return event

    def wake(self, shard: str) -> None:
        event = self._changed.pop(shard, None)
        if event is not None:
            event.set()

    def follow_view(self, epochs: Mapping[str, int]) -> None:
        """A new view: claims it caught up with end, and waiting writes look again."""
        seen = self._view_epochs
        for shard, epoch in epochs.items():
            if epoch > seen.get(shard, 0):
                seen[shard] = epoch
        for shard, claim in list(self._claims.items()):
            if claim.epoch <= seen.get(shard, 0):
                del self._claims[shard]
        now = trio.current_time()
        for shard in [s for s, probes in self._probes.items() if all(
                (p.reply is None or p.reply.done) and now - p.sent_at >= PROBE_INTERVAL
                for p in probes.values())]:
            del self._probes[shard]  # none in flight or recent: no write waits there now
        events, self._changed = self._changed, {}
        for event in events.values():
            event.set()

    def refused(self, shard: str, pool: NodePool) -> None:
        """`pool` refused a write: its claim, if it had one, is not taken again."""
        claim = self._claims.get(shard)
        if claim is not None and claim.pool is pool:
            del self._claims[shard]
            self._refused[shard] = (pool, claim.epoch)
            log.info("shard %s: %s refused a write it claimed to lead (epoch %d)", shard,
                     claim.node_id, claim.epoch)

    def leader(self, shard: str) -> NodePool | None:
        """The node that claims to lead `shard` (newer than any view), if one does by the
        probe replies in so far."""
        probes = self._probes.get(shard)
        if probes is not None:
            for pool, probe in probes.items():
                reply = probe.reply
                if reply is not None and reply.done:
                    probe.reply = None
                    self._heard(shard, pool, reply, probe)
        claim = self._claims.get(shard)
        return claim.pool if claim is not None and claim.pool.available else None

    def probe(self, shard: str, nodes: Sequence[NodePool]) -> NodePool | None:
        """`leader()` after asking those of `nodes` again whose last probe is older than
        PROBE_INTERVAL and has been answered (a write waits for this shard's leader)."""
        probes = self._probes.setdefault(shard, {})
        now = trio.current_time()
        for pool in nodes:
            probe = probes.get(pool)
            if probe is None:
                probe = probes[pool] = _Probe(self, shard, -math.inf)
            if probe.reply is None and now - probe.sent_at >= PROBE_INTERVAL and pool.available:
                probe.sent_at = now
                probe.reply = pool.submit(PROBE, True, probe)
                self.probes_sent += 1
        return self.leader(shard)

    def _heard(self, shard: str, pool: NodePool, reply: PendingReply, probe: _Probe) -> None:
        said = said_leader(reply, shard)
        claim = self._claims.get(shard)
        if said is None:
            if claim is not None and claim.pool is pool:
                del self._claims[shard]  # it leads no more
            return
        epoch, node_id = said
        if epoch <= self._view_epochs.get(shard, 0) or self._refused.get(shard) == (pool, epoch):
            return  # the view knows it already, or a write showed it does not lead
        if claim is None or epoch > claim.epoch:
            self._claims[shard] = Claim(pool, epoch, node_id)
            self.claims_taken += 1
            # the probe's timing says where a slow claim's time went (docs/scaling.md, round
            # eight: the node answering late, or the reply read late by this process)
            log.info("shard %s: %s claims to lead (epoch %d): waiting writes go there (its "
                     "probe answered %.0f ms after it was sent, read %.0f ms after that; %d "
                     "probes sent so far)", shard, node_id, epoch,
                     (probe.answered_at - probe.sent_at) * 1e3,
                     (trio.current_time() - probe.answered_at) * 1e3, self.probes_sent)
