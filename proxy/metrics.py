"""The proxy's Prometheus metrics, read at scrape time from the counters it already keeps.

Theory of operation: `ProxyCollector.collect` runs when `/metrics` is scraped
(netio.metrics_http, on the trio thread) and reads `ProxyStats` (commands by request type,
client errors, connections, the per-request latency histogram filled by
`ProxyStats.observe_reply`) and, through the current router, every shard and its nodes'
pools (requests, errors, timeouts, ejections, state). The request path pays only for the
histogram (one clock read, a bisect and two additions per reply); everything else was
counted already.

Names follow Prometheus conventions: `memring_proxy_..._total` counters, `_seconds`, labels
`command`, `shard`, `backend` (the node's HOST:PORT).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import get_args

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from memring.netio.metrics_http import MetricsEndpoint
from memring.netio.settings import split_address
from memring.protocol.requests import Request
from memring.proxy.state import ProxyState
from memring.proxy.stats import LATENCY_BOUNDS_S, MEMRING_VERSION

PREFIX = "memring_proxy"
REQUEST_TYPES = tuple(kind.__name__ for kind in get_args(Request))
_WORD = re.compile(r"(?<!^)(?=[A-Z])")


def command_label(request_type: str) -> str:
    """`MetaGet` -> `meta_get`: the request event's name (get covers gets/gat/gats, store
    covers set/add/replace/append/prepend/cas, arithmetic covers incr/decr)."""
    return _WORD.sub("_", request_type).lower()


class ProxyCollector(Collector):
    """Metric families for one proxy process, built from its counters at every scrape."""

    def __init__(self, state: ProxyState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        stats = self.state.stats
        commands = CounterMetricFamily(f"{PREFIX}_commands_total",
                                       "Client requests by command (request type)",
                                       labels=["command"])
        counts = dict.fromkeys(REQUEST_TYPES, 0) | stats.commands  # every type from the start
        for name, count in sorted(counts.items()):
            commands.add_metric([command_label(name)], count)
        yield commands
        yield CounterMetricFamily(f"{PREFIX}_client_errors_total",
                                  "Malformed client requests (CLIENT_ERROR / ERROR replies)",
                                  value=stats.client_errors)
        yield CounterMetricFamily(f"{PREFIX}_shard_error_misses_total",
                                  "Keys answered as misses because their shard could not "
                                  "answer (on_shard_error = miss)",
                                  value=stats.shard_error_misses)
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip(LATENCY_BOUNDS_S, stats.latency_buckets, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", cumulative + stats.latency_buckets[-1]))
        yield HistogramMetricFamily(f"{PREFIX}_request_duration_seconds",
                                    "Per request: from the read that brought it in to its "
                                    "reply being ready", buckets=buckets,
                                    sum_value=stats.latency_sum)
        conns = stats.connections
        yield GaugeMetricFamily(f"{PREFIX}_current_connections", "Open client connections",
                                value=conns.curr_connections)
        yield CounterMetricFamily(f"{PREFIX}_connections_total", "Client connections accepted",
                                  value=conns.total_connections)
        yield CounterMetricFamily(f"{PREFIX}_connections_rejected_total",
                                  "Client connections refused at the limit",
                                  value=conns.rejected_connections)
        yield CounterMetricFamily(f"{PREFIX}_idle_kicks_total",
                                  "Client connections closed by --idle-timeout",
                                  value=conns.idle_kicks)
        auth = self.state.stats.auth
        if auth is not None:  # --auth-file: memcached's auth_cmds, auth_errors
            yield CounterMetricFamily(f"{PREFIX}_auth_checks_total",
                                      "Client authentication attempts checked (auth_cmds)",
                                      value=auth.auth_cmds)
            yield CounterMetricFamily(f"{PREFIX}_auth_failures_total",
                                      "Client authentication attempts refused (auth_errors)",
                                      value=auth.auth_errors)
        if self.state.tls is not None:  # memcached's ssl_handshake_errors
            yield CounterMetricFamily(f"{PREFIX}_tls_handshake_errors_total",
                                      "Client TLS handshakes that failed or timed out",
                                      value=self.state.tls.handshake_errors)
        yield from self._topology()
        settings = self.state.settings
        info = InfoMetricFamily(PREFIX, "This proxy: versions and mode")
        info.add_metric([], {"version": stats.version, "memring_version": MEMRING_VERSION,
                             "mode": "cluster" if settings.etcd else "static",
                             "hash": settings.hash, "read_policy": settings.read_policy,
                             "on_shard_error": settings.on_shard_error})
        yield info

    def _topology(self) -> Iterator[Metric]:
        router = self.state.router
        yield GaugeMetricFamily(f"{PREFIX}_shards", "Shards on the ring",
                                value=len(router.shards))
        available = GaugeMetricFamily(f"{PREFIX}_shard_available_nodes",
                                      "Nodes of the shard that are connected and not ejected",
                                      labels=["shard"])
        leader = GaugeMetricFamily(f"{PREFIX}_shard_has_leader",
                                   "1 if the shard has a leader to write to", labels=["shard"])
        labels = ["shard", "backend"]
        requests = CounterMetricFamily(f"{PREFIX}_backend_requests_total",
                                       "Requests sent to the node", labels=labels)
        errors = CounterMetricFamily(f"{PREFIX}_backend_errors_total",
                                     "Failed requests and connections (timeouts included)",
                                     labels=labels)
        timeouts = CounterMetricFamily(f"{PREFIX}_backend_timeouts_total",
                                       "Requests that timed out", labels=labels)
        ejections = CounterMetricFamily(f"{PREFIX}_backend_ejections_total",
                                        "Times the node was ejected (TKO)", labels=labels)
        up = GaugeMetricFamily(f"{PREFIX}_backend_up",
                               "1 if the node is connected and not ejected", labels=labels)
        ejected = GaugeMetricFamily(f"{PREFIX}_backend_ejected",
                                    "1 while the node is ejected", labels=labels)
        connections = GaugeMetricFamily(f"{PREFIX}_backend_connections",
                                        "Open connections to the node", labels=labels)
        in_flight = GaugeMetricFamily(f"{PREFIX}_backend_in_flight",
                                      "Requests waiting for the node's reply", labels=labels)
        for shard in router.shards:
            available.add_metric([shard.name], sum(1 for pool in shard.nodes if pool.available))
            leader.add_metric([shard.name], 1 if shard.has_leader and shard.nodes else 0)
            for pool in shard.nodes:
                values = [shard.name, pool.address]
                counters = pool.counters
                conns = pool.connections
                requests.add_metric(values, counters.requests)
                errors.add_metric(values, counters.errors)
                timeouts.add_metric(values, counters.timeouts)
                ejections.add_metric(values, counters.ejections)
                up.add_metric(values, 1 if pool.available else 0)
                ejected.add_metric(values, 1 if pool.ejected else 0)
                connections.add_metric(values, len(conns))
                in_flight.add_metric(values, sum(c.in_flight for c in conns))
        yield from (available, leader, requests, errors, timeouts, ejections, up, ejected,
                    connections, in_flight)


def registry_for(state: ProxyState) -> CollectorRegistry:
    """A registry with this proxy's metrics and the process's (CPU, memory, fds)."""
    registry = CollectorRegistry()
    registry.register(ProxyCollector(state))
    ProcessCollector(registry=registry)
    return registry


def endpoint_for(state: ProxyState) -> MetricsEndpoint:
    """The `/metrics` endpoint on `--metrics-listen`, to run in the server's nursery."""
    host, port = split_address(state.settings.metrics_listen, listen=True)
    return MetricsEndpoint(registry_for(state), host, port)
