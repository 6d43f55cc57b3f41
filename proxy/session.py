"""A client connection to the proxy: parse, route, forward, and reply in request order.

Theory of operation: a session reads what the client sent, parses every complete
request, and *issues* all of them before waiting for any reply, so the requests of one
pipelined batch travel to their backends in parallel (and share pipelined backend
connections with other clients). Each request leaves a `Slot` in its client's
`ReplyStream` (proxy/reply_stream.py), which sends the replies in request order whatever
order the backends answered in: most from the backend reader's turn as soon as the head
slot can `poll()` its reply, the rest (failover, leader waits) by awaiting `reply()`.

Routing rules (static topology): keys hash to a shard on the ketama ring. Reads go to a
node chosen by the read policy and fail over to the shard's other nodes when one cannot
answer. Writes (storage, delete, incr/decr, touch, gat, and meta commands that change
an item) go to every node of the shard and are answered from the leader (the first
node), as mcrouter's replicated pools do; best effort, documented. A multi-key get is
split per shard and reassembled in the client's key order.

In cluster mode (the router's `leader_writes`) a write goes to the shard's elected leader
alone (the backends fence writes and replicate); while the shard has no reachable leader it
waits, up to `leader_wait_ms`, for the topology to name one, then answers
`SERVER_ERROR no leader for shard <id>`. A shard with no live node answers SERVER_ERROR.

`noreply` and meta `q` are honoured here, not at the backend: the backend always answers
(see protocol.request_encoder) and the session drops what the client asked not to see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from memring.protocol.request_encoder import encode_get, encode_request
from memring.protocol.requests import (
    Arithmetic,
    CacheMemlimit,
    Delete,
    FlushAll,
    Get,
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaGet,
    MetaNoop,
    MetaSet,
    ProtocolError,
    Quit,
    Request,
    Shutdown,
    Stats,
    Store,
    Touch,
    Verbosity,
    Version,
)
from memring.protocol.responses import End, ErrorReply, MetaReply, Value
from memring.protocol.write_refusals import retry_at_leader
from memring.proxy.backend_connection import PendingReply, ReplyListener
from memring.proxy.pool import NodePool
from memring.proxy.router import NoShards, Shard, ShardRouter

if TYPE_CHECKING:
    from memring.proxy.server import ProxyState


class CloseSession(Exception):
    pass


def _render(reply: PendingReply) -> bytes:
    if reply.error is not None:
        return b"SERVER_ERROR %s\r\n" % reply.error.encode()
    return b"".join(event.encode() for event in reply.events)


def _failed(reply: PendingReply) -> bool:
    """A reply the client should not get from this node if another can answer."""
    if reply.error is not None:
        return True
    return bool(reply.events) and type(reply.events[0]) is ErrorReply and \
        reply.events[0].kind == b"SERVER_ERROR"


# What `Slot.poll()` says when the reply cannot be made yet: WAITING for a backend's reply
# (its client's `reply_arrived` will be called), or NEEDS_TASK: only `reply()`, awaited in a
# task, can make it (a read to fail over, a write waiting for a leader or to be retried).
WAITING = None
NEEDS_TASK = False
Poll = bytes | bool | None


class Slot:
    """One request's place in the reply order."""

    __slots__ = ()

    def poll(self) -> Poll:
        """The reply if it can be made now without waiting, else WAITING or NEEDS_TASK;
        `reply()` gives the same bytes."""
        return NEEDS_TASK

    async def reply(self) -> bytes:
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

    def settled_now(self) -> PendingReply | bool | None:
        """The settled reply if it is there without waiting, else WAITING or NEEDS_TASK."""
        return NEEDS_TASK

    def poll(self) -> Poll:
        settled = self.settled_now()
        if type(settled) is PendingReply:
            return self.filter(settled)
        return settled  # type: ignore[return-value]

    async def settle(self) -> PendingReply:
        raise NotImplementedError

    async def reply(self) -> bytes:
        return self.filter(await self.settle())


class ReadWithFailover(Filtered):
    """A read tried on the policy's node first, then on the shard's other nodes."""

    __slots__ = ("client", "filter", "multi", "nodes", "pending", "request")

    def __init__(self, nodes: list[NodePool], request: bytes, multi: bool, client: ReplyListener,
                 filter: Callable[[PendingReply], bytes] = _render) -> None:
        self.nodes = nodes
        self.request = request
        self.multi = multi
        self.client = client
        self.filter = filter
        self.pending = nodes[0].submit(request, multi, client)

    def settled_now(self) -> PendingReply | bool | None:
        pending = self.pending
        if not pending.done:
            return WAITING
        if len(self.nodes) > 1 and _failed(pending):
            return NEEDS_TASK  # the next node is asked in settle()
        return pending

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
                 filter: Callable[[PendingReply], bytes] = _render) -> None:
        self.leader = nodes[0].submit(request, multi, client)
        self.others = [node.submit(request, multi, client) for node in nodes[1:]]
        self.filter = filter

    def settled_now(self) -> PendingReply | bool | None:
        return self._settled() if self.leader.done else WAITING

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
                 filter: Callable[[PendingReply], bytes] = _render) -> None:
        self.pending = _failed_reply(multi, f"no live node for shard {shard.name}")
        self.filter = filter

    def settled_now(self) -> PendingReply | bool | None:
        return self.pending

    async def settle(self) -> PendingReply:
        return self.pending


class LeaderWrite(Filtered):
    """Cluster mode: a write sent to the shard's leader alone; with no reachable leader it
    waits (bounded) for a topology that names one."""

    __slots__ = ("client", "filter", "multi", "name", "pending", "request", "state", "target")

    def __init__(self, state: ProxyState, shard: Shard, request: bytes, multi: bool,
                 client: ReplyListener, filter: Callable[[PendingReply], bytes] = _render) -> None:
        self.state = state
        self.name = shard.name
        self.request = request
        self.multi = multi
        self.client = client
        self.filter = filter
        self.pending: PendingReply | None = None
        self.target: NodePool | None = None  # the leader the write went to
        if shard.has_leader and shard.nodes[0].available:
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
        while True:
            shard = state.router.by_name.get(self.name)
            if shard is not None and shard.has_leader and shard.nodes[0].available and (
                    shard.nodes[0] is not refused_by or trio.current_time() >= same_again):
                self.target = shard.nodes[0]
                return self.target.submit(self.request, self.multi, self.client)
            now = trio.current_time()
            if now >= deadline:
                break
            # a new leader's pool connects a little after the swap: poll between swaps too
            with trio.move_on_at(min(deadline, now + 0.02)):
                await state.topology_changed.wait()
        if shard is not None and shard.has_leader:
            pending = shard.nodes[0].submit(self.request, self.multi, self.client)
            if not pending.done:
                await pending.wait()
            if pending.error is not None:
                pending.error = f"leader of shard {self.name} unavailable: {pending.error}"
            return pending
        return _failed_reply(self.multi, f"no leader for shard {self.name}")

    def settled_now(self) -> PendingReply | bool | None:
        pending = self.pending
        if pending is None:
            return NEEDS_TASK  # no reachable leader yet: wait for one in settle()
        if not pending.done:
            return WAITING
        if _not_applied(pending):
            return NEEDS_TASK  # refused by a leader stepping down: retried in settle()
        return pending

    async def settle(self) -> PendingReply:
        pending = self.pending
        if pending is None:
            pending = self.pending = await self._await_leader()
        if not pending.done:
            await pending.wait()
        deadline = None
        while _not_applied(pending):  # a leader stepping down refused it: ask the next one
            now = trio.current_time()
            if deadline is None:
                deadline = now + self.state.settings.leader_wait_ms / 1000
            elif now >= deadline:
                break
            pending = self.pending = await self._await_leader(self.target, deadline)
            if not pending.done:
                await pending.wait()
        return pending


REFUSED_PAUSE = 0.02  # before a write refused as "not the leader" goes to the same node again


def _not_applied(pending: PendingReply) -> bool:
    events = pending.events
    if pending.error is not None or len(events) != 1:
        return False
    event = events[0]
    return type(event) is ErrorReply and event.kind == b"SERVER_ERROR" and \
        retry_at_leader(event.message)


Settling = ReadWithFailover | FannedOut | LeaderWrite | Unroutable


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


class Everywhere(Slot):
    """flush_all / cache_memlimit: every node of every shard must say OK."""

    __slots__ = ("noreply", "pendings")

    def __init__(self, nodes: list[NodePool], request: bytes, noreply: bool,
                 client: ReplyListener) -> None:
        self.pendings = [node.submit(request, False, client) for node in nodes]
        self.noreply = noreply

    def poll(self) -> Poll:
        return self._answer() if all(p.done for p in self.pendings) else WAITING

    def _answer(self) -> bytes:
        answer = b"OK\r\n"
        for pending in self.pendings:
            rendered = _render(pending)
            if rendered != b"OK\r\n" and answer == b"OK\r\n":
                answer = rendered
        return b"" if self.noreply else answer

    async def reply(self) -> bytes:
        for pending in self.pendings:
            if not pending.done:
                await pending.wait()
        return self._answer()


class SplitGet(Slot):
    """A multi-key get split per shard; values reassembled in the client's key order."""

    __slots__ = ("keys", "parts")

    def __init__(self, keys: list[bytes], parts: list[Settling]) -> None:
        self.keys = keys
        self.parts = parts

    def poll(self) -> Poll:
        # The parts in order, as reply() awaits them: the first error is the answer.
        settled = []
        for part in self.parts:
            pending = part.settled_now()
            if type(pending) is not PendingReply:
                return pending  # type: ignore[return-value]
            if _incomplete(pending):
                return _render(pending)
            settled.append(pending)
        return self._join(settled)

    async def reply(self) -> bytes:
        settled = []
        for part in self.parts:
            pending = await part.settle()
            if _incomplete(pending):
                return _render(pending)  # one shard's error is the whole get's error
            settled.append(pending)
        return self._join(settled)

    def _join(self, settled: list[PendingReply]) -> bytes:
        found: dict[bytes, Value] = {}
        for pending in settled:
            for event in pending.events:
                if type(event) is Value:
                    found[event.key] = event
        return b"".join([found[k].encode() for k in self.keys if k in found]) + b"END\r\n"


def _incomplete(pending: PendingReply) -> bool:
    """A get's reply that is not values then END: an error."""
    events = pending.events
    return pending.error is not None or not events or type(events[-1]) is not End


def _drop_all(pending: PendingReply) -> bytes:
    return b""


def _quiet(*hidden: bytes) -> Callable[[PendingReply], bytes]:
    """Meta `q`: hide the nominal reply, never an error: EN for mg, HD for ms and md, and
    any success for ma (HD, or VA with `v`; differential case ma_quiet_hides_hd)."""
    def render(pending: PendingReply) -> bytes:
        if pending.error is None and pending.events:
            first = pending.events[0]
            if type(first) is MetaReply and first.code in hidden:
                return b""
        return _render(pending)
    return render


_QUIET_MG = _quiet(b"EN")
_QUIET_MS_MD = _quiet(b"HD")
_QUIET_MA = _quiet(b"HD", b"VA")

_WRITE_META_GET_FLAGS = frozenset("TN")


class ClientSession:
    def __init__(self, state: ProxyState, replies: ReplyListener) -> None:
        self.state = state
        self.replies = replies  # hears of every reply; picks each node's connection
        self._dispatch: dict[type, Callable[[ShardRouter, Request], Slot]] = {
            Get: self._get,  # type: ignore[dict-item]
            Store: self._keyed_write,  # type: ignore[dict-item]
            Delete: self._keyed_write,  # type: ignore[dict-item]
            Arithmetic: self._keyed_write,  # type: ignore[dict-item]
            Touch: self._keyed_write,  # type: ignore[dict-item]
            MetaSet: self._meta,  # type: ignore[dict-item]
            MetaDelete: self._meta,  # type: ignore[dict-item]
            MetaArithmetic: self._meta,  # type: ignore[dict-item]
            MetaGet: self._meta,  # type: ignore[dict-item]
            MetaDebug: self._meta_debug,  # type: ignore[dict-item]
            MetaNoop: lambda router, request: Ready(b"MN\r\n"),
            Version: lambda router, request: Ready(
                b"VERSION %s\r\n" % state.settings.version.encode()),
            Stats: self._stats,  # type: ignore[dict-item]
            FlushAll: self._everywhere,  # type: ignore[dict-item]
            CacheMemlimit: self._everywhere,  # type: ignore[dict-item]
            Verbosity: self._verbosity,  # type: ignore[dict-item]
            Shutdown: lambda router, request: Ready(b"ERROR: shutdown not enabled\r\n"),
            Quit: self._quit,
            ProtocolError: self._protocol_error,  # type: ignore[dict-item]
        }
        self._closing = False

    def issue(self, request: Request) -> Slot:
        """Send `request` on its way and return its place in the reply order."""
        self.state.stats.commands[type(request).__name__] += 1
        try:
            return self._dispatch[type(request)](self.state.router, request)
        except NoShards:
            return Ready(b"SERVER_ERROR no shards in the cluster\r\n")

    @property
    def closing(self) -> bool:
        return self._closing

    # -- keyed commands --------------------------------------------------------------

    def _write(self, router: ShardRouter, shard: Shard, line: bytes, multi: bool,
               render: Callable[[PendingReply], bytes] = _render) -> Settling:
        if router.leader_writes:  # even with no live node: one may come back and lead
            return LeaderWrite(self.state, shard, line, multi, self.replies, render)
        if not shard.nodes:
            return Unroutable(shard, multi, render)
        return FannedOut(shard.nodes, line, multi, self.replies, render)

    def _read(self, router: ShardRouter, shard: Shard, line: bytes, multi: bool,
              render: Callable[[PendingReply], bytes] = _render) -> Settling:
        if not shard.nodes:
            return Unroutable(shard, multi, render)
        return ReadWithFailover(router.read_order(shard), line, multi, self.replies, render)

    def _get(self, router: ShardRouter, request: Get) -> Slot:
        keys = request.keys
        touches = request.touches
        if not keys:
            return Ready(b"END\r\n")  # "gat 10" without keys: memcached answers END
        if len(keys) == 1 or len(router.shards) == 1:
            shard = router.shard_for(keys[0])
            if touches:
                return self._write(router, shard, encode_request(request), True)
            return self._read(router, shard, encode_request(request), True)
        by_shard: dict[int, list[bytes]] = {}
        shards = {}
        for key in dict.fromkeys(keys):
            shard = router.shard_for(key)
            by_shard.setdefault(id(shard), []).append(key)
            shards[id(shard)] = shard
        parts: list[Settling] = []
        for shard_id, shard_keys in by_shard.items():
            shard = shards[shard_id]
            line = encode_get(request.command, shard_keys, request.exptime)
            if touches:
                parts.append(self._write(router, shard, line, True))
            else:
                parts.append(self._read(router, shard, line, True))
        return SplitGet(keys, parts)

    def _keyed_write(self, router: ShardRouter, request: Store | Delete | Arithmetic | Touch
                     ) -> Slot:
        shard = router.shard_for(request.key)
        return self._write(router, shard, encode_request(request), False,
                           _drop_all if request.noreply else _render)

    def _meta(self, router: ShardRouter, request: MetaGet | MetaSet | MetaDelete
              | MetaArithmetic) -> Slot:
        shard = router.shard_for(request.key)
        flags = request.flags
        kind = type(request)
        render: Callable[[PendingReply], bytes] = _render
        if flags.quiet:
            render = (_QUIET_MG if kind is MetaGet else
                      _QUIET_MA if kind is MetaArithmetic else _QUIET_MS_MD)
        line = encode_request(request)
        if kind is MetaGet and not _WRITE_META_GET_FLAGS.intersection(flags.order):
            return self._read(router, shard, line, False, render)
        return self._write(router, shard, line, False, render)

    def _meta_debug(self, router: ShardRouter, request: MetaDebug) -> Slot:
        shard = router.shard_for(request.key)
        return self._read(router, shard, encode_request(request), False)

    # -- the rest ----------------------------------------------------------------------

    def _stats(self, router: ShardRouter, request: Stats) -> Slot:
        return Ready(self.state.stats.reply(request.args, self.state.pools()))

    def _everywhere(self, router: ShardRouter, request: FlushAll | CacheMemlimit) -> Slot:
        nodes = [node for shard in router.shards for node in shard.nodes]
        return Everywhere(nodes, encode_request(request), request.noreply, self.replies)

    def _verbosity(self, router: ShardRouter, request: Verbosity) -> Slot:
        return Ready(b"" if request.noreply else b"OK\r\n")

    def _quit(self, router: ShardRouter, request: Request) -> Slot:
        self._closing = True
        return Ready(b"")

    def _protocol_error(self, router: ShardRouter, error: ProtocolError) -> Slot:
        self.state.stats.client_errors += 1
        if error.close:
            self._closing = True
        if error.drop_key is not None:
            # memcached drops the old value of a `set` that was too large; so must the shard.
            shard = router.shard_for(error.drop_key)
            delete = b"delete %s\r\n" % error.drop_key
            return AfterWrites([node.submit(delete, False, self.replies)
                                for node in shard.nodes], error.reply)
        return Ready(error.reply)
