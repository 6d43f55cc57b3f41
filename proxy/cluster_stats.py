"""`stats` through the proxy: the cluster's figures, in memcached's names and shapes.

Theory of operation: a client of the proxy talks to what it takes for one memcached, so
`stats` answers the cluster's figures, not only the proxy's. `ClusterStats` is the slot: it
sends the same `stats ...` line to every shard's leader at once (the leaders hold what the
cluster holds; followers are copies) and, once each has answered or failed, merges the
replies with the proxy's own lines. A leader that does not answer within the proxy's request
timeout (the backend connection's deadline) is left out and counted: `memring_shards` and
`memring_shards_answered` say how complete the sums are.

- `stats`: the proxy's own lines (pid, uptime, version, connections, its counters: see
  proxy.stats), then the memcached counters and gauges of SUMMED_STATS, summed over leaders.
- `stats items`, `stats slabs`, `stats sizes`: per class (or size), summed over leaders;
  constants of a class and ages (PER_CLASS_MAXIMA) are the leaders' maximum.
- `stats settings`: the proxy's settings in memcached's names (maxbytes: the leaders' sum),
  then the proxy's own (`memring_*`).
- `stats reset`: the proxy's counters, and forwarded to each leader; RESET.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import trio

from memring.netio.connection import Connection
from memring.protocol.responses import End, Stat
from memring.proxy.pending_reply import PendingReply, ReplyListener
from memring.proxy.router import ShardRouter
from memring.proxy.slots import WAITING, Poll, Slot
from memring.proxy.state import ProxyState
from memring.proxy.stats import MEMRING_VERSION

# memcached's general counters and gauges that add up over shards, in memcached's order.
# Not summed (the proxy's own, or meaningless as a sum): pid, uptime, time, version,
# connections, threads, bytes_read/written (the proxy's traffic is not its clients'), hash
# table and LRU-thread internals.
SUMMED_STATS = (
    "cmd_get", "cmd_set", "cmd_flush", "cmd_touch", "cmd_meta", "get_hits", "get_misses",
    "get_expired", "get_flushed", "delete_misses", "delete_hits", "incr_misses", "incr_hits",
    "decr_misses", "decr_hits", "cas_misses", "cas_hits", "cas_badval", "touch_hits",
    "touch_misses", "store_too_large", "store_no_memory", "limit_maxbytes", "bytes",
    "curr_items", "total_items", "expired_unfetched", "evicted_unfetched", "evicted_active",
    "evictions", "reclaimed", "crawler_reclaimed", "crawler_items_checked",
)
# Per-class lines that are the same on every node, or an age: the maximum, not a sum.
PER_CLASS_MAXIMA = frozenset({"chunk_size", "chunks_per_page", "age", "age_hot", "age_warm",
                              "evicted_time"})
BY_CLASS = frozenset({b"items", b"slabs", b"sizes"})

# How a `stats ...` reply is made: (each answering leader's STAT lines, how many answered,
# how many shards there are) -> the reply
Answer = Callable[[list[list[Stat]], int, int], bytes]


def _number(value: bytes) -> int | None:
    return int(value) if value.isdigit() else None


def leaders_stats(answers: list[list[Stat]], names: tuple[str, ...]) -> list[tuple[str, object]]:
    """The `names` the leaders reported, summed, in the order of `names`."""
    sums: dict[str, int] = {}
    wanted = frozenset(names)
    for stats in answers:
        for stat in stats:
            name = stat.name.decode(errors="replace")
            value = _number(stat.value)
            if name in wanted and value is not None:
                sums[name] = sums.get(name, 0) + value
    return [(name, sums[name]) for name in names if name in sums]


def _class_order(name: str) -> tuple[int, int]:
    """`items:3:number`, `3:chunk_size`, `96` (a size) sort by their class or size; lines
    without one (active_slabs, total_malloced, sizes_status) come last."""
    for part in name.split(":")[:2]:
        if part.isdigit():
            return 0, int(part)
    return 1, 0


def by_class(answers: list[list[Stat]]) -> list[tuple[str, object]]:
    """Per-class lines summed over leaders (PER_CLASS_MAXIMA: the maximum); a line that is
    not a number (sizes_status) is the first leader's."""
    numbers: dict[str, int] = {}
    texts: dict[str, str] = {}
    order: dict[str, None] = {}  # names in the order the leaders print them
    for stats in answers:
        for stat in stats:
            name = stat.name.decode(errors="replace")
            order[name] = None
            value = _number(stat.value)
            if value is None or name in texts:
                texts.setdefault(name, stat.value.decode(errors="replace"))
            elif name not in numbers:
                numbers[name] = value
            elif name.rpartition(":")[2] in PER_CLASS_MAXIMA:
                numbers[name] = max(numbers[name], value)
            else:
                numbers[name] += value
    # a stable sort: each class's lines keep the order the leaders print them in
    return [(name, texts[name] if name in texts else numbers[name])
            for name in sorted(order, key=_class_order)]


def _lines(pairs: list[tuple[str, object]]) -> bytes:
    return b"".join(b"STAT %s %s\r\n" % (k.encode(), str(v).encode())
                    for k, v in pairs) + b"END\r\n"


class ClusterStats(Slot):
    """One `stats ...` line sent to every shard's leader; `answer` makes the reply from the
    leaders' STAT lines once each has answered or failed (left out)."""

    __slots__ = ("answer", "pendings", "shards")

    def __init__(self, router: ShardRouter, line: bytes, client: ReplyListener,
                 answer: Answer, multi: bool = True) -> None:
        self.shards = len(router.shards)
        self.pendings = [shard.nodes[0].submit(line, multi, client)
                         for shard in router.shards if shard.nodes and shard.has_leader]
        self.answer = answer

    def poll(self) -> Poll:
        if not all(pending.done for pending in self.pendings):
            return WAITING
        return self._answer()

    async def reply(self) -> bytes:
        for pending in self.pendings:
            if not pending.done:
                await pending.wait()
        return self._answer()

    def _answer(self) -> bytes:
        answers = [stats for stats in map(_stat_lines, self.pendings) if stats is not None]
        return self.answer(answers, len(answers), self.shards)


def _stat_lines(pending: PendingReply) -> list[Stat] | None:
    """A leader's STAT lines, or None if it did not answer with them (it failed, or gave
    an error, or RESET)."""
    events = pending.events
    if pending.error is not None or not events or type(events[-1]) is not End:
        return None
    stats = [event for event in events if type(event) is Stat]
    return stats if len(stats) == len(events) - 1 else None


def general(state: ProxyState) -> Answer:
    """`stats`: the proxy's lines, the shards that answered, the leaders' sums."""
    def answer(answers: list[list[Stat]], answered: int, shards: int) -> bytes:
        own = state.stats.general(state.pools(), state.buffers, state.tls)
        return _lines([*own, ("threads", 1),  # a proxy process runs one trio thread
                       ("memring_shards", shards), ("memring_shards_answered", answered),
                       *leaders_stats(answers, SUMMED_STATS)])
    return answer


def per_class(answers: list[list[Stat]], answered: int, shards: int) -> bytes:
    return _lines(by_class(answers))


def settings(state: ProxyState) -> Answer:
    """`stats settings`: memcached's names for what the proxy has of them, then its own."""
    def answer(answers: list[list[Stat]], answered: int, shards: int) -> bytes:
        s = state.settings
        maxbytes = leaders_stats(answers, ("maxbytes",))
        return _lines([
            ("maxbytes", maxbytes[0][1] if maxbytes else 0),
            ("maxconns", s.max_connections),
            ("tcpport", s.port),
            ("udpport", 0),
            ("inter", s.host),
            ("verbosity", 0),
            ("oldest", 0),
            ("evictions", "on"),
            ("num_threads", s.workers),
            ("detail_enabled", "yes" if state.stats.detail else "no"),
            ("cas_enabled", "yes"),
            ("binding_protocol", "ascii"),
            ("auth_enabled_sasl", "no"),
            ("auth_enabled_ascii", s.auth_file or "no"),
            ("item_size_max", s.max_item_size),
            ("flush_enabled", "yes"),
            ("idle_timeout", f"{s.idle_timeout:g}"),
            ("ssl_enabled", "yes" if state.tls is not None else "no"),
            ("memring_version", MEMRING_VERSION),
            ("memring_role", "proxy"),
            ("memring_mode", "cluster" if s.etcd else "static"),
            ("memring_hash", s.hash),
            ("memring_read_policy", s.read_policy),
            ("memring_on_shard_error", s.on_shard_error),
            ("memring_timeout_ms", s.timeout_ms),
            ("memring_failure_limit", s.failure_limit),
            ("memring_retry_ms", s.retry_ms),
            ("memring_pool_size", s.pool_size),
            ("memring_leader_wait_ms", s.leader_wait_ms),
            ("memring_client_buffer_bytes", s.client_buffer_bytes),
            ("memring_max_buffered_bytes", s.max_buffered_bytes),
            ("memring_shards", shards),
            ("memring_shards_answered", answered),
        ])
    return answer


def reset(answers: list[list[Stat]], answered: int, shards: int) -> bytes:
    """The proxy's counters are reset (by the session): RESET, whatever the leaders said."""
    return b"RESET\r\n"


DETAIL_USAGE = b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"


def detail(state: ProxyState, args: list[bytes]) -> bytes:
    """`stats detail on|off|dump`: the proxy keeps no per-prefix figures, so `dump` is
    memcached's answer with none (END); on/off are remembered for `stats settings`."""
    if len(args) < 2 or args[1] not in (b"on", b"off", b"dump"):
        return DETAIL_USAGE
    if args[1] == b"dump":
        return b"END\r\n"
    state.stats.detail = args[1] == b"on"
    return b"OK\r\n"


def connections(clients: dict[Connection, None]) -> bytes:
    """`stats conns`: the proxy's client connections, as memcached lists its own."""
    now = trio.current_time()
    pairs: list[tuple[str, object]] = []
    for conn in list(clients):
        try:
            fd = conn.sock.fileno()
            peer = conn.sock.getpeername()
            local = conn.sock.getsockname()
        except OSError:
            continue  # closing
        if fd < 0 or conn.sock.family not in (socket.AF_INET, socket.AF_INET6):
            continue
        pairs += [(f"{fd}:addr", f"tcp:{peer[0]}:{peer[1]}"),
                  (f"{fd}:listen_addr", f"tcp:{local[0]}:{local[1]}"),
                  (f"{fd}:state", "conn_waiting" if conn.reading else "conn_parse_cmd"),
                  (f"{fd}:secs_since_last_cmd", int(now - conn.active))]
    return _lines(pairs)
