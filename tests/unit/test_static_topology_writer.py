"""`shards_toml` writes tables that `parse_shards` reads back as the same shards."""

from __future__ import annotations

import tomllib

import pytest

from memring.cluster.static_topology import NodeSpec, ShardSpec, parse_shards, shards_toml

pytestmark = pytest.mark.unit


def test_a_big_topology_round_trips() -> None:
    shards = tuple(ShardSpec(f"s{i}", tuple(NodeSpec("127.0.0.1", 20000 + 3 * i + r)
                                            for r in range(3)), 1 + i % 3)
                   for i in range(256))
    assert parse_shards(tomllib.loads(shards_toml(shards))["shards"]) == shards


def test_weights_and_awkward_names_round_trip() -> None:
    shards = (ShardSpec('a "quoted"\\ name\t', (NodeSpec("10.0.0.1", 11211, 3),
                                                 NodeSpec("::1", 11212))),
              ShardSpec("é", (NodeSpec("cache.example", 1),), 7))
    assert parse_shards(tomllib.loads(shards_toml(shards))["shards"]) == shards
