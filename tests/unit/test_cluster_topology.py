"""The proxy's topology and `memring status` from one ClusterView (no etcd: a view built from
entries as etcd would report them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio

from memring.cluster.coordinator import (
    AccessDenied,
    ClusterConfig,
    ClusterView,
    CoordinatorUnavailable,
    Incarnation,
    IsrRecord,
    LeaderRecord,
    NodeRecord,
    ProxyRecord,
    ShardRecord,
)
from memring.cluster.keyspace import Entry, Keyspace
from memring.cluster.status import healthy, status_doc
from memring.proxy.cluster_topology import ClusterTopology, settings_for, shard_specs
from memring.proxy.leader_claims import LeaderClaims
from memring.proxy.settings import ProxySettings

pytestmark = pytest.mark.unit

KS = Keyspace("c")


def view(*items: tuple[str, bytes, int]) -> ClusterView:
    """Entries (key, value, lease), created in order (the revision is the position)."""
    entries = {key: Entry(key, value, rev, rev, 1, lease)
               for rev, (key, value, lease) in enumerate(items, start=1)}
    return ClusterView.build(KS, len(items), entries)


def node(node_id: str, shard: str, port: int, lease: int) -> tuple[str, bytes, int]:
    return (KS.node(node_id), NodeRecord(node_id, f"127.0.0.1:{port}", shard).to_json(), lease)


def three_shards() -> ClusterView:
    return view(
        (KS.shard("s2"), ShardRecord("s2", ("b1", "b2"), 2).to_json(), 0),
        (KS.shard("s1"), ShardRecord("s1", ("a1", "a2")).to_json(), 0),
        (KS.shard("s3"), ShardRecord("s3", ("c1",)).to_json(), 0),
        node("a1", "s1", 1001, 11), node("a2", "s1", 1002, 12),
        node("b1", "s2", 2001, 21), node("b2", "s2", 2002, 22),
        (KS.leader("s1"), LeaderRecord("a2", "127.0.0.1:1002", 12).to_json(), 12),
        (KS.isr("s1"), IsrRecord((Incarnation("a1", 11), Incarnation("a2", 12))).to_json(), 0),
        (KS.proxy("p1"), ProxyRecord("p1", "127.0.0.1:11211").to_json(), 99),
        (KS.config(), ClusterConfig(hash="fnv1a_64", read_policy="round_robin").to_json(), 0),
    )


def test_shards_sorted_leader_first_dead_shard_kept() -> None:
    specs = shard_specs(three_shards())
    assert [s.name for s in specs] == ["s1", "s2", "s3"]
    s1, s2, s3 = specs
    assert [n.port for n in s1.nodes] == [1002, 1001] and s1.has_leader  # the leader first
    assert [n.port for n in s2.nodes] == [2001, 2002] and not s2.has_leader  # an election
    assert s2.weight == 2
    assert s3.nodes == () and not s3.has_leader  # no live node: stays on the ring


def test_followers_out_of_the_isr_serve_no_reads() -> None:
    restarted = view(  # a1 restarted (lease 13): the ISR still names its old life, lease 11
        (KS.shard("s1"), ShardRecord("s1", ("a1", "a2", "a3")).to_json(), 0),
        node("a1", "s1", 1001, 13), node("a2", "s1", 1002, 12), node("a3", "s1", 1003, 14),
        (KS.leader("s1"), LeaderRecord("a2", "127.0.0.1:1002", 12).to_json(), 12),
        (KS.isr("s1"), IsrRecord((Incarnation("a1", 11), Incarnation("a2", 12),
                                  Incarnation("a3", 14))).to_json(), 0))
    (s1,) = shard_specs(restarted)
    assert [n.port for n in s1.nodes] == [1002, 1003]  # the leader, then in-sync a3 only


def test_config_sets_hash_and_read_policy() -> None:
    settings = settings_for(ProxySettings(etcd="http://127.0.0.1:2379"), three_shards())
    assert (settings.hash, settings.read_policy) == ("fnv1a_64", "round_robin")


def test_backend_tls_applies_to_every_node_from_etcd() -> None:
    base = ProxySettings(etcd="http://127.0.0.1:2379", backend_tls=True, backend_tls_ca="ca.crt",
                         backend_tls_cert="proxy.crt", backend_tls_key="proxy.key")
    settings = settings_for(base, three_shards())
    assert settings.shards and settings.backend_tls_settings == base.backend_tls_settings


@dataclass
class _RecordingServer:
    """What ClusterTopology.follow uses of a ProxyServer: the routing applied, in order."""

    state: Any
    applied: list[ProxySettings] = field(default_factory=list)

    def apply_topology(self, settings: ProxySettings) -> None:
        self.applied.append(settings)
        self.state.settings = settings


class _QueuedViews:
    """A coordinator whose `follow()` holds `views` already waiting, then ends."""

    def __init__(self, views: list[ClusterView]) -> None:
        self.views = views

    @asynccontextmanager
    async def follow(self, *, check_interval: float = 0.0
                     ) -> AsyncIterator[trio.MemoryReceiveChannel[ClusterView]]:
        send, receive = trio.open_memory_channel[ClusterView](len(self.views))
        for v in self.views:
            send.send_nowait(v)
        send.close()
        yield receive


class _Snapshots:
    """A coordinator whose `snapshot()` raises or returns each of `outcomes` in turn."""

    def __init__(self, *outcomes: ClusterView | Exception) -> None:
        self.outcomes = list(outcomes)
        self.asked = 0

    async def snapshot(self) -> ClusterView:
        self.asked += 1
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


async def test_the_first_view_waits_for_etcd_but_not_past_a_refusal() -> None:
    """An etcd not answering yet is asked again (backoff from 0.1 s); a refusal ends the wait
    at once: before, a proxy with a wrong password retried it for good, saying only so in
    its log."""
    base = ProxySettings(etcd="http://127.0.0.1:2379")
    first = three_shards()
    down = CoordinatorUnavailable("etcd at http://127.0.0.1:2379 refused within 1s")
    etcd = _Snapshots(down, down, first)
    with trio.fail_after(5):
        assert await ClusterTopology(etcd, base).first_view() is first  # type: ignore[arg-type]
    assert etcd.asked == 3
    refused = AccessDenied("etcd at http://127.0.0.1:2379 refused user 'memring'")
    etcd = _Snapshots(down, refused, first)
    with trio.fail_after(5), pytest.raises(AccessDenied, match="refused user 'memring'"):
        await ClusterTopology(etcd, base).first_view()  # type: ignore[arg-type]
    assert etcd.asked == 2


async def test_the_proxy_routes_by_the_newest_of_the_views_waiting() -> None:
    """Views that queued while the proxy was busy (a failover storm: a view per leader, node
    and ISR change) cost one router build, by the newest; before, one build each (three)."""
    first = three_shards()
    moved = view(*[(e.key, e.value, e.lease) for e in sorted(
        first.entries.values(), key=lambda e: e.create_revision) if e.key != KS.leader("s1")],
        (KS.leader("s1"), LeaderRecord("a1", "127.0.0.1:1001", 11).to_json(), 11))
    gone = view(*[(e.key, e.value, e.lease) for e in sorted(
        moved.entries.values(), key=lambda e: e.create_revision) if e.key != KS.node("a2")])
    base = ProxySettings(etcd="http://127.0.0.1:2379")
    server = _RecordingServer(state=type("State", (), {"settings": settings_for(base, first),
                                                       "claims": LeaderClaims()})())
    topology = ClusterTopology(_QueuedViews([first, moved, gone]), base)  # type: ignore[arg-type]
    await topology.follow(server)  # type: ignore[arg-type]
    assert len(server.applied) == 1 and topology.view is gone
    (s1, _, _) = server.applied[0].shards
    assert [n.port for n in s1.nodes] == [1001]  # a1 leads, a2 is gone


def test_status_doc() -> None:
    doc = status_doc(three_shards())
    assert doc["cluster"] == "c"
    s1, s2, s3 = doc["shards"]
    assert (s1["leader"], s1["isr"], s1["epoch"]) == ("a2", ["a1", "a2"], 8)
    assert [(n["id"], n["role"], n["in_sync"]) for n in s1["nodes"]] == [
        ("a1", "follower", True), ("a2", "leader", True)]
    assert [n["role"] for n in s2["nodes"]] == ["syncing", "syncing"]
    assert [(n["id"], n["alive"], n["role"]) for n in s3["nodes"]] == [("c1", False, "down")]
    assert doc["proxies"] == [{"id": "p1", "address": "127.0.0.1:11211"}]
    assert not healthy(doc)


def test_status_doc_with_node_stats_lag_ops_and_rates() -> None:
    from memring.cluster.status import render_table, with_rates

    leader = {"memring_repl_lag_seq:a1": "12", "memring_repl_lag_s:a1": "0.250",
              "cmd_get": "30", "cmd_set": "10", "get_hits": "24", "get_misses": "6"}
    stats: dict[str, dict[str, str] | None] = {
        "127.0.0.1:1002": leader, "127.0.0.1:1001": {"cmd_get": "10", "get_hits": "6",
                                                     "get_misses": "4"},
        "127.0.0.1:2001": None, "127.0.0.1:11211": {"curr_connections": "7"}}
    first = status_doc(three_shards(), stats)
    s1, s2, _ = first["shards"]
    a1, a2 = s1["nodes"]
    assert (a1["lag_seq"], a1["lag_s"], a1["answers"]) == (12, 0.25, True)
    assert (a2["lag_seq"], a2["lag_s"]) == (0, 0.0)  # the leader
    assert (s1["ops"], s1["hit_ratio"]) == (50, 0.75)
    assert s2["nodes"][0]["answers"] is False and s2["nodes"][0]["lag_seq"] == -1
    assert first["proxies"][0]["connections"] == 7
    leader["cmd_get"] = "130"
    second = with_rates(status_doc(three_shards(), stats), first, 2.0)
    assert second["shards"][0]["ops_per_s"] == 50.0
    table = render_table(second)
    assert "OPS/S" in table and "12 / 0.250s" in table and "(no answer)" in table
