"""The proxy's own counters and its `stats` reply (a client talks to one memcached)."""

from __future__ import annotations

import os
import resource
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable
from typing import Final

from memring.netio.connection_server import ConnectionCounters
from memring.netio.tls import ServerTls
from memring.protocol.ascii_auth import Authenticator
from memring.proxy.buffer_budget import BufferBudget
from memring.proxy.pool import NodePool

MEMRING_VERSION = "0.1.0"
# Request latency histogram bounds in microseconds (the last bucket is open-ended): from the
# read that brought a request in to its reply being ready to send, counted per request.
LATENCY_BUCKETS_US = (50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 100000, 250000,
                      1000000)
LATENCY_BOUNDS_S: Final = tuple(us / 1e6 for us in LATENCY_BUCKETS_US)
# Final: native statics for the per-reply call, not a module-dict (or module attribute)
# lookup each
_bisect_left: Final = bisect_left
_perf_counter: Final = time.perf_counter


class ProxyStats:
    def __init__(self, version: str) -> None:
        self.version = version
        self.started = time.time()
        self.connections = ConnectionCounters()
        self.commands: Counter[str] = Counter()
        self.errors = 0            # SERVER_ERROR replies the proxy made (backend trouble)
        self.client_errors = 0     # bad input from clients
        self.shard_error_misses = 0  # keys answered as misses: their shard could not answer
        self.latency_buckets = [0] * (len(LATENCY_BUCKETS_US) + 1)  # per bucket, not cumulative
        self.latency_sum = 0.0  # seconds
        self.auth: Authenticator | None = None  # --auth-file: its auth_cmds, auth_errors
        # how it reaches its backends, for `memring status`: memring_backend_tls off | require
        # | none (--backend-tls-verify), memring_backend_auth yes | no (--backend-auth-file)
        self.backend_tls = "off"
        self.backend_auth = False
        self.detail = False  # `stats detail on|off` (the proxy keeps no per-prefix figures)

    def observe_reply(self, started: float) -> None:
        """A reply is ready: count its latency since `started` (a perf_counter reading)."""
        elapsed = _perf_counter() - started
        self.latency_sum += elapsed
        self.latency_buckets[_bisect_left(LATENCY_BOUNDS_S, elapsed)] += 1

    @property
    def latency_count(self) -> int:
        return sum(self.latency_buckets)

    def reply(self, args: list[bytes], pools: Iterable[NodePool],
              buffers: BufferBudget | None = None, tls: ServerTls | None = None) -> bytes:
        if args == [b"reset"]:
            self.reset(tls)
            return b"RESET\r\n"
        if args and args != [b"proxy"]:
            return b"ERROR\r\n"
        return self._lines(self.general(pools, buffers, tls))

    def reset(self, tls: ServerTls | None = None) -> None:
        """`stats reset`: the proxy's counters (the leaders reset their own)."""
        if tls is not None:
            tls.handshake_errors = 0  # as memcached's stats reset
        self.commands.clear()
        self.errors = self.client_errors = self.shard_error_misses = 0
        self.latency_buckets[:] = [0] * len(self.latency_buckets)
        self.latency_sum = 0.0
        if self.auth is not None:
            self.auth.reset()

    @staticmethod
    def _lines(pairs: list[tuple[str, object]]) -> bytes:
        return b"".join(b"STAT %s %s\r\n" % (k.encode(), str(v).encode())
                        for k, v in pairs) + b"END\r\n"

    def general(self, pools: Iterable[NodePool], buffers: BufferBudget | None = None,
                tls: ServerTls | None = None) -> list[tuple[str, object]]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        now = time.time()
        pairs: list[tuple[str, object]] = [
            ("pid", os.getpid()),
            ("uptime", int(now - self.started)),
            ("time", int(now)),
            ("version", self.version),
            ("memring_version", MEMRING_VERSION),
            ("memring_role", "proxy"),
            ("memring_backend_tls", self.backend_tls),
            ("memring_backend_auth", "yes" if self.backend_auth else "no"),
            ("rusage_user", f"{usage.ru_utime:.6f}"),
            ("rusage_system", f"{usage.ru_stime:.6f}"),
            ("curr_connections", self.connections.curr_connections),
            ("total_connections", self.connections.total_connections),
            ("rejected_connections", self.connections.rejected_connections),
            ("idle_kicks", self.connections.idle_kicks),
            ("proxy_errors", self.errors),
            ("client_errors", self.client_errors),
            ("shard_error_misses", self.shard_error_misses),
        ]
        if self.auth is not None:
            pairs += [("auth_cmds", self.auth.auth_cmds), ("auth_errors", self.auth.auth_errors)]
        if tls is not None:  # as memcached -Z: the proxy's own client listeners
            pairs += [("ssl_handshake_errors", tls.handshake_errors),
                      ("time_since_server_cert_refresh", tls.time_since_refresh)]
        if buffers is not None:  # client data held: partial requests, replies waiting
            pairs += [("buffered_bytes", buffers.used),
                      ("buffered_bytes_peak", buffers.peak),
                      ("max_buffered_bytes", buffers.limit),
                      ("buffer_refusals", buffers.refusals)]
        pairs += [(f"cmd_{name}", count) for name, count in sorted(self.commands.items())]
        pairs.append(("request_latency_us_count", self.latency_count))
        pairs.append(("request_latency_us_sum", f"{self.latency_sum * 1e6:.0f}"))
        for bound, count in zip(LATENCY_BUCKETS_US, self.latency_buckets, strict=False):
            pairs.append((f"request_latency_us_le_{bound}", count))
        pairs.append(("request_latency_us_le_inf", self.latency_buckets[-1]))
        for pool in pools:
            prefix = f"backend:{pool.address}"
            conns = pool.connections
            pairs += [
                # up: in rotation, connected or dormant (connects on its next request)
                (f"{prefix}:state", "ejected" if pool.ejected else
                 ("up" if conns or pool.dormant else "down")),
                (f"{prefix}:requests", pool.counters.requests),
                (f"{prefix}:errors", pool.counters.errors),
                (f"{prefix}:timeouts", pool.counters.timeouts),
                (f"{prefix}:ejections", pool.counters.ejections),
                (f"{prefix}:cuts", pool.counters.cuts),
                (f"{prefix}:resent", pool.counters.resent),
                (f"{prefix}:connections", len(conns)),
                (f"{prefix}:in_flight", sum(c.in_flight for c in conns)),
                (f"{prefix}:max_in_flight", max((c.max_in_flight for c in conns), default=0)),
            ]
        return pairs
