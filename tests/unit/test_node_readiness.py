"""`memring node ready`'s verdict on cluster views built by hand (cluster.cli._readiness): the
cases a live cluster shows only in a race, such as a restarted node whose previous
incarnation still holds the leader key. tests/integration/test_node_readiness.py runs the
command against real etcd and backends."""

from __future__ import annotations

import pytest

from memring.cluster.cli import _readiness
from memring.cluster.keyspace import Entry, Keyspace
from memring.cluster.records import (
    ClusterView,
    Incarnation,
    IsrRecord,
    LeaderRecord,
    NodeRecord,
    ShardRecord,
)

pytestmark = pytest.mark.unit

KEYSPACE = Keyspace("k8s")


def view(nodes: dict[str, int], leader: tuple[str, int] | None,
         isr: list[tuple[str, int]] | None) -> ClusterView:
    """Shard s1 with `nodes` ({node id: its lease}), the leader key (node, lease) and ISR."""
    entries: dict[str, Entry] = {}

    def put(key: str, value: bytes, lease: int = 0) -> None:
        revision = len(entries) + 1
        entries[key] = Entry(key, value, revision, revision, 1, lease)

    put(KEYSPACE.shard("s1"), ShardRecord("s1", tuple(nodes), 1).to_json())
    for node, lease in nodes.items():
        put(KEYSPACE.node(node), NodeRecord(node, f"{node}:11211", "s1").to_json(), lease)
    if leader is not None:
        put(KEYSPACE.leader("s1"), LeaderRecord(leader[0], f"{leader[0]}:11211",
                                                leader[1]).to_json(), leader[1])
    if isr is not None:
        put(KEYSPACE.isr("s1"), IsrRecord(tuple(Incarnation(*m) for m in isr)).to_json())
    return ClusterView.build(KEYSPACE, len(entries), entries)


def test_the_leader_and_its_in_sync_followers_are_ready() -> None:
    cluster = view({"a": 1, "b": 2, "c": 3}, ("a", 1), [("a", 1), ("b", 2)])
    assert _readiness(cluster, "a") is None
    assert _readiness(cluster, "b") is None
    assert _readiness(cluster, "c") == \
        "c is not in sync with a, the leader of shard s1 (catching up)"


def test_an_unregistered_node_or_a_shard_without_leader_is_not_ready() -> None:
    cluster = view({"a": 1}, None, None)
    assert _readiness(cluster, "z") == \
        "z is not registered (not started, or its lease expired)"
    assert _readiness(cluster, "a") == "shard s1 has no leader"


def test_a_restarted_node_is_not_ready_while_its_previous_incarnation_leads() -> None:
    # `a` was killed and started again (lease 9); its old leader key (lease 1) has not
    # expired yet, and the ISR names the old incarnation: the new one holds no data
    cluster = view({"a": 9, "b": 2}, ("a", 1), [("a", 1), ("b", 2)])
    assert _readiness(cluster, "a") == ("a is not in sync with a (its previous incarnation), "
                                        "the leader of shard s1 (catching up)")
    assert _readiness(cluster, "b") is None


def test_a_follower_restarted_is_not_ready_until_its_new_incarnation_is_in_sync() -> None:
    cluster = view({"a": 1, "b": 7}, ("a", 1), [("a", 1), ("b", 2)])
    assert _readiness(cluster, "b") is not None
    assert _readiness(view({"a": 1, "b": 7}, ("a", 1), [("a", 1), ("b", 7)]), "b") is None
