"""A client connection to the proxy: parse, route, forward, and reply in request order.

Theory of operation: a session reads what the client sent, parses every complete
request, and *issues* all of them before waiting for any reply, so the requests of one
pipelined batch travel to their backends in parallel (and share pipelined backend
connections with other clients). Each request leaves a `Slot` in its client's
`ReplyStream` (proxy/reply_stream.py; the slot kinds are in proxy/slots.py), which sends the replies in request order whatever
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
With the `leader` read policy reads go to the leader alone too (`LeaderRead`: linearizable,
asked again at the next leader when the node failed or refused), never a follower instead;
`round_robin` and `weighted` read from the in-sync followers as well, and are not.

`noreply` and meta `q` are honoured here, not at the backend: the backend always answers
(see protocol.request_encoder) and the session drops what the client asked not to see.

A binary client (a first byte 0x80) is served by the same routing: its frames are
translated into meta requests (proxy/binary_requests.py, runs of gets batched by
proxy/binary_batches.py) and their replies rendered as binary frames (proxy/binary_replies.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final, TypeVar, cast

from memring.protocol.binary_frames import BinaryRequest
from memring.protocol.binary_parser import BinaryReply
from memring.protocol.reply_shapes import STORED, ReplyShape, ValuesOf
from memring.protocol.request_encoder import encode_get, encode_request
from memring.protocol.requests import (
    Arithmetic,
    Authenticated,
    CacheMemlimit,
    Delete,
    FlushAll,
    Get,
    Lru,
    LruCrawler,
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaGet,
    MetaNoop,
    MetaSet,
    ProtocolError,
    Quit,
    RefreshCerts,
    Request,
    Shutdown,
    Slabs,
    Stats,
    Store,
    Touch,
    Verbosity,
    Version,
    Watch,
)
from memring.protocol.responses import TLS_NOT_ENABLED, MetaReply, refresh_certs_reply
from memring.proxy import cluster_stats
from memring.proxy.binary_batches import GetBatch, issue_batch
from memring.proxy.binary_requests import delete_request, issue_binary
from memring.proxy.cluster_stats import ClusterStats
from memring.proxy.direct_slots import (
    DirectLeaderRead,
    DirectLeaderWrite,
    DirectRead,
    DirectWrite,
    to_leader,
)
from memring.proxy.dumps import CRAWLER_REFUSED, CRAWLER_SETTINGS, ShardDump
from memring.proxy.pending_reply import PendingReply, ReplyListener
from memring.proxy.router import NoShards, Shard, ShardRouter
from memring.proxy.slots import (
    AfterWrites,
    AllSayOk,
    FannedOut,
    Forwarded,
    LeaderRead,
    LeaderWrite,
    MissOnShardError,
    ReadWithFailover,
    Ready,
    Settling,
    Slot,
    Unroutable,
    meta_get_miss,
    render,
)
from memring.proxy.split_get import SplitGet
from memring.proxy.state import ProxyState


def _drop_all(pending: PendingReply) -> bytes:
    return b""


def _quiet(*hidden: bytes) -> Callable[[PendingReply], bytes]:
    """Meta `q`: hide the nominal reply, never an error: EN for mg, HD for ms and md, and
    any success for ma (HD, or VA with `v`; differential case ma_quiet_hides_hd)."""
    def hide(pending: PendingReply) -> bytes:
        if pending.error is None and pending.events:
            first = pending.events[0]
            if type(first) is MetaReply and first.code in hidden:
                return b""
        return render(pending)
    return hide


_QUIET_MG = _quiet(b"EN")
_QUIET_MS_MD = _quiet(b"HD")
_QUIET_MA = _quiet(b"HD", b"VA")

_WRITE_META_GET_FLAGS = frozenset("TN")
_NO_SHARDS = PendingReply(False, 0.0)
_NO_SHARDS.fail("no shards in the cluster")
CACHE_MEMLIMIT_REFUSED = b"SERVER_ERROR cache_memlimit is set on each backend, not through the proxy\r\n"
# A multi-get of distinct keys on a one-shard ring goes to the backend as it came, up to this
# many keys; a bigger one is split like any other, so its reply is rendered in slices.
PASS_THROUGH_KEYS: Final = 64
# counted as what they are translated into (Final: no module-dict lookup per request)
_TRANSLATED: Final = frozenset({BinaryRequest, GetBatch})

_Event = TypeVar("_Event")
MAX_RELATIVE_EXPTIME = 60 * 60 * 24 * 30  # memcached's REALTIME_MAXDELTA: past it, a Unix time


def _expires_at_once(exptime: int) -> bool:
    """Whether memcached expires an item touched with `exptime` at once (negative, or a
    Unix time already past)."""
    return exptime < 0 or MAX_RELATIVE_EXPTIME < exptime <= time.time()


def _route(kind: type[_Event], handler: Callable[[ClientSession, ShardRouter, _Event], Slot]
           ) -> tuple[type, Callable[[ClientSession, ShardRouter, Any], Slot]]:
    """A dispatch entry; mypy checks that `handler` takes the events of type `kind`."""
    return kind, handler


class ClientSession:
    def __init__(self, state: ProxyState, replies: ReplyListener) -> None:
        self.state = state
        self.replies = replies  # hears of every reply; picks each node's connection
        self.closing = False  # quit or a closing protocol error: no more requests
        # on_shard_error = miss: the renderers of the common one-key reads, made once
        self._get_miss = MissOnShardError(state.stats, b"END\r\n")
        self._mg_miss = MissOnShardError(state.stats, b"EN\r\n")

    def issue(self, request: Request | BinaryRequest | BinaryReply | GetBatch) -> Slot:
        """Send `request` on its way and return its place in the reply order."""
        kind = type(request)
        if kind not in _TRANSLATED:
            self.state.stats.commands[kind.__name__] += 1
        try:
            return _DISPATCH[type(request)](self, self.state.router, request)
        except NoShards:
            return Ready(b"SERVER_ERROR no shards in the cluster\r\n")

    # -- keyed commands --------------------------------------------------------------

    def _write(self, router: ShardRouter, shard: Shard, line: bytes, multi: bool,
               renderer: Callable[[PendingReply], bytes] = render,
               shape: ReplyShape | None = None) -> Settling:
        if router.leader_writes:  # even with no live node: one may come back and lead
            direct = to_leader(DirectLeaderWrite, self.state, shard, line, multi, self.replies,
                               renderer)
            if direct is not None:
                return direct
            return LeaderWrite(self.state, shard, line, multi, self.replies, renderer)
        nodes = shard.nodes
        if not nodes:
            return Unroutable(shard, multi, renderer)
        if len(nodes) == 1:
            write = cast(DirectWrite, nodes[0].submit(line, multi, self.replies, DirectWrite,
                                                      shape))
            write.filter = renderer
            return write
        return FannedOut(nodes, line, multi, self.replies, renderer)

    def _read(self, router: ShardRouter, shard: Shard, line: bytes, multi: bool,
              renderer: Callable[[PendingReply], bytes] = render,
              shape: ReplyShape | None = None) -> Settling:
        """`shape`: the reply shape of `line` when known here (the backend connection need
        not split the line again to find it), for the one-node shards' direct reads."""
        nodes = shard.nodes
        if not nodes:
            return Unroutable(shard, multi, renderer)
        if router.leader_writes and router.read_policy == "leader":
            direct = to_leader(DirectLeaderRead, self.state, shard, line, multi, self.replies,
                               renderer)
            if direct is not None:
                return direct
            return LeaderRead(self.state, shard, line, multi, self.replies, renderer)
        if len(nodes) == 1:
            read = cast(DirectRead, nodes[0].submit(line, multi, self.replies, DirectRead,
                                                    shape))
            read.filter = renderer
            return read
        return ReadWithFailover(router.read_order(shard), line, multi, self.replies, renderer)

    def _get(self, router: ShardRouter, request: Get) -> Slot:
        keys = request.keys
        touches = request.touches
        if not keys:
            return Ready(b"END\r\n")  # "gat 10" without keys: memcached answers END
        if touches and _expires_at_once(request.exptime):
            # the first touch expires the item, so a repeated key is a miss: only the first
            # of each key is answered (fuzzer: `gat -1 k k`)
            keys = list(dict.fromkeys(keys))
        distinct = None if len(keys) == 1 else dict.fromkeys(keys)
        miss = router.miss_on_shard_error
        if distinct is None or (len(router.shards) == 1 and len(distinct) == len(keys)
                                <= PASS_THROUGH_KEYS):
            shard = router.shard_for(keys[0])
            renderer: Callable[[PendingReply], bytes] = render
            if miss:
                renderer = self._get_miss if distinct is None else \
                    MissOnShardError(self.state.stats, b"END\r\n", len(keys))
            if touches:
                return self._write(router, shard, encode_request(request), True, renderer)
            return self._read(router, shard, encode_request(request), True, renderer,
                              ValuesOf(keys))
        # Repeated keys are asked once and repeated here, slice by slice (a backend would
        # answer every repeat, and the proxy would hold each copy): see proxy/split_get.py.
        parts = self._split(router, request.command, distinct, request.exptime)
        return SplitGet(keys, len(distinct), [part for _, part in parts],
                        [len(part_keys) for part_keys, _ in parts],
                        self.state.stats if miss else None)

    def _split(self, router: ShardRouter, command: bytes, distinct: Iterable[bytes],
               exptime: int = 0) -> list[tuple[list[bytes], Settling]]:
        """A multi-get of `distinct` keys split per shard: each part's keys and its read
        (its write for gat/gats), all sent at once."""
        parts = []
        touches = command in (b"gat", b"gats")
        for shard, shard_keys in router.by_shard(distinct).items():
            line = encode_get(command, shard_keys, exptime)
            if touches:
                parts.append((shard_keys, self._write(router, shard, line, True)))
            else:
                parts.append((shard_keys, self._read(router, shard, line, True, render,
                                                     ValuesOf(shard_keys))))
        return parts

    def split_get(self, keys: Iterable[bytes]) -> list[tuple[list[bytes], Settling]]:
        """`gets` of distinct `keys` split per shard (a batch of binary gets)."""
        self.state.stats.commands["Get"] += 1
        return self._split(self.state.router, b"gets", keys)

    def _keyed_write(self, router: ShardRouter, request: Store | Delete | Arithmetic | Touch
                     ) -> Slot:
        shard = router.shard_for(request.key)
        return self._write(router, shard, encode_request(request), False,
                           _drop_all if request.noreply else render,
                           STORED if type(request) is Store else None)

    def _meta(self, router: ShardRouter, request: MetaGet | MetaSet | MetaDelete
              | MetaArithmetic) -> Slot:
        flags = request.flags
        kind = type(request)
        renderer: Callable[[PendingReply], bytes] = render
        if flags.quiet:
            renderer = (_QUIET_MG if kind is MetaGet else
                        _QUIET_MA if kind is MetaArithmetic else _QUIET_MS_MD)
        if kind is MetaGet and router.miss_on_shard_error:
            assert isinstance(request, MetaGet)
            renderer = self._meta_get_miss(request, renderer)
        return self._route_meta(router, request, renderer)

    def _route_meta(self, router: ShardRouter, request: MetaGet | MetaSet | MetaDelete
                    | MetaArithmetic, renderer: Callable[[PendingReply], bytes]) -> Slot:
        shard = router.shard_for(request.key)
        line = encode_request(request)
        if type(request) is MetaGet and \
                not _WRITE_META_GET_FLAGS.intersection(request.flags.order):
            return self._read(router, shard, line, False, renderer)
        return self._write(router, shard, line, False, renderer)

    def meta(self, request: MetaGet | MetaSet | MetaDelete | MetaArithmetic,
             renderer: Callable[[PendingReply], bytes]) -> Slot:
        """A meta request routed as a client's (a translated binary frame), its settled
        reply rendered by `renderer`."""
        self.state.stats.commands[type(request).__name__] += 1
        try:
            return self._route_meta(self.state.router, request, renderer)
        except NoShards:
            return Ready(renderer(_NO_SHARDS))

    def _meta_get_miss(self, request: MetaGet, renderer: Callable[[PendingReply], bytes]
                       ) -> Callable[[PendingReply], bytes]:
        """on_shard_error = miss: EN (hidden by q, echoing O and k) when the shard fails."""
        flags = request.flags
        if flags.quiet:
            return MissOnShardError(self.state.stats, b"", 1, renderer)
        if "O" in flags.order or "k" in flags.order:
            return MissOnShardError(self.state.stats, meta_get_miss(request))
        return self._mg_miss

    def _meta_debug(self, router: ShardRouter, request: MetaDebug) -> Slot:
        shard = router.shard_for(request.key)
        return self._read(router, shard, encode_request(request), False)

    # -- the rest ----------------------------------------------------------------------

    def _stats(self, router: ShardRouter, request: Stats) -> Slot:
        """The cluster's figures (proxy.cluster_stats); `stats proxy`: the proxy's alone."""
        state = self.state
        args = request.args
        sub = args[0] if args else b""
        if not args:
            return ClusterStats(router, b"stats\r\n", self.replies, cluster_stats.general(state))
        if sub in cluster_stats.BY_CLASS:  # memcached ignores tokens after these
            return ClusterStats(router, b"stats %s\r\n" % sub, self.replies,
                                cluster_stats.per_class)
        if sub == b"settings":
            return ClusterStats(router, b"stats settings\r\n", self.replies,
                                cluster_stats.settings(state))
        if sub == b"reset":
            state.stats.reset(state.tls)
            return ClusterStats(router, b"stats reset\r\n", self.replies, cluster_stats.reset,
                                multi=False)
        if sub == b"conns":
            return Ready(cluster_stats.connections(state.clients))
        if sub == b"detail":
            return Ready(cluster_stats.detail(state, args))
        if sub == b"cachedump":  # the leaders check the arguments
            return ShardDump(router, encode_request(request), b"\r\n")
        return Ready(state.stats.reply(args, state.pools(), state.buffers, state.tls))

    def _lru_crawler(self, router: ShardRouter, request: LruCrawler) -> Slot:
        """metadump: every leader's, shard by shard (proxy/dumps.py); the crawler's settings
        belong to each backend; the rest is memcached's ERROR (proto_text.c)."""
        args = request.args
        if len(args) == 2 and args[0] == b"metadump":
            return ShardDump(router, encode_request(request), b"\n")
        if args and args[0] in CRAWLER_SETTINGS:
            return Ready(CRAWLER_REFUSED)
        return Ready(b"ERROR\r\n")

    def _flush_all(self, router: ShardRouter, request: FlushAll) -> Slot:
        line = encode_request(request)
        if router.leader_writes:  # each shard's leader; followers get it by replication
            return AllSayOk([self._write(router, shard, line, False) for shard in router.shards],
                            request.noreply)
        return AllSayOk([Forwarded(node, line, self.replies)
                         for shard in router.shards for node in shard.nodes], request.noreply)

    def _cache_memlimit(self, router: ShardRouter, request: CacheMemlimit) -> Slot:
        # A proxy holds no items, and fanned out raw this would resize every backend at
        # once, followers unlike their leaders: each backend's limit is its --memory.
        return Ready(b"" if request.noreply else CACHE_MEMLIMIT_REFUSED)

    def _noop(self, router: ShardRouter, request: MetaNoop) -> Slot:
        return Ready(b"MN\r\n")

    def _version(self, router: ShardRouter, request: Version) -> Slot:
        return Ready(b"VERSION %s\r\n" % self.state.settings.version.encode())

    def _shutdown(self, router: ShardRouter, request: Shutdown) -> Slot:
        return Ready(b"ERROR: shutdown not enabled\r\n")

    def _refresh_certs(self, router: ShardRouter, request: RefreshCerts) -> Slot:
        # the proxy's own certificates (its client listeners'); backends reload their own
        tls = self.state.tls
        error = TLS_NOT_ENABLED if tls is None else tls.reload()
        return Ready(refresh_certs_reply(error, request.noreply))

    def _backend_admin(self, router: ShardRouter, request: Request) -> Slot:
        # lru, slabs, watch tune or watch one node's store: not the proxy's
        return Ready(b"ERROR\r\n")

    def _verbosity(self, router: ShardRouter, request: Verbosity) -> Slot:
        return Ready(b"" if request.noreply else b"OK\r\n")

    def _quit(self, router: ShardRouter, request: Request) -> Slot:
        return self.close_after(b"")

    def close_after(self, reply: bytes) -> Slot:
        """`reply`, then the connection closes (quit)."""
        self.closing = True
        return Ready(reply)

    def _binary(self, router: ShardRouter, request: BinaryRequest) -> Slot:
        return issue_binary(self, request)

    def _get_batch(self, router: ShardRouter, batch: GetBatch) -> Slot:
        return issue_batch(self, batch)

    def _binary_reply(self, router: ShardRouter, event: BinaryReply) -> Slot:
        return Ready(event.reply)  # answered by the codec (SASL)

    def _authenticated(self, router: ShardRouter, event: Authenticated) -> Slot:
        return Ready(event.reply)

    def _protocol_error(self, router: ShardRouter, error: ProtocolError) -> Slot:
        self.state.stats.client_errors += 1
        if error.close:
            self.closing = True
        if error.drop_key is not None:
            # memcached drops the old value of a `set` that was too large; so must the shard.
            shard = router.shard_for(error.drop_key)
            delete = delete_request(error.drop_key)  # a binary key may hold spaces
            if delete is None:
                return Ready(error.reply)
            return AfterWrites([node.submit(delete, False, self.replies)
                                for node in shard.nodes], error.reply)
        return Ready(error.reply)


# By request type, the session's method that issues it. At class level: a table of bound
# methods in each session would make it a reference cycle, keeping a closed client's objects
# until the cyclic GC runs.
_DISPATCH: Final = dict([
    _route(Get, ClientSession._get),
    _route(Store, ClientSession._keyed_write),
    _route(Delete, ClientSession._keyed_write),
    _route(Arithmetic, ClientSession._keyed_write),
    _route(Touch, ClientSession._keyed_write),
    _route(MetaSet, ClientSession._meta),
    _route(MetaDelete, ClientSession._meta),
    _route(MetaArithmetic, ClientSession._meta),
    _route(MetaGet, ClientSession._meta),
    _route(MetaDebug, ClientSession._meta_debug),
    _route(MetaNoop, ClientSession._noop),
    _route(Version, ClientSession._version),
    _route(Stats, ClientSession._stats),
    _route(LruCrawler, ClientSession._lru_crawler),
    _route(FlushAll, ClientSession._flush_all),
    _route(CacheMemlimit, ClientSession._cache_memlimit),
    _route(Verbosity, ClientSession._verbosity),
    _route(Shutdown, ClientSession._shutdown),
    _route(RefreshCerts, ClientSession._refresh_certs),
    _route(Quit, ClientSession._quit),
    _route(Lru, ClientSession._backend_admin),
    _route(Slabs, ClientSession._backend_admin),
    _route(Watch, ClientSession._backend_admin),
    _route(ProtocolError, ClientSession._protocol_error),
    _route(Authenticated, ClientSession._authenticated),
    _route(BinaryRequest, ClientSession._binary),
    _route(BinaryReply, ClientSession._binary_reply),
    _route(GetBatch, ClientSession._get_batch),
])
