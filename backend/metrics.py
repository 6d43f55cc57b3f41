"""The backend's Prometheus metrics, read at scrape time from the counters it already keeps.

Theory of operation: nothing on the request path changes. `BackendCollector.collect` runs when
`/metrics` is scraped (netio.metrics_http, on the trio thread) and turns the `stats` figures
into metric families: the store's counters (backend.store.StoreStats), the connection counters
(backend.stats.ServerCounters), the store's size, and the `memring_*` pairs of the write fence
(`CommandHandler.fence.role_stats()`: role, epoch, and with replication every
`memring_repl_*` figure). Unknown numeric `memring_*` pairs become gauges by name, so new
replication figures show up without a change here. A new leader always has a new epoch, so
`changes(memring_backend_epoch[1h])` counts leader changes.

Names follow Prometheus conventions: `memring_backend_..._total` counters, `_bytes`, labels
`command` and `result` (`memring_backend_commands_total{command="get",result="hit"}`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from memring.backend.commands import STANDALONE_STATS, CommandHandler
from memring.backend.settings import BackendSettings
from memring.backend.stats import MEMRING_VERSION
from memring.netio.metrics_http import MetricsEndpoint
from memring.netio.settings import split_address
from memring.protocol.replication import parse_position

PREFIX = "memring_backend"
ROLES = ("standalone", "leader", "follower", "syncing")
# (command, result, StoreStats field): the partition of commands by outcome, as
# memcached_exporter's memcached_commands_total; `set` counts every storage command.
COMMAND_RESULTS = (
    ("get", "hit", "get_hits"), ("get", "miss", "get_misses"),
    ("set", "processed", "cmd_set"),
    ("delete", "hit", "delete_hits"), ("delete", "miss", "delete_misses"),
    ("incr", "hit", "incr_hits"), ("incr", "miss", "incr_misses"),
    ("decr", "hit", "decr_hits"), ("decr", "miss", "decr_misses"),
    ("touch", "hit", "touch_hits"), ("touch", "miss", "touch_misses"),
    ("cas", "hit", "cas_hits"), ("cas", "miss", "cas_misses"), ("cas", "badval", "cas_badval"),
    ("flush", "processed", "cmd_flush"), ("meta", "processed", "cmd_meta"),
)
# (metric name without prefix, StoreStats field, help)
STORE_COUNTERS = (
    ("get_expired_total", "get_expired", "gets that found an expired item (counted as misses)"),
    ("get_flushed_total", "get_flushed", "gets that found a flushed item (counted as misses)"),
    ("items_stored_total", "total_items", "items stored"),
    ("evictions_total", "evictions", "items evicted by the memory limit (LRU)"),
    ("evicted_unfetched_total", "evicted_unfetched", "evicted items never read"),
    ("expired_unfetched_total", "expired_unfetched", "expired items never read"),
    ("reclaimed_total", "reclaimed", "entries reused from expired items"),
)
_NAME = re.compile(r"[^a-zA-Z0-9_]")


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


class BackendCollector(Collector):
    """Metric families for one backend, built from its counters at every scrape."""

    def __init__(self, handler: CommandHandler) -> None:
        self.handler = handler

    def collect(self) -> Iterator[Metric]:
        seen: set[str] = set()
        for metric in (*self._store_metrics(), *self._role_metrics()):
            if metric.name not in seen:  # a generic memring_* name never shadows a fixed one
                seen.add(metric.name)
                yield metric

    def _store_metrics(self) -> Iterator[Metric]:
        report = self.handler.stats
        store = report.store
        s = store.stats
        c = report.counters
        commands = CounterMetricFamily(
            f"{PREFIX}_commands_total", "Commands by outcome (set: every storage command)",
            labels=["command", "result"])
        for command, result, field in COMMAND_RESULTS:
            commands.add_metric([command, result], getattr(s, field))
        yield commands
        for name, field, text in STORE_COUNTERS:
            yield CounterMetricFamily(f"{PREFIX}_{name}", text, value=getattr(s, field))
        failures = CounterMetricFamily(f"{PREFIX}_store_failures_total",
                                       "Storage commands refused", labels=["reason"])
        failures.add_metric(["too_large"], s.store_too_large)
        failures.add_metric(["no_memory"], s.store_no_memory)
        yield failures
        yield GaugeMetricFamily(f"{PREFIX}_items", "Items in the store", value=len(store.items))
        yield GaugeMetricFamily(f"{PREFIX}_memory_used_bytes",
                                "Item memory in use (memcached's item size)", value=store.bytes)
        yield GaugeMetricFamily(f"{PREFIX}_store_bytes",
                                "What the items cost the process (keys, records, index): "
                                "what the limit bounds", value=store.store_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_memory_limit_bytes", "Item memory limit",
                                value=store.memory_limit)
        yield GaugeMetricFamily(f"{PREFIX}_current_connections", "Open client connections",
                                value=c.curr_connections)
        yield CounterMetricFamily(f"{PREFIX}_connections_total",
                                  "Client connections accepted (memcached counts the "
                                  "listener too)", value=c.total_connections)
        yield CounterMetricFamily(f"{PREFIX}_connections_rejected_total",
                                  "Connections refused at the limit",
                                  value=c.rejected_connections)
        yield CounterMetricFamily(f"{PREFIX}_idle_kicks_total",
                                  "Connections closed by --idle-timeout",
                                  value=c.idle_kicks)
        if report.tls is not None:  # memcached's ssl_handshake_errors
            yield CounterMetricFamily(f"{PREFIX}_tls_handshake_errors_total",
                                      "TLS handshakes that failed or timed out",
                                      value=report.tls.handshake_errors)
        yield GaugeMetricFamily(f"{PREFIX}_max_connections", "Connection limit",
                                value=report.settings.max_connections)
        auth = report.auth
        if auth is not None:  # --auth-file: memcached's auth_cmds, auth_errors
            yield CounterMetricFamily(f"{PREFIX}_auth_checks_total",
                                      "Authentication attempts checked (auth_cmds)",
                                      value=auth.auth_cmds)
            yield CounterMetricFamily(f"{PREFIX}_auth_failures_total",
                                      "Authentication attempts refused (auth_errors)",
                                      value=auth.auth_errors)
        yield CounterMetricFamily(f"{PREFIX}_read_bytes_total", "Bytes read from clients",
                                  value=c.bytes_read)
        yield CounterMetricFamily(f"{PREFIX}_written_bytes_total", "Bytes sent to clients",
                                  value=c.bytes_written)

    def _role_metrics(self) -> Iterator[Metric]:
        fence = self.handler.fence
        pairs = fence.role_stats() if fence is not None else STANDALONE_STATS
        labels = {"version": self.handler.stats.settings.version,
                  "memring_version": MEMRING_VERSION}
        role = "standalone"
        per_follower: dict[str, list[tuple[str, float]]] = {}
        for key, value in pairs:
            name = key.removeprefix("memring_")
            number = _number(value)
            if ":" in name and number is not None:  # memring_repl_lag_s:<node id>
                base, _, follower = name.partition(":")
                per_follower.setdefault(base, []).append((follower, number))
            elif key == "memring_role":
                role = str(value)
            elif key == "memring_epoch" and number is not None:
                yield GaugeMetricFamily(f"{PREFIX}_epoch", "Epoch of the shard's leader as "
                                        "this node last saw it (0: none); a new leader has a "
                                        "new epoch", value=number)
            elif number is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{_NAME.sub('_', name)}",
                                        f"stats {key}", value=number)
            elif (position := parse_position(str(value))) is not None:
                base = f"{PREFIX}_{_NAME.sub('_', name)}"
                yield GaugeMetricFamily(f"{base}_epoch", f"stats {key} (epoch)",
                                        value=position.epoch)
                yield GaugeMetricFamily(f"{base}_seq", f"stats {key} (sequence)",
                                        value=position.seq)
            else:
                labels[_NAME.sub("_", name)] = str(value)
        for base, values in per_follower.items():
            family = GaugeMetricFamily(f"{PREFIX}_{_NAME.sub('_', base)}",
                                       f"stats memring_{base}:<follower> (leader only)",
                                       labels=["follower"])
            for follower, number in values:
                family.add_metric([follower], number)
            yield family
        roles = GaugeMetricFamily(f"{PREFIX}_role", "1 for this node's current role",
                                  labels=["role"])
        for known in (*ROLES, *([role] if role not in ROLES else [])):
            roles.add_metric([known], 1 if known == role else 0)
        yield roles
        info = InfoMetricFamily(PREFIX, "This node: versions, shard, node id, replication mode")
        info.add_metric([], labels)
        yield info


def registry_for(handler: CommandHandler) -> CollectorRegistry:
    """A registry with this backend's metrics and the process's (CPU, memory, fds)."""
    registry = CollectorRegistry()
    registry.register(BackendCollector(handler))
    ProcessCollector(registry=registry)
    return registry


def endpoint_for(settings: BackendSettings, handler: CommandHandler) -> MetricsEndpoint:
    """The `/metrics` endpoint on `--metrics-listen`, to run in the server's nursery."""
    host, port = split_address(settings.metrics_listen, listen=True)
    return MetricsEndpoint(registry_for(handler), host, port)
