"""KetamaRing against the real twemproxy: Debian's nutcracker in front of real memcacheds.

Keys are stored through nutcracker (`distribution: ketama`); then every memcached is asked
directly, with a `get` of all the keys, which of them it holds. Each key must sit on exactly
one server, the one KetamaRing picks for the same server list, weights and hash. The harness
(tests/helpers/nutcracker.py) is also what bench/ketama_placement.py sweeps over pool sizes
1..60.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Iterator, Sequence

import pytest

from memring.proxy.ketama import HASH_NAMES, KetamaRing, key_hash
from tests.helpers import servers
from tests.helpers.nutcracker import (
    Placement,
    PoolServer,
    compare_placement,
    nutcracker_binary,
    sample_keys,
)

pytestmark = pytest.mark.compat

MAX_POOL = 50
KEYS_PER_CASE = 1500


@pytest.fixture(scope="module")
def memcacheds() -> Iterator[list[servers.RunningServer]]:
    nutcracker_binary()
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(servers.memcached("-m", "16")) for _ in range(MAX_POOL)]


def _pool(memcacheds: list[servers.RunningServer], size: int,
          weights: Sequence[int] = (1,)) -> list[PoolServer]:
    return [PoolServer(m.port, weights[i % len(weights)]) for i, m in enumerate(memcacheds[:size])]


def _assert_identical(result: Placement, keys: Sequence[bytes]) -> None:
    assert result.compared == len(keys)
    assert result.mismatches == [], f"{len(result.mismatches)} keys misplaced, e.g. " \
        f"{result.mismatches[:3]!r}"


@pytest.mark.parametrize("hash_name", ["md5", "fnv1a_64"])
@pytest.mark.parametrize(("size", "weights"), [
    (1, (1,)), (2, (1,)), (7, (1,)), (25, (1,)), (50, (1,)),
    (2, (1, 2, 3)), (7, (1, 2, 3)), (25, (1, 2, 3)), (50, (5, 1, 3, 2)),
])
def test_placement_matches_nutcracker(memcacheds: list[servers.RunningServer], size: int,
                                      weights: tuple[int, ...], hash_name: str) -> None:
    pool = _pool(memcacheds, size, weights)
    keys = sample_keys(KEYS_PER_CASE, seed=size * 31 + len(weights),
                       prefix=f"p{size}w{len(weights)}{hash_name}/")
    ring = KetamaRing([(s.point, s.weight) for s in pool], hash_name)
    if weights == (1,) and size in (25, 50):
        assert len(ring) == 156 * size  # the float32 quirk is in play in this very pool
    result = compare_placement(pool, hash_name, keys)
    _assert_identical(result, keys)
    # Every server that has points got keys: the comparison is not vacuous.
    used = {ring.server_for(k) for k in keys}
    assert len(used) == size


def test_high_bytes_decide_placement(memcacheds: list[servers.RunningServer]) -> None:
    """twemproxy's fnv1a_64 sign-extends bytes >= 0x80: keys full of them place correctly."""
    pool = _pool(memcacheds, 7)
    keys = [b"high/%d:" % i + bytes([0x80 + (i * 7 + j) % 128 for j in range(1 + i % 9)])
            for i in range(600)]
    keys += [f"utf8/{i}:été-ключ-🔑".encode() for i in range(600)]
    # The keys whose hashes tests/unit/test_ketama.py pins.
    keys += [b"\x80", b"\xff", "été".encode(), "ключ".encode(), "🔑".encode(), b"key\xfe\x81"]
    _assert_identical(compare_placement(pool, "fnv1a_64", keys), keys)
    fnv = key_hash("fnv1a_64")

    def unsigned_fnv1a(key: bytes) -> int:
        h = 0x84222325
        for b in key:
            h = ((h ^ b) * 0x1B3) & 0xFFFFFFFF
        return h

    # Sign extension changes the hash of (almost) every one of these keys, so the placement
    # check above would fail for an unsigned FNV-1a (one key in 1200 collides by chance).
    assert sum(fnv(k) != unsigned_fnv1a(k) for k in keys) > 0.99 * len(keys)


def test_named_servers(memcacheds: list[servers.RunningServer]) -> None:
    """A nutcracker server given a name places its points as `name-i`, like a memring shard."""
    names = ["s1", "shard-2", "cache.example.com", "10.0.0.9:11311", "a", "node_07"]
    pool = [PoolServer(m.port, w, n) for m, w, n in zip(memcacheds, (1, 2, 1, 3, 1, 1), names,
                                                        strict=False)]
    keys = sample_keys(KEYS_PER_CASE, seed=7, prefix="named/")
    for hash_name in ("md5", "fnv1a_64"):
        _assert_identical(compare_placement(pool, hash_name, keys), keys)


def test_long_names_are_cut_at_272_bytes(memcacheds: list[servers.RunningServer]) -> None:
    """Point strings longer than twemproxy's 273-byte buffer are cut: names alike in their
    first 272 bytes share every point, and the tie rule sends all keys to one of them."""
    names = ["a" * 272 + "y", "a" * 272 + "x", "b" * 300]
    pool = [PoolServer(m.port, 1, n) for m, n in zip(memcacheds, names, strict=False)]
    keys = sample_keys(600, seed=13, prefix="long/")
    ring = KetamaRing([(s.point, s.weight) for s in pool])
    assert {ring.server_for(k) for k in keys} == {1, 2}
    _assert_identical(compare_placement(pool, "md5", keys), keys)


def keys_just_below(value: int, ring: KetamaRing, hash_name: str, count: int) -> list[bytes]:
    """Keys whose hash falls in the arc that ends at point `value` (so that point owns them)."""
    values = sorted(int.from_bytes(hashlib.md5(b"%s-%d" % (name.encode(), i)).digest()[j:j + 4],
                                   "little")
                    for (name, _), n in zip(ring.servers, ring.point_counts, strict=True)
                    for i in range(n // 4) for j in range(0, 16, 4))
    below = values[values.index(value) - 1]
    h = key_hash(hash_name)
    return [k for k in (b"arc:%d" % i for i in range(400_000)) if below < h(k) <= value][:count]


# Pairs of names that share one point value (found by a birthday search over md5 words).
# twemproxy gives the shared point to the name that is shorter, then bytewise smaller,
# whatever the configuration order: "z333" beats "z1267" though "z1267" < "z333".
TIES = [("tie-184", "tie-434", 1310727539), ("z333", "z1267", 4157646814)]


@pytest.mark.parametrize(("winner", "loser", "value"), TIES)
def test_shared_point_goes_to_the_name_twemproxy_sorts_first(
        memcacheds: list[servers.RunningServer], winner: str, loser: str, value: int) -> None:
    for order in ((winner, loser), (loser, winner)):
        pool = [PoolServer(m.port, 1, n) for m, n in zip(memcacheds, order, strict=False)]
        for hash_name in ("md5", "fnv1a_64"):
            ring = KetamaRing([(s.point, s.weight) for s in pool], hash_name)
            keys = keys_just_below(value, ring, hash_name, 30)
            assert len(keys) >= 20, "the two names no longer share a point"
            assert {ring.server_for(k) for k in keys} == {order.index(winner)}
            _assert_identical(compare_placement(pool, hash_name, keys), keys)


@pytest.mark.parametrize("hash_name", [h for h in HASH_NAMES if h not in ("md5", "fnv1a_64")])
def test_other_twemproxy_hashes(memcacheds: list[servers.RunningServer], hash_name: str) -> None:
    pool = _pool(memcacheds, 5, (1, 2))
    keys = sample_keys(400, seed=11, prefix=f"{hash_name}/")
    _assert_identical(compare_placement(pool, hash_name, keys), keys)


def test_default_port_servers_are_named_by_host() -> None:
    """Servers on port 11211 get points `host-i` (no port), as libmemcached names them.

    The memcacheds listen on 127.0.0.2..5:11211 (the whole of 127/8 is loopback on Linux),
    so nothing already on 127.0.0.1:11211 is touched; skipped if the port is taken.
    """
    hosts = [f"127.0.0.{i}" for i in range(2, 6)]
    for host in hosts:
        with socket.socket() as probe:
            try:
                probe.bind((host, 11211))
            except OSError:
                pytest.skip(f"{host}:11211 is not free")
    with contextlib.ExitStack() as stack:
        for host in hosts:
            stack.enter_context(servers.memcached("-m", "16", "-l", f"{host}:11211"))
        pool = [PoolServer(11211, w, host=h) for h, w in zip(hosts, (1, 1, 2, 3), strict=True)]
        assert [s.point for s in pool] == hosts
        keys = sample_keys(1000, seed=3, prefix="defport/")
        for hash_name in ("md5", "fnv1a_64"):
            result = compare_placement(pool, hash_name, keys)
            _assert_identical(result, keys)
