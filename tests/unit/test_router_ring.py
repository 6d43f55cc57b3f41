"""A new router keeps the previous one's ketama ring when the ring's servers are the same
(a leader or replica change) and builds a new one when they are not."""

from __future__ import annotations

import pytest

from memring.proxy.router import Shard, ShardRouter

pytestmark = pytest.mark.unit


def router(weights: dict[str, int], previous: ShardRouter | None = None,
           hash_name: str = "md5") -> ShardRouter:
    return ShardRouter([Shard(name, [], weight) for name, weight in weights.items()],
                       hash_name, "leader", previous=previous)


def test_a_change_that_keeps_the_shards_keeps_the_ring() -> None:
    first = router({f"s{i}": 1 for i in range(256)})
    again = router({f"s{i}": 1 for i in range(256)}, previous=first)
    assert again.ring is first.ring
    assert again.shard_for(b"some key") is not first.shard_for(b"some key")  # new shards
    assert again.shard_for(b"some key").name == first.shard_for(b"some key").name


@pytest.mark.parametrize("change", [{"s0": 2, "s1": 1}, {"s0": 1, "s1": 1, "s2": 1},
                                    {"s1": 1, "s0": 1}])
def test_other_weights_names_or_order_build_a_new_ring(change: dict[str, int]) -> None:
    first = router({"s0": 1, "s1": 1})
    assert router(change, previous=first).ring is not first.ring


def test_another_hash_builds_a_new_ring() -> None:
    first = router({"s0": 1, "s1": 1})
    other = router({"s0": 1, "s1": 1}, previous=first, hash_name="fnv1a_64")
    assert other.ring is not first.ring and other.ring is not None
    assert other.ring.hash_name == "fnv1a_64"
