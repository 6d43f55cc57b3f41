"""The one-object slots: a request whose reply is its backend connection's `PendingReply`
itself, the client's slot with no object of its own that points at it (issue 16).

Theory of operation: a request to a shard of one node (static topology) is `DirectRead` or
`DirectWrite`; in cluster mode a request to the shard's leader, when the client's connection
to it is up, is `DirectLeaderRead` or `DirectLeaderWrite`, which hand over to the slow slots
(proxy/slots.py `LeaderRead`, `LeaderWrite`) when the leader refuses (a read: or fails). They
answer the `Slot` protocol (poll, reply) and the `Settling` one (settled_now, settle). Compiled
with the backend connection that makes them (build_support/hot_modules.txt), so they are
`PendingReply` subclasses only: a compiled class cannot also subclass the interpreted `Slot`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, cast

from memring.protocol.responses import End
from memring.proxy.pending_reply import PendingReply, ReplyListener
from memring.proxy.router import Shard
from memring.proxy.slots import (
    NEEDS_TASK,
    WAITING,
    LeaderRead,
    LeaderWrite,
    Poll,
    Settled,
    not_applied,
)
from memring.proxy.state import ProxyState

# Final: native statics, not a module-dict lookup per poll (compiled)
_WAITING: Final = WAITING
_NEEDS_TASK: Final = NEEDS_TASK

def _one_key_hit(reply: PendingReply) -> bytes | None:
    """A one-key get's hit: its block as the backend sent it, then END (what every renderer
    of a read makes of values then END); None for anything else."""
    events = reply.events
    if reply.error is None and len(events) == 2 and type(events[1]) is End:
        return events[0].encode() + b"END\r\n"
    return None


class DirectReply(PendingReply):
    """A request to a shard of one node (static topology): the backend connection's reply
    is the client's slot itself, so a request makes one object on its way, not a reply and
    a slot that points at it (measured: proxy/conversation.py's get/set path, issue 16)."""

    __slots__ = ("filter",)
    filter: Callable[[PendingReply], bytes]

    def poll(self) -> Poll:
        raise NotImplementedError

    def settled_now(self) -> Settled:
        return self if self.done else _WAITING

    async def settle(self) -> PendingReply:
        if not self.done:
            await self.wait()
        return self

    async def reply(self) -> bytes:
        return self.filter(await self.settle())


class DirectRead(DirectReply):
    """A read from a shard of one node: nothing to fail over to."""

    __slots__ = ()

    def poll(self) -> Poll:
        if not self.done:
            return _WAITING
        hit = _one_key_hit(self)
        return hit if hit is not None else self.filter(self)


class DirectWrite(DirectReply):
    """A write to a shard of one node, which is its leader (as `FannedOut`)."""

    __slots__ = ()

    def settled_now(self) -> Settled:
        return self._settled() if self.done else _WAITING

    def poll(self) -> Poll:
        return self.filter(self._settled()) if self.done else _WAITING

    def _settled(self) -> PendingReply:
        error = self.error
        if error is not None and not error.startswith("leader unavailable"):
            self.error = "leader unavailable: " + error
        return self

    async def settle(self) -> PendingReply:
        if not self.done:
            await self.wait()
        return self._settled()



class DirectLeaderReply(DirectReply):
    """Cluster mode, the shard's leader connected: the backend connection's reply to the
    leader is the client's slot itself, as `DirectRead` is for a node of its own (one object
    per request, no slot that points at a reply; `filter` and `reply()` are DirectReply's).
    A reply that needs the slow path (a
    refusal to retry at the next leader; for a read, a failure too) hands over to the
    `slow` slot kind in `settle()`, which awaits a new leader and asks it, as if the
    request had been issued as that slot."""

    __slots__ = ("request", "shard", "state", "taken_over")
    request: bytes
    shard: Shard
    state: ProxyState
    taken_over: LeaderWrite | None  # the slow path, once a retry was needed

    def settled_now(self) -> Settled:
        if not self.done:
            return _WAITING
        taken_over = self.taken_over
        if taken_over is not None:
            return taken_over.settled_now()
        if self._retry():
            return _NEEDS_TASK
        return self

    def _retry(self) -> bool:
        raise NotImplementedError

    def _slow(self) -> LeaderWrite:
        raise NotImplementedError

    async def settle(self) -> PendingReply:
        if not self.done:
            await self.wait()
        taken_over = self.taken_over
        if taken_over is None:
            if not self._retry():
                return self
            taken_over = self.taken_over = self._slow()
        return await taken_over.settle()


class DirectLeaderWrite(DirectLeaderReply):
    """A write to a connected leader (`LeaderWrite` without the slot object)."""

    __slots__ = ()

    def poll(self) -> Poll:
        if not self.done:
            return _WAITING
        if self.taken_over is not None or not_applied(self):
            return _NEEDS_TASK
        return self.filter(self)

    def _retry(self) -> bool:
        return not_applied(self)

    def _slow(self) -> LeaderWrite:
        return LeaderWrite(self.state, self.shard, self.request, self.multi, self.listener,
                           self.filter, first=self)


class DirectLeaderRead(DirectLeaderReply):
    """A read from a connected leader (`LeaderRead` without the slot object); a one-key
    get's hit leaves as the backend's VALUE block and END (as `DirectRead`)."""

    __slots__ = ()

    def poll(self) -> Poll:
        if not self.done:
            return _WAITING
        hit = _one_key_hit(self)
        if hit is not None:
            return hit
        if self.taken_over is not None or self.error is not None or not_applied(self):
            return _NEEDS_TASK
        return self.filter(self)

    def _retry(self) -> bool:
        return self.error is not None or not_applied(self)

    def _slow(self) -> LeaderWrite:
        return LeaderRead(self.state, self.shard, self.request, self.multi, self.listener,
                          self.filter, first=self)


def to_leader(kind: type[DirectLeaderReply], state: ProxyState, shard: Shard, request: bytes,
              multi: bool, client: ReplyListener,
              filter: Callable[[PendingReply], bytes]) -> DirectLeaderReply | None:
    """`request` sent to the shard's leader as a `kind` slot, if the leader is known and
    the client's connection to it is up; None otherwise (the caller makes the slow slot,
    which waits for a reachable leader)."""
    if not shard.has_leader:
        return None
    reply = shard.nodes[0].submit_connected(request, multi, client, kind)
    if reply is None:
        return None
    slot = cast(DirectLeaderReply, reply)
    slot.filter = filter
    slot.request = request
    slot.shard = shard
    slot.state = state
    slot.taken_over = None
    return slot
