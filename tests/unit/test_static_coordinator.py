"""StaticCoordinator: the Coordinator's read side over the static TOML topology file.

The view it builds must give the proxy the same shards through proxy.cluster_topology
(the cluster-mode code path) as proxy.settings gives from the same file (the static path)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from memring.cluster.coordinator import (
    ClusterConfig,
    CoordinatorError,
    Incarnation,
    Leadership,
    NodeRecord,
    ShardRecord,
)
from memring.cluster.records import ElectionHint
from memring.cluster.static_coordinator import READ_ONLY, StaticCoordinator
from memring.cluster.static_topology import read_toml
from memring.netio.settings import SettingsError
from memring.proxy.cluster_topology import settings_for, shard_specs
from memring.proxy.settings import ProxySettings, ShardSpec, load_topology, parse_shards

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]

TOPOLOGY = """
[proxy]
listen = "127.0.0.1:11211"
hash = "fnv1a_64"
read_policy = "weighted"
on_shard_error = "error"

[[shards]]
name = "s1"
nodes = ["127.0.0.1:11311", {address = "127.0.0.1:11312", weight = 3}]
weight = 2

[[shards]]
nodes = ["127.0.0.1:11313"]

[[shards]]
nodes = ["10.0.0.9:11211", "10.0.0.8:11211", "10.0.0.7:11211", "10.0.0.6:11211",
         "10.0.0.5:11211", "10.0.0.4:11211", "10.0.0.3:11211", "10.0.0.2:11211",
         "10.0.0.1:11211", "10.0.0.10:11211", "10.0.0.11:11211"]
"""


@pytest.fixture
def topology(tmp_path: Path) -> Path:
    path = tmp_path / "memring.toml"
    path.write_text(TOPOLOGY)
    return path


def by_name(shards: tuple[ShardSpec, ...]) -> dict[str, tuple[object, ...]]:
    """name -> (node addresses in order, node weights, shard weight)."""
    return {s.name: ([n.address for n in s.nodes], [n.weight for n in s.nodes], s.weight)
            for s in shards}


async def test_snapshot_matches_the_file(topology: Path) -> None:
    coord = StaticCoordinator(topology, "c1")
    view = await coord.snapshot()
    assert view.revision == 1
    assert view.config == ClusterConfig(hash="fnv1a_64", read_policy="weighted",
                                        on_shard_error="error")
    assert ClusterConfig.from_json(view.config.to_json()) == view.config
    assert list(view.shards) == sorted(["s1", "127.0.0.1:11313", "10.0.0.9"])
    s1 = view.shards["s1"]
    assert s1.record == ShardRecord("s1", ("s1-1", "s1-2"), 2)
    assert s1.leader is not None and s1.leader.node_id == "s1-1"
    assert s1.leader.address == "127.0.0.1:11311" and s1.leader.lease_id == 0
    assert s1.epoch == 0 and s1.isr is None
    assert view.nodes["s1-2"] == NodeRecord("s1-2", "127.0.0.1:11312", "s1", weight=3)
    assert view.nodes["127.0.0.1:11313-1"].shard == "127.0.0.1:11313"
    assert view.proxies == {}
    # the generic read side works over it too
    assert await coord.get_config() == view.config
    assert [r.shard_id for r in await coord.list_shards()] == list(view.shards)
    assert await coord.shard_of("s1-2") == "s1"
    await coord.aclose()


@pytest.mark.parametrize("path", [None, REPO / "etc" / "memring.toml"])
async def test_cluster_path_routes_like_the_static_path(topology: Path,
                                                        path: Path | None) -> None:
    """shard_specs(view) == parse_shards(file): names, node addresses in order, weights."""
    path = path or topology
    view = await StaticCoordinator(path).snapshot()
    from_view = shard_specs(view)
    from_file = parse_shards(read_toml(path)["shards"])
    assert by_name(from_view) == by_name(from_file)
    assert all(s.has_leader for s in from_view)
    static = load_topology(ProxySettings(config=str(path)))
    cluster = settings_for(static, view)
    assert (cluster.hash, cluster.read_policy, cluster.on_shard_error) == \
        (static.hash, static.read_policy, static.on_shard_error)
    assert by_name(cluster.shards) == by_name(static.shards)


async def test_reload_sends_a_new_view_to_followers(topology: Path) -> None:
    coord = StaticCoordinator(topology)
    with trio.fail_after(5):
        async with coord.follow() as views:
            first = await views.receive()
            assert first.revision == 1 and "s3" not in first.shards
            topology.write_text(TOPOLOGY.replace('hash = "fnv1a_64"', 'hash = "md5"')
                                + '\n[[shards]]\nname = "s3"\nnodes = ["127.0.0.1:11400"]\n')
            returned = coord.reload()
            second = await views.receive()
            assert second is returned and second.revision == 2
            assert second.config is not None and second.config.hash == "md5"
            assert [s.nodes[0].address for s in shard_specs(second)
                    if s.name == "s3"] == ["127.0.0.1:11400"]
            assert await coord.snapshot() is second


@pytest.mark.parametrize("broken", [
    "[[shards]\n",                                     # bad TOML
    "[[shards]]\nnodes = []\n",                        # no nodes
    "[[shards]]\nnodes = [\"no-port\"]\n",             # bad address
    "[proxy]\nhash = \"crc32\"\n[[shards]]\nnodes = [\"127.0.0.1:1\"]\n",  # bad hash
    None,                                              # file removed
])
async def test_a_broken_file_keeps_the_last_view(topology: Path, broken: str | None,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    coord = StaticCoordinator(topology)
    async with coord.follow() as views:
        first = await views.receive()
        if broken is None:
            topology.unlink()
        else:
            topology.write_text(broken)
        with pytest.raises(SettingsError, match=str(topology.name)):
            coord.reload()
        assert await coord.snapshot() is first
        assert "keeping the last view" in caplog.text
        with pytest.raises(trio.WouldBlock):
            views.receive_nowait()  # followers see nothing


def test_a_broken_file_at_start_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read config"):
        StaticCoordinator(tmp_path / "missing.toml")


async def test_write_operations_are_refused(topology: Path) -> None:
    coord = StaticCoordinator(topology)
    leadership = Leadership("s1", "s1-1", 0, 0)
    calls = [
        lambda: coord.put_config(ClusterConfig()),
        lambda: coord.add_shard(ShardRecord("s9")),
        lambda: coord.ensure_shard("s9", member="n"),
        lambda: coord.remove_shard("s1"),
        lambda: coord.resign(leadership),
        lambda: coord.update_isr(leadership, [Incarnation("s1-1", 0)]),
        lambda: coord.drain_node("s1-1"),
        lambda: coord.remove_node("s1-1"),
        lambda: coord.put_hint("s1", ElectionHint("x"), 1.0),
        lambda: coord.revoke(1),
    ]
    for call in calls:
        with pytest.raises(CoordinatorError, match="use --etcd"):
            await call()
    with pytest.raises(CoordinatorError, match="use --etcd"):
        async with coord.open_session(2.0):
            pass  # pragma: no cover
    with pytest.raises(CoordinatorError, match="use --etcd"):
        async with coord.open_session(2.0, resume=7):
            pass  # pragma: no cover
    with pytest.raises(CoordinatorError):
        async with coord.watch(2):
            pass  # pragma: no cover
    assert READ_ONLY == "static topology: no elections or membership; use --etcd"
    assert (await coord.snapshot()).revision == 1  # nothing changed
