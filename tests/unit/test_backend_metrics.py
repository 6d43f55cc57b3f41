"""The backend's Prometheus collector turns `stats` pairs into metric families: per-follower
replication figures (`memring_repl_lag_s:<node>`) become one family labelled by follower, not
one metric name per node."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from memring.backend.commands import CommandHandler
from memring.backend.metrics import registry_for
from memring.backend.settings import BackendSettings
from memring.backend.stats import ServerCounters, StatsReport
from memring.backend.store import Store
from memring.cluster.certificates import CertificateAuthority
from memring.netio.tls import ServerTls, TlsSettings

pytestmark = pytest.mark.unit


class LeaderFence:
    def refusal(self) -> bytes | None:
        return None

    def read_refusal(self) -> bytes | None:
        return None

    def role_stats(self) -> list[tuple[str, object]]:
        return [("memring_role", "leader"), ("memring_shard", "s1"), ("memring_node_id", "n1"),
                ("memring_epoch", 7), ("memring_replication", "sync"),
                ("memring_repl_position", "7:42"), ("memring_repl_isr", "n1,n2"),
                ("memring_repl_isr_shrinks", 2), ("memring_repl_lag_seq:n2", 3),
                ("memring_repl_lag_s:n2", "0.125"), ("memring_repl_lag_seq:n3", 40),
                ("memring_repl_lag_s:n3", "1.500")]


def test_follower_lag_is_labelled_by_follower() -> None:
    store = Store()
    settings = BackendSettings()
    handler = CommandHandler(store, StatsReport(settings, store, ServerCounters()),
                             LeaderFence())
    text = generate_latest(registry_for(handler)).decode()
    assert 'memring_backend_repl_lag_seq{follower="n2"} 3.0' in text
    assert 'memring_backend_repl_lag_s{follower="n3"} 1.5' in text
    assert "memring_backend_repl_isr_shrinks 2.0" in text
    assert "memring_backend_repl_position_seq 42.0" in text
    assert 'memring_backend_role{role="leader"} 1.0' in text
    assert "n2 " not in text.replace('"n2"', "")  # no metric name carries a node id


def test_tls_handshake_errors_only_with_tls(private_ca: CertificateAuthority) -> None:
    store = Store()
    report = StatsReport(BackendSettings(), store, ServerCounters())
    handler = CommandHandler(store, report)
    assert "tls_handshake_errors" not in generate_latest(registry_for(handler)).decode()
    cert = private_ca.issue("metrics")
    report.tls = ServerTls(TlsSettings(cert=str(cert.cert), key=str(cert.key)))
    report.tls.handshake_errors = 3
    text = generate_latest(registry_for(CommandHandler(store, report))).decode()
    assert "memring_backend_tls_handshake_errors_total 3.0" in text


def test_store_bytes_beside_memcached_bytes() -> None:
    """/metrics and `stats` show memcached's item sizes and what the items cost the process."""
    store = Store()
    for i in range(100):
        store.store(b"set", b"k%d" % i, b"v" * 100, 0, 0)
    report = StatsReport(BackendSettings(), store, ServerCounters())
    text = generate_latest(registry_for(CommandHandler(store, report))).decode()
    assert f"memring_backend_memory_used_bytes {float(store.bytes)}" in text
    assert f"memring_backend_store_bytes {float(store.store_bytes)}" in text
    assert store.store_bytes > store.bytes > 0
    pairs = dict(report.general())
    assert pairs["bytes"] == store.bytes
    assert pairs["memring_store_bytes"] == store.store_bytes
