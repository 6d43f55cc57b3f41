"""The `stats` family of replies, named and ordered as memcached 1.6.18 prints them.

Every field memcached 1.6.18 (Debian's build: TLS and extstore compiled in, no proxy) prints
by default is printed, in its order, so that tools and the proxy that read them by name find
them where memcached has them; memring's own fields (memring_*) come after memcached's.
A value is memring's own where memring has the thing (counters, connections, items, settings
a client can change); where memcached's value is a constant of its design that memring
emulates (slab classes, growth factor, hash table size) it is memcached's; where memring has
no such thing (response objects, read buffer pools, slab rebalancer, log workers, extstore)
it is 0 or memcached's default. README "Compatibility notes" lists the fields that differ.
The per-class replies live in backend.slab_stats, the dumps in backend.item_dumps, `stats
detail` in backend.prefix_stats.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import trio

from memring.backend import slab_stats
from memring.backend.admin_commands import AdminCommands
from memring.backend.item_dumps import MAX_SLAB_CLASSES, StreamedReply, cachedump
from memring.backend.prefix_stats import PrefixStats
from memring.backend.runtime_settings import RuntimeSettings
from memring.backend.settings import BackendSettings
from memring.backend.store import Store
from memring.netio.connection_server import ConnectionCounters
from memring.netio.tls import ServerTls
from memring.protocol.ascii_auth import Authenticator
from memring.protocol.numeric import parse_u32_truncated

MEMRING_VERSION = "0.1.0"
HASHPOWER_DEFAULT = 16  # memcached's hash table starts at 2**16 buckets ...
HASH_GROWTH_LOAD = 1.5  # ... and doubles once it holds 1.5 items per bucket (assoc.c)
_BAD_LINE = b"CLIENT_ERROR bad command line\r\n"
_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
_DETAIL_USAGE = b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"

Pairs = list[tuple[str, object]]


class ServerCounters(ConnectionCounters):
    """Connection-level counters the server updates."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0
        self.bytes_written = 0


def socket_text(address: tuple[object, ...]) -> str:
    """A TCP socket address as memcached's get_conn_text prints it."""
    host, port = address[0], address[1]
    return f"tcp6:[{host}]:{port}" if ":" in str(host) else f"tcp:{host}:{port}"


@dataclass(frozen=True, slots=True)
class ConnectionEntry:
    """One connection (or listening socket) as `stats conns` shows it."""

    fd: int
    addr: str  # "tcp:127.0.0.1:41266" (memcached's get_conn_text)
    listen_addr: str | None  # None for a listening socket
    state: str  # memcached's conn_* state names
    secs_since_last_cmd: int


class StatsReport:
    def __init__(self, settings: BackendSettings, store: Store, counters: ServerCounters,
                 port: int = 0, auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.auth = auth
        self.store = store
        self.counters = counters
        self.port = port
        self.started = time.time()
        self.runtime = RuntimeSettings()
        self.admin = AdminCommands(self.runtime, store)
        self.prefixes = PrefixStats()
        self.sizes = slab_stats.SizesHistogram()
        self.verbosity = 0
        self.tls: ServerTls | None = None  # the client listeners' TLS (refresh_certs, ssl_*)
        # the server's connections and listeners, for `stats conns` (backend.server)
        self.connections: Callable[[], list[ConnectionEntry]] = list
        self._hash_power = HASHPOWER_DEFAULT

    @property
    def detail(self) -> bool:
        return self.prefixes.enabled

    def reply(self, args: list[bytes]) -> bytes:
        """The reply to `stats <args>`; raises StreamedReply for the replies that walk the
        items (cachedump, items, slabs, sizes)."""
        if not args:
            return self._lines(self.general())
        sub = args[0]
        if sub == b"reset":
            self.reset()
            return b"RESET\r\n"
        if sub == b"detail":
            return self._detail(args[1] if len(args) > 1 else b"")
        if sub == b"cachedump":
            return self._cachedump(args)
        pairs = self._subcommand(sub)
        if pairs is None:
            return b"ERROR\r\n"
        if sub in (b"sizes_enable", b"sizes_disable"):
            return self._lines(pairs, end=b"")  # memcached appends no END to these two
        return self._lines(pairs)

    def group(self, name: bytes) -> Pairs | None:
        """`stats items|slabs|sizes|conns|extstore` as pairs, for the binary protocol's stat
        (a frame per pair): the walks run to their end at once, as memcached's do; None for
        another name."""
        kept: Pairs = []

        def keep(pairs: Pairs) -> bytes:
            kept.extend(pairs)
            return b""

        chunks = self._walk(name, keep)
        if chunks is None:
            return self._subcommand(name) if name in (b"conns", b"extstore") else None
        for _ in chunks:
            pass
        return kept

    def _walk(self, name: bytes, render: Callable[[Pairs], bytes]
              ) -> Generator[bytes, None, None] | None:
        """The chunked walk over the items behind `stats items|slabs|sizes`, its pairs
        rendered by `render` (text lines, or kept for binary frames); None for another name."""
        store = self.store
        if name == b"items":
            return slab_stats.census_chunks(
                store, lambda classes: render(slab_stats.items(store, classes)))
        if name == b"slabs":
            return slab_stats.census_chunks(
                store, lambda classes: render(slab_stats.slabs(classes)))
        if name == b"sizes":
            return slab_stats.sizes_chunks(store, self.sizes, render)
        return None

    def _subcommand(self, sub: bytes) -> Pairs | None:
        store = self.store
        if sub == b"settings":
            return self.settings_stats()
        chunks = self._walk(sub, self._lines)
        if chunks is not None:
            raise StreamedReply(chunks)
        if sub == b"sizes_enable":
            return slab_stats.sizes_enable(store, self.sizes)
        if sub == b"sizes_disable":
            return slab_stats.sizes_disable(self.sizes)
        if sub == b"conns":
            return self.conns()
        if sub == b"extstore":
            return []  # memcached with extstore compiled in but not configured: just END
        return None

    def reset(self) -> None:
        """`stats reset`: the counters memcached's stats_reset zeroes."""
        self.store.reset_stats()
        self.counters.total_connections = 0
        self.counters.rejected_connections = 0
        self.counters.idle_kicks = 0
        self.counters.bytes_read = self.counters.bytes_written = 0
        self.admin.crawler_starts = 0
        self.prefixes.clear()
        if self.auth is not None:
            self.auth.reset()
        if self.tls is not None:
            self.tls.handshake_errors = 0  # in memcached's struct stats: reset too

    def _detail(self, command: bytes) -> bytes:
        if command in (b"on", b"off"):
            self.prefixes.enabled = command == b"on"
            return b"OK\r\n"
        if command == b"dump":
            return self.prefixes.dump()
        return _DETAIL_USAGE

    def _cachedump(self, args: list[bytes]) -> bytes:
        if len(args) < 3:
            return _BAD_LINE
        cls, limit = parse_u32_truncated(args[1]), parse_u32_truncated(args[2])
        if cls is None or limit is None:
            return _BAD_FORMAT
        if cls >= MAX_SLAB_CLASSES:
            return b"CLIENT_ERROR Illegal slab id\r\n"
        raise StreamedReply(cachedump(self.store, cls, limit))

    @staticmethod
    def _lines(pairs: Pairs, end: bytes = b"END\r\n") -> bytes:
        return b"".join(b"STAT %s %s\r\n" % (k.encode(), str(v).encode())
                        for k, v in pairs) + end

    def conns(self) -> Pairs:
        pairs: Pairs = []
        for entry in sorted(self.connections(), key=lambda entry: entry.fd):
            pairs.append((f"{entry.fd}:addr", entry.addr))
            if entry.listen_addr is not None:
                pairs.append((f"{entry.fd}:listen_addr", entry.listen_addr))
            pairs += [(f"{entry.fd}:state", entry.state),
                      (f"{entry.fd}:secs_since_last_cmd", entry.secs_since_last_cmd)]
        return pairs

    def _hash_table(self) -> tuple[int, int]:
        """memcached's hash_power_level and hash_bytes for this many items (it only grows)."""
        while len(self.store.items) > HASH_GROWTH_LOAD * (1 << self._hash_power):
            self._hash_power += 1
        return self._hash_power, 8 << self._hash_power

    def general(self) -> Pairs:
        s = self.store.stats
        c = self.counters
        admin = self.admin
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = time.time()
        hash_power, hash_bytes = self._hash_table()
        return [
            ("pid", os.getpid()),
            ("uptime", int(now - self.started)),
            ("time", int(now)),
            ("version", self.settings.version),
            ("libevent", f"trio-{trio.__version__}"),  # memring's event loop
            ("pointer_size", 64),
            ("rusage_user", f"{usage.ru_utime:.6f}"),
            ("rusage_system", f"{usage.ru_stime:.6f}"),
            ("max_connections", self.settings.max_connections),
            ("curr_connections", c.curr_connections),
            ("total_connections", c.total_connections),
            ("rejected_connections", c.rejected_connections),
            ("connection_structures", c.curr_connections + 1),
            ("response_obj_oom", 0), ("response_obj_count", 0), ("response_obj_bytes", 0),
            ("read_buf_count", 0), ("read_buf_bytes", 0), ("read_buf_bytes_free", 0),
            ("read_buf_oom", 0),
            ("reserved_fds", 20),
            ("cmd_get", s.cmd_get),
            ("cmd_set", s.cmd_set),
            ("cmd_flush", s.cmd_flush),
            ("cmd_touch", s.cmd_touch),
            ("cmd_meta", s.cmd_meta),
            ("get_hits", s.get_hits),
            ("get_misses", s.get_misses),
            ("get_expired", s.get_expired),
            ("get_flushed", s.get_flushed),
            ("delete_misses", s.delete_misses),
            ("delete_hits", s.delete_hits),
            ("incr_misses", s.incr_misses),
            ("incr_hits", s.incr_hits),
            ("decr_misses", s.decr_misses),
            ("decr_hits", s.decr_hits),
            ("cas_misses", s.cas_misses),
            ("cas_hits", s.cas_hits),
            ("cas_badval", s.cas_badval),
            ("touch_hits", s.touch_hits),
            ("touch_misses", s.touch_misses),
            ("store_too_large", s.store_too_large),
            ("store_no_memory", s.store_no_memory),
            ("auth_cmds", self.auth.auth_cmds if self.auth is not None else 0),
            ("auth_errors", self.auth.auth_errors if self.auth is not None else 0),
            *([("idle_kicks", c.idle_kicks)] if self.settings.idle_timeout else []),  # as 1.6
            ("bytes_read", c.bytes_read),
            ("bytes_written", c.bytes_written),
            ("limit_maxbytes", self.store.memory_limit),
            ("accepting_conns", 1),
            ("listen_disabled_num", 0),
            ("time_in_listen_disabled_us", 0),
            ("threads", 1),
            ("conn_yields", 0),
            ("hash_power_level", hash_power),
            ("hash_bytes", hash_bytes),
            ("hash_is_expanding", 0),
            ("slab_reassign_rescues", 0), ("slab_reassign_chunk_rescues", 0),
            ("slab_reassign_evictions_nomem", 0), ("slab_reassign_inline_reclaim", 0),
            ("slab_reassign_busy_items", 0), ("slab_reassign_busy_deletes", 0),
            ("slab_reassign_running", 0), ("slabs_moved", 0),
            *([("lru_crawler_running", int(admin.crawling)),
               ("lru_crawler_starts", admin.crawler_starts)] if self.runtime.lru_crawler else []),
            ("lru_maintainer_juggles", 0),
            ("malloc_fails", 0),
            ("log_worker_dropped", 0), ("log_worker_written", 0),
            ("log_watcher_skipped", 0), ("log_watcher_sent", 0),
            ("log_watchers", admin.watchers),
            *self._tls_stats(),
            ("unexpected_napi_ids", 0),
            ("round_robin_fallback", 0),
            ("bytes", self.store.bytes),
            ("curr_items", len(self.store.items)),
            ("total_items", s.total_items),
            ("slab_global_page_pool", 0),
            ("expired_unfetched", s.expired_unfetched),
            ("evicted_unfetched", s.evicted_unfetched),
            ("evicted_active", 0),
            ("evictions", s.evictions),
            ("reclaimed", s.reclaimed),
            ("crawler_reclaimed", s.crawler_reclaimed),
            ("crawler_items_checked", s.crawler_items_checked), ("lrutail_reflocked", 0),
            ("moves_to_cold", 0), ("moves_to_warm", 0), ("moves_within_lru", 0),
            ("direct_reclaims", 0), ("lru_bumps_dropped", 0),
            # `bytes` is memcached's item size; this is what the items cost the process
            # (keys, records, the index), which --memory bounds (backend.store).
            ("memring_store_bytes", self.store.store_bytes),
            ("memring_version", MEMRING_VERSION),
        ]

    def settings_stats(self) -> Pairs:
        settings = self.settings
        runtime = self.runtime
        return [
            ("maxbytes", self.store.memory_limit),
            ("maxconns", settings.max_connections),
            ("tcpport", self.port),
            ("udpport", 0),
            ("inter", settings.host),
            ("verbosity", self.verbosity),
            ("oldest", 0),
            ("evictions", "on"),
            ("domain_socket", "NULL"),
            ("umask", 700),
            ("shutdown_command", "no"),
            ("growth_factor", "1.25"),
            ("chunk_size", 48),
            ("num_threads", 1),
            ("num_threads_per_udp", 1),
            ("stat_key_prefix", ":"),
            ("detail_enabled", "yes" if self.detail else "no"),
            ("reqs_per_event", 20),
            ("cas_enabled", "yes"),
            ("tcp_backlog", 1024),
            ("binding_protocol", "auto-negotiate"),  # -B auto: text or binary per connection
            # --auth-file also checks binary SASL PLAIN (memcached: -S, through cyrus)
            ("auth_enabled_sasl", "yes" if settings.auth_file else "no"),
            ("auth_enabled_ascii", settings.auth_file or "no"),  # memcached: the path
            ("item_size_max", settings.max_item_size),
            ("maxconns_fast", "yes"),
            ("hashpower_init", 0),
            ("slab_reassign", "yes"),
            ("slab_automove", runtime.slab_automove),
            ("slab_automove_ratio", f"{runtime.slab_automove_ratio:.2f}"),
            ("slab_automove_window", 30),
            ("slab_chunk_max", 524288),
            ("lru_crawler", "yes" if runtime.lru_crawler else "no"),
            ("lru_crawler_sleep", runtime.lru_crawler_sleep),
            ("lru_crawler_tocrawl", runtime.lru_crawler_tocrawl),
            ("tail_repair_time", 0),
            ("flush_enabled", "yes"),
            ("dump_enabled", "yes"),
            ("hash_algorithm", "murmur3"),
            ("lru_maintainer_thread", "yes"),
            ("lru_segmented", "yes" if runtime.lru_segmented else "no"),
            ("hot_lru_pct", runtime.hot_lru_pct),
            ("warm_lru_pct", runtime.warm_lru_pct),
            ("hot_max_factor", f"{runtime.hot_max_factor:.2f}"),
            ("warm_max_factor", f"{runtime.warm_max_factor:.2f}"),
            ("temp_lru", "yes" if runtime.temp_lru else "no"),
            ("temporary_ttl", runtime.temporary_ttl),
            ("idle_timeout", f"{settings.idle_timeout:g}"),
            ("watcher_logbuf_size", 262144),
            ("worker_logbuf_size", 65536),
            ("read_buf_mem_limit", 0),
            ("track_sizes", "yes" if self.sizes.cas_min is not None else "no"),
            ("inline_ascii_response", "no"),
            # extstore, compiled into Debian's 1.6.18 and off: its defaults
            ("ext_item_size", 512), ("ext_item_age", 4294967295), ("ext_low_ttl", 0),
            ("ext_recache_rate", 2000), ("ext_wbuf_size", 4194304), ("ext_compact_under", 0),
            ("ext_drop_under", 0), ("ext_max_sleep", 1000000), ("ext_max_frag", "0.80"),
            ("slab_automove_freeratio", "0.010"), ("ext_drop_unread", "no"),
            *self._tls_settings(),
            ("num_napi_ids", "(null)"),
            ("memory_file", "(null)"),
            ("max_line", settings.max_line),
            ("memring_version", MEMRING_VERSION),
        ]

    def _tls_stats(self) -> list[tuple[str, object]]:
        """memcached prints these only with -Z (ssl_new_sessions also needs its session cache,
        which memring does not offer)."""
        tls = self.tls
        if tls is None:
            return []
        return [("ssl_handshake_errors", tls.handshake_errors),
                ("time_since_server_cert_refresh", tls.time_since_refresh)]

    def _tls_settings(self) -> list[tuple[str, object]]:
        """As memcached 1.6.18 (built with TLS) prints them, with -Z or without; what memring
        does not offer shows memcached's default (keyformat PEM, no session cache, no kTLS)."""
        tls = self.settings.tls_settings
        return [
            ("ssl_enabled", "yes" if self.tls is not None else "no"),
            ("ssl_chain_cert", tls.cert or "(null)"),
            ("ssl_key", tls.key or "(null)"),
            ("ssl_verify_mode", tls.verify_number),
            ("ssl_keyformat", 1),
            ("ssl_ciphers", tls.ciphers or "NULL"),
            ("ssl_ca_cert", tls.ca or "NULL"),
            ("ssl_wbuf_size", 16384),
            ("ssl_session_cache", "no"),
            ("ssl_kernel_tls", "no"),
            ("ssl_min_version", tls.version_name),
        ]
