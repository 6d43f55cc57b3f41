"""A request's place in its client's reply order: the `Slot` kinds and how each settles.

Theory of operation: a session *issues* each request as a `Slot` whose backend requests are
already queued (see proxy/session.py). A slot answers `poll()` without waiting: the reply
bytes, WAITING (a backend reply is still on its way; the client's `reply_arrived` hears of
it), or NEEDS_TASK (only `reply()`, awaited in a task, can make it: a read failing over to
the next node, a write waiting for a leader or retried after a refusal). `reply()` gives the
same bytes as a successful `poll()`. Most slots are `Filtered`: one settled `PendingReply`
passed through a renderer (the client's `noreply`/meta `q` decide what it sees). The
commonest are no slot object at all: a request to a one-node shard, or to a cluster shard's
connected leader, is its backend reply (proxy/direct_slots.py, compiled).

A multi-get (`SplitGet`, compiled: proxy/split_get.py) asks each distinct key once; each shard's reply is a run of VALUE
blocks in its keys' order (protocol.responses.Values), cut into the client's key order at
block boundaries (no object per key); a reply bigger than SLICE_SIZE is a `SlicedReply`,
rendered a slice at a time as the client's socket drains (proxy/reply_stream.py), so
`get k k k ...` costs the proxy one copy of the value, not one per repeat, while the bytes on
the wire stay memcached's.
"""

from __future__ import annotations

import base64
import enum
from collections.abc import Callable
from typing import Final, Literal, Protocol

import trio

from memring.protocol.requests import MetaGet
from memring.protocol.responses import ErrorReply
from memring.protocol.sizes import GET_REPEATS_LIMIT
from memring.protocol.write_refusals import retry_at_leader
from memring.proxy.pending_reply import PendingReply, ReplyListener
from memring.proxy.pool import NodePool
from memring.proxy.router import Shard
from memring.proxy.state import ProxyState
from memring.proxy.stats import ProxyStats


class _Pending(enum.Enum):
    """Why `Slot.poll()` has no reply yet."""

    WAITING = "WAITING"  # for a backend's reply (its client's `reply_arrived` will be called)
    NEEDS_TASK = "NEEDS_TASK"  # only `reply()`, awaited in a task, can make it

    def __repr__(self) -> str:
        return self.value


WAITING: Final = _Pending.WAITING
NEEDS_TASK: Final = _Pending.NEEDS_TASK
SLICE_SIZE = 256 * 1024  # bytes of a big multi-get's reply rendered at a time


class SlicedReply:
    """A multi-get's reply too big to render at once: one encoded VALUE block per distinct
    key, emitted in the client's key order (repeats included, as memcached answers them) a
    slice at a time, each rendered only once the previous one has left. The backend answers
    big multi-gets in slices the same way (backend/server.py `_multi_get`)."""

    __slots__ = ("_blocks", "_head", "_keys", "_next", "_repeats")

    def __init__(self, blocks: dict[bytes, bytes], keys: list[bytes]) -> None:
        self._blocks = blocks
        self._keys = keys
        self._next = 0  # the next key to render; len(keys) + 1 once END is rendered
        # how often each key was rendered, when a key could pass memcached's limit
        self._repeats: dict[bytes, int] | None = {} if len(keys) > GET_REPEATS_LIMIT else None
        self._head = self._render()  # the first slice

    @property
    def rendered(self) -> bool:
        """Every slice, END included, has been rendered."""
        return self._next > len(self._keys)

    @property
    def done(self) -> bool:
        return self._next > len(self._keys) and not self._head

    def next_slice(self) -> bytes:
        """About SLICE_SIZE bytes of the reply (b"" once it is all out)."""
        head = self._head
        if head:
            self._head = b""
            return head
        return self._render() if self._next <= len(self._keys) else b""

    def _render(self) -> bytes:
        keys = self._keys
        blocks = self._blocks
        repeats = self._repeats
        out = []
        size = 0
        index = self._next
        count = len(keys)
        while index < count and size < SLICE_SIZE:
            key = keys[index]
            block = blocks.get(key)
            index += 1
            if block is not None:
                if repeats is not None:
                    seen = repeats.get(key, 0)
                    if seen >= GET_REPEATS_LIMIT:
                        continue  # a miss, as memcached answers it
                    repeats[key] = seen + 1
                out.append(block)
                size += len(block)
        if index == count:
            out.append(b"END\r\n")
            index += 1
        self._next = index
        return b"".join(out)


class StreamedReply:
    """A reply made a piece at a time, each piece awaited once the previous one has left:
    a dump, one shard leader's lines at a time (proxy/dumps.py)."""

    __slots__ = ()

    @property
    def done(self) -> bool:
        raise NotImplementedError

    async def next_piece(self) -> bytes:
        raise NotImplementedError


Reply = bytes | SlicedReply | StreamedReply
Poll = bytes | SlicedReply | _Pending
Settled = PendingReply | _Pending
Waiting = Literal[_Pending.WAITING]


def render(reply: PendingReply) -> bytes:
    if reply.error is not None:
        return b"SERVER_ERROR %s\r\n" % reply.error.encode()
    events = reply.events
    count = len(events)
    if count == 1:  # a status, a miss's END: no list to join
        return events[0].encode()
    if count == 2:  # a hit: its VALUE block and END
        return events[0].encode() + events[1].encode()
    return b"".join([event.encode() for event in events])


def _failed(reply: PendingReply) -> bool:
    """A reply the client should not get from this node if another can answer."""
    if reply.error is not None:
        return True
    return bool(reply.events) and type(reply.events[0]) is ErrorReply and \
        reply.events[0].kind == b"SERVER_ERROR"


def shard_failed(reply: PendingReply) -> bool:
    """The shard gave no answer: no live node, ejected, timed out, or no leader (the
    proxy's own error, or a leader's refusal that could not be asked again in time). A
    SERVER_ERROR a live node sent is its answer, not this."""
    return reply.error is not None or not_applied(reply)


class MissOnShardError:
    """A read's renderer under `on_shard_error = miss`: a shard that cannot answer answers
    `miss` (END for get, EN for mg), counted per key, as mcrouter does by default; a cache
    client then falls back to its database instead of failing."""

    __slots__ = ("keys", "miss", "render", "stats")

    def __init__(self, stats: ProxyStats, miss: bytes, keys: int = 1,
                 render: Callable[[PendingReply], bytes] = render) -> None:
        self.stats = stats
        self.miss = miss
        self.keys = keys
        self.render = render

    def __call__(self, reply: PendingReply) -> bytes:
        if shard_failed(reply):
            self.stats.shard_error_misses += self.keys
            return self.miss
        return self.render(reply)


def meta_get_miss(request: MetaGet) -> bytes:
    """mg's miss line: EN, then the O and k flags in request order, k base64 with `b`
    (memcached 1.6.18: `mg nope k t v Oab` -> `EN knope Oab`; tests/integration/
    test_proxy_shard_errors.py holds the proxy's to memcached's)."""
    flags = request.flags
    parts = [b"EN"]
    for flag in flags.order:
        if flag == "O":
            parts.append(flags.opaque)
        elif flag == "k":
            parts.append(b"k" + (base64.b64encode(request.key) + b" b" if flags.base64
                                 else request.key))
    return b" ".join(parts) + b"\r\n"


class Slot(Protocol):
    """One request's place in the reply order. A protocol, subclassed for its defaults by
    the slot kinds here and elsewhere: the one-object kinds (proxy/direct_slots.py) are
    compiled `PendingReply` subclasses, which cannot also subclass an interpreted class."""

    __slots__ = ()

    def poll(self) -> Poll:
        """The reply if it can be made now without waiting, else WAITING or NEEDS_TASK;
        `reply()` gives the same bytes (a big multi-get's: the same SlicedReply)."""
        return NEEDS_TASK

    async def reply(self) -> Reply:
        raise NotImplementedError


class Ready(Slot):
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def poll(self) -> Poll:
        return self.data

    async def reply(self) -> bytes:
        return self.data


class Filtered(Slot):
    """A slot whose reply is one settled `PendingReply` passed through `filter`."""

    __slots__ = ()
    filter: Callable[[PendingReply], bytes]

    def settled_now(self) -> Settled:
        """The settled reply if it is there without waiting, else WAITING or NEEDS_TASK."""
        return NEEDS_TASK

    def poll(self) -> Poll:
        settled = self.settled_now()
        if isinstance(settled, _Pending):
            return settled
        return self.filter(settled)

    async def settle(self) -> PendingReply:
        raise NotImplementedError

    async def reply(self) -> bytes:
        return self.filter(await self.settle())


class ReadWithFailover(Filtered):
    """A read tried on the policy's node first, then on the shard's other nodes."""

    __slots__ = ("client", "filter", "multi", "nodes", "pending", "request", "spares")

    def __init__(self, nodes: list[NodePool], request: bytes, multi: bool, client: ReplyListener,
                 filter: Callable[[PendingReply], bytes] = render) -> None:
        self.nodes = nodes
        self.spares = len(nodes) > 1  # another node to fail over to
        self.request = request
        self.multi = multi
        self.client = client
        self.filter = filter
        self.pending = nodes[0].submit(request, multi, client)

    def settled_now(self) -> Settled:
        pending = self.pending
        if not pending.done:
            return WAITING
        if self.spares and _failed(pending):
            return NEEDS_TASK  # the next node is asked in settle()
        return pending

    def poll(self) -> Poll:  # settled_now and Filtered.poll in one call: most reads come here
        pending = self.pending
        if not pending.done:
            return WAITING
        if self.spares and _failed(pending):
            return NEEDS_TASK
        return self.filter(pending)

    async def settle(self) -> PendingReply:
        """The reply of the first node that could answer (or the last failure)."""
        pending = self.pending
        for node in self.nodes[1:]:
            if not pending.done:
                await pending.wait()
            if not _failed(pending):
                break
            pending = node.submit(self.request, self.multi, self.client)
        if not pending.done:
            await pending.wait()
        return pending


class FannedOut(Filtered):
    """A write sent to every node of a shard, answered from the leader."""

    __slots__ = ("filter", "leader", "others")

    def __init__(self, nodes: list[NodePool], request: bytes, multi: bool, client: ReplyListener,
                 filter: Callable[[PendingReply], bytes] = render) -> None:
        self.leader = nodes[0].submit(request, multi, client)
        self.others = [node.submit(request, multi, client) for node in nodes[1:]]
        self.filter = filter

    def settled_now(self) -> Settled:
        return self._settled() if self.leader.done else WAITING

    def poll(self) -> Poll:  # settled_now and Filtered.poll in one call: most writes come here
        return self.filter(self._settled()) if self.leader.done else WAITING

    def _settled(self) -> PendingReply:
        leader = self.leader
        if leader.error is not None and not leader.error.startswith("leader unavailable"):
            leader.error = "leader unavailable: " + leader.error
        return leader

    async def settle(self) -> PendingReply:
        if not self.leader.done:
            await self.leader.wait()
        return self._settled()


def _failed_reply(multi: bool, reason: str) -> PendingReply:
    reply = PendingReply(multi, 0.0)
    reply.fail(reason)
    return reply


class Unroutable(Filtered):
    """A request for a shard that has no live node: SERVER_ERROR, never another shard."""

    __slots__ = ("filter", "pending")

    def __init__(self, shard: Shard, multi: bool,
                 filter: Callable[[PendingReply], bytes] = render) -> None:
        self.pending = _failed_reply(multi, f"no live node for shard {shard.name}")
        self.filter = filter

    def settled_now(self) -> Settled:
        return self.pending

    async def settle(self) -> PendingReply:
        return self.pending


class LeaderWrite(Filtered):
    """Cluster mode: a write sent to the shard's leader alone; with no reachable leader it
    waits (bounded) for a topology that names one."""

    __slots__ = ("client", "filter", "multi", "name", "pending", "request", "state", "target")
    follows_claims = True  # a waiting write may go to a node that claims to lead

    def __init__(self, state: ProxyState, shard: Shard, request: bytes, multi: bool,
                 client: ReplyListener | None, filter: Callable[[PendingReply], bytes] = render,
                 first: PendingReply | None = None) -> None:
        """`first`: the reply of the shard's leader the request was sent to already (a
        `DirectLeaderReply` handing over to this slow path), else sent here if it can be."""
        self.state = state
        self.name = shard.name
        self.request = request
        self.multi = multi
        self.client = client
        self.filter = filter
        self.pending: PendingReply | None = None
        self.target: NodePool | None = None  # the leader the write went to
        if first is not None:
            self.target = shard.nodes[0]
            self.pending = first
        elif shard.has_leader and shard.nodes[0].available:
            self.target = shard.nodes[0]
            self.pending = self.target.submit(request, multi, client)

    async def _await_leader(self, refused_by: NodePool | None = None,
                            deadline: float | None = None) -> PendingReply:
        """Submit to the shard's leader once there is a reachable one (other than
        `refused_by` for REFUSED_PAUSE), waiting until `deadline` (default: leader_wait_ms
        from now)."""
        state = self.state
        if deadline is None:
            deadline = trio.current_time() + state.settings.leader_wait_ms / 1000
        # The node that refused may be the leader the topology names already, before it has
        # heard that its campaign won (the proxy's watch can see the leader key a few ms
        # before the winner does): ask it again after a pause rather than waiting for another
        # leader that never comes (measured: a write stalled the whole leader_wait_ms, 1.5 s,
        # in 2 of 3 leader transfers under load).
        same_again = trio.current_time() + REFUSED_PAUSE
        # Writes only: a node that claims to lead (newer than the view) takes them before
        # the view names it; the backend refuses a wrong claim before applying anything
        # (proxy/leader_claims.py, which says why reads stay with the view).
        claims = state.claims if self.follows_claims else None
        if claims is not None and refused_by is not None:
            claims.refused(self.name, refused_by)
        while True:
            shard = state.router.by_name.get(self.name)
            claimed = claims.leader(self.name) if claims is not None else None
            if claimed is None and shard is not None and shard.has_leader and \
                    shard.nodes[0].available and (shard.nodes[0] is not refused_by
                                                  or trio.current_time() >= same_again):
                claimed = shard.nodes[0]
            elif claimed is None and claims is not None and shard is not None:
                claimed = claims.probe(self.name, shard.nodes)  # no leader to send to yet
            if claimed is not None:
                self.target = claimed
                return claimed.submit(self.request, self.multi, self.client)
            now = trio.current_time()
            if now >= deadline:
                break
            # a new leader's pool connects a little after the swap: poll between swaps too
            with trio.move_on_at(min(deadline, now + 0.02)):
                # a topology swap also wakes the claims' event (ClusterTopology.apply)
                await (claims.changed(self.name) if claims is not None
                       else state.topology_changed).wait()
        if shard is not None and shard.has_leader:
            pending = shard.nodes[0].submit(self.request, self.multi, self.client)
            if not pending.done:
                await pending.wait()
            if pending.error is not None:
                pending.error = f"leader of shard {self.name} unavailable: {pending.error}"
            return pending
        return _failed_reply(self.multi, f"no leader for shard {self.name}")

    @staticmethod
    def _retry(pending: PendingReply) -> bool:
        """Whether the next leader may be asked: the write was refused before it was applied
        (a write that got no answer may have been applied: never sent twice)."""
        return not_applied(pending)

    def settled_now(self) -> Settled:
        pending = self.pending
        if pending is None:
            return NEEDS_TASK  # no reachable leader yet: wait for one in settle()
        if not pending.done:
            return WAITING
        if self._retry(pending):
            return NEEDS_TASK  # refused by a leader stepping down: retried in settle()
        return pending

    async def settle(self) -> PendingReply:
        pending = self.pending
        if pending is None:
            pending = self.pending = await self._await_leader()
        if not pending.done:
            await pending.wait()
        deadline = None
        while self._retry(pending):  # a leader stepping down refused it: ask the next one
            now = trio.current_time()
            if deadline is None:
                deadline = now + self.state.settings.leader_wait_ms / 1000
            elif now >= deadline:
                break
            pending = self.pending = await self._await_leader(self.target, deadline)
            if not pending.done:
                await pending.wait()
        return pending


class LeaderRead(LeaderWrite):
    """Cluster mode, read policy `leader`: a read answered by the shard's leader alone, so
    that it is linearizable. Never a follower instead (one may miss a write the leader
    acknowledged after it was dropped from the ISR, or a new leader acknowledged before this
    proxy heard of it). A read changes nothing, so one that failed or was refused (a node
    that stepped down, a lease run out) is asked again at the leader, within leader_wait_ms."""

    __slots__ = ()
    follows_claims = False  # a node's read gate answers follower reads too: the view decides

    @staticmethod
    def _retry(pending: PendingReply) -> bool:
        return pending.error is not None or not_applied(pending)

    async def settle(self) -> PendingReply:
        """Within one leader_wait_ms from now: a failed read is asked again, not the wait."""
        deadline = trio.current_time() + self.state.settings.leader_wait_ms / 1000
        pending = self.pending
        if pending is None:
            pending = self.pending = await self._await_leader(deadline=deadline)
        if not pending.done:
            await pending.wait()
        while self._retry(pending) and trio.current_time() < deadline:
            pending = self.pending = await self._await_leader(self.target, deadline)
            if not pending.done:
                await pending.wait()
        return pending


REFUSED_PAUSE = 0.02  # before a write refused as "not the leader" goes to the same node again


def not_applied(pending: PendingReply) -> bool:
    events = pending.events
    if pending.error is not None or len(events) != 1:
        return False
    event = events[0]
    return type(event) is ErrorReply and event.kind == b"SERVER_ERROR" and \
        retry_at_leader(event.message)


class Settling(Slot, Protocol):
    """A slot whose reply is one settled `PendingReply` (a part of a multi-get or of
    flush_all): the `Filtered` kinds and the one-object ones of proxy/direct_slots.py."""

    def settled_now(self) -> Settled: ...

    async def settle(self) -> PendingReply: ...


class AfterWrites(Slot):
    """A fixed reply, sent only once side-effect writes are done: a too-large `set` answers
    its error after the old value is gone from every node, so no later read (even on
    another connection) can still see it."""

    __slots__ = ("data", "pendings")

    def __init__(self, pendings: list[PendingReply], data: bytes) -> None:
        self.pendings = pendings
        self.data = data

    def poll(self) -> Poll:
        return self.data if all(p.done for p in self.pendings) else WAITING

    async def reply(self) -> bytes:
        for pending in self.pendings:
            if not pending.done:
                await pending.wait()
        return self.data


class Forwarded(Filtered):
    """A request to one node, answered by that node."""

    __slots__ = ("filter", "pending")

    def __init__(self, node: NodePool, request: bytes, client: ReplyListener,
                 filter: Callable[[PendingReply], bytes] = render) -> None:
        self.pending = node.submit(request, False, client)
        self.filter = filter

    def settled_now(self) -> Settled:
        return self.pending if self.pending.done else WAITING

    async def settle(self) -> PendingReply:
        if not self.pending.done:
            await self.pending.wait()
        return self.pending


class Translated(Slot):
    """Another slot's reply rewritten by `translate` (a binary client's flush and stat are
    the text `flush_all` and `stats`, their replies in binary: proxy/binary_requests.py)."""

    __slots__ = ("inner", "translate")

    def __init__(self, inner: Slot, translate: Callable[[bytes], bytes]) -> None:
        self.inner = inner
        self.translate = translate

    def poll(self) -> Poll:
        reply = self.inner.poll()
        if isinstance(reply, _Pending):
            return reply
        if type(reply) is not bytes:
            return NEEDS_TASK  # a sliced reply is joined in reply()
        return self.translate(reply)

    async def reply(self) -> bytes:
        reply = await self.inner.reply()
        pieces: list[bytes] = []
        if isinstance(reply, SlicedReply):
            while not reply.done:
                pieces.append(reply.next_slice())
            return self.translate(b"".join(pieces))
        if isinstance(reply, StreamedReply):  # a dump asked as a binary stat: joined too
            while not reply.done:
                pieces.append(await reply.next_piece())
            return self.translate(b"".join(pieces))
        return self.translate(reply)


class AllSayOk(Slot):
    """flush_all: OK only when every part did (each node in static mode, each shard's leader
    in cluster mode, whose followers get it by replication); else the first other answer."""

    __slots__ = ("noreply", "parts")

    def __init__(self, parts: list[Settling | Forwarded], noreply: bool) -> None:
        self.parts = parts
        self.noreply = noreply

    def poll(self) -> Poll:
        settled = []
        for part in self.parts:
            pending = part.settled_now()
            if isinstance(pending, _Pending):
                return pending
            settled.append(pending)
        return self._answer(settled)

    async def reply(self) -> bytes:
        return self._answer([await part.settle() for part in self.parts])

    def _answer(self, settled: list[PendingReply]) -> bytes:
        answer = b"OK\r\n"
        for pending in settled:
            rendered = render(pending)
            if rendered != b"OK\r\n":
                answer = rendered
                break
        return b"" if self.noreply else answer
