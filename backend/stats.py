"""The `stats` family of replies, named and ordered as memcached 1.6 prints them."""

from __future__ import annotations

import os
import resource
import time
from collections import Counter

from memring.backend.settings import BackendSettings
from memring.backend.store import Store
from memring.netio.connection_server import ConnectionCounters
from memring.netio.tls import ServerTls
from memring.protocol.ascii_auth import Authenticator
from memring.protocol.sizes import SLAB_CHUNK_SIZES, slab_class

MEMRING_VERSION = "0.1.0"


class ServerCounters(ConnectionCounters):
    """Connection-level counters the server updates."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes_read = 0
        self.bytes_written = 0


class StatsReport:
    def __init__(self, settings: BackendSettings, store: Store, counters: ServerCounters,
                 port: int = 0, auth: Authenticator | None = None) -> None:
        self.settings = settings
        self.auth = auth
        self.store = store
        self.counters = counters
        self.port = port
        self.started = time.time()
        self.detail = False
        self.tls: ServerTls | None = None  # the client listeners' TLS (refresh_certs, ssl_*)

    def reply(self, args: list[bytes]) -> bytes:
        if not args:
            return self._lines(self.general())
        sub = args[0]
        if sub == b"reset":
            self.reset()
            return b"RESET\r\n"
        if sub == b"settings":
            return self._lines(self.settings_stats())
        group = self.group(sub)
        if group is not None:
            return self._lines(group)
        if sub == b"conns":
            return b"END\r\n"
        if sub == b"detail":
            if len(args) < 2:
                return b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"
            if args[1] in (b"on", b"off"):
                self.detail = args[1] == b"on"
                return b"OK\r\n"
            if args[1] == b"dump":
                return b"END\r\n"
            return b"CLIENT_ERROR usage: stats detail on|off|dump\r\n"
        return b"ERROR\r\n"

    def reset(self) -> None:
        """`stats reset`: the counters memcached clears."""
        self.store.stats.reset()
        self.counters.total_connections = 0
        self.counters.rejected_connections = 0
        self.counters.idle_kicks = 0
        self.counters.bytes_read = self.counters.bytes_written = 0
        if self.auth is not None:
            self.auth.reset()
        if self.tls is not None:
            self.tls.handshake_errors = 0  # in memcached's struct stats: reset too

    def group(self, name: bytes) -> list[tuple[str, object]] | None:
        """`stats items|slabs|sizes` (memcached.c get_stats); None for another name."""
        if name == b"items":
            return self.items()
        if name == b"slabs":
            return self.slabs()
        if name == b"sizes":
            return [("sizes_status", "disabled")]
        return None

    @staticmethod
    def _lines(pairs: list[tuple[str, object]]) -> bytes:
        return b"".join(b"STAT %s %s\r\n" % (k.encode(), str(v).encode())
                        for k, v in pairs) + b"END\r\n"

    def general(self) -> list[tuple[str, object]]:
        s = self.store.stats
        c = self.counters
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = time.time()
        return [
            ("pid", os.getpid()),
            ("uptime", int(now - self.started)),
            ("time", int(now)),
            ("version", self.settings.version),
            ("memring_version", MEMRING_VERSION),
            ("pointer_size", 64),
            ("rusage_user", f"{usage.ru_utime:.6f}"),
            ("rusage_system", f"{usage.ru_stime:.6f}"),
            ("max_connections", self.settings.max_connections),
            ("curr_connections", c.curr_connections),
            ("total_connections", c.total_connections),
            ("rejected_connections", c.rejected_connections),
            ("connection_structures", c.curr_connections + 1),
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
            ("threads", 1),
            *self._tls_stats(),
            ("bytes", self.store.bytes),
            ("curr_items", len(self.store.items)),
            ("total_items", s.total_items),
            ("expired_unfetched", s.expired_unfetched),
            ("evicted_unfetched", s.evicted_unfetched),
            ("evictions", s.evictions),
            ("reclaimed", s.reclaimed),
        ]

    def settings_stats(self) -> list[tuple[str, object]]:
        host = self.settings.host
        return [
            ("maxbytes", self.store.memory_limit),
            ("maxconns", self.settings.max_connections),
            ("tcpport", self.port),
            ("udpport", 0),
            ("inter", host),
            ("verbosity", 0),
            ("oldest", 0),
            ("evictions", "on"),
            ("growth_factor", "1.25"),
            ("chunk_size", 48),
            ("num_threads", 1),
            ("detail_enabled", "yes" if self.detail else "no"),
            ("cas_enabled", "yes"),
            ("binding_protocol", "auto-negotiate"),  # -B auto: text or binary per connection
            # --auth-file also checks binary SASL PLAIN (memcached: -S, through cyrus)
            ("auth_enabled_sasl", "yes" if self.settings.auth_file else "no"),
            ("auth_enabled_ascii", self.settings.auth_file or "no"),  # memcached: the path
            ("item_size_max", self.settings.max_item_size),
            ("flush_enabled", "yes"),
            ("idle_timeout", f"{self.settings.idle_timeout:g}"),
            *self._tls_settings(),
            ("max_line", self.settings.max_line),
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

    def _by_class(self) -> tuple[Counter[int], Counter[int]]:
        numbers: Counter[int] = Counter()
        requested: Counter[int] = Counter()
        for item in self.store.items.values():
            cls = slab_class(item.size)
            numbers[cls] += 1
            requested[cls] += item.size
        return numbers, requested

    def items(self) -> list[tuple[str, object]]:
        numbers, requested = self._by_class()
        pairs: list[tuple[str, object]] = []
        for cls in sorted(numbers):
            pairs += [(f"items:{cls}:number", numbers[cls]),
                      (f"items:{cls}:mem_requested", requested[cls])]
        return pairs

    def slabs(self) -> list[tuple[str, object]]:
        numbers, _ = self._by_class()
        pairs: list[tuple[str, object]] = []
        for cls in sorted(numbers):
            pairs += [(f"{cls}:chunk_size", SLAB_CHUNK_SIZES[cls - 1]),
                      (f"{cls}:used_chunks", numbers[cls])]
        pairs += [("active_slabs", len(numbers)), ("total_malloced", self.store.bytes)]
        return pairs
