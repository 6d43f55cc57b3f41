"""KetamaRing against the real twemproxy: Debian's nutcracker in front of real memcacheds.

Keys are stored through nutcracker (`distribution: ketama`); then every memcached is asked
directly, with a `get` of all the keys, which of them it holds. Each key must sit on exactly
one server, the one KetamaRing picks for the same server list, weights and hash. The harness
here is also what bench/ketama_placement.py sweeps over pool sizes 1..60.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from memring.proxy.ketama import HASH_NAMES, KetamaRing, key_hash, point_name
from tests.helpers import servers

pytestmark = pytest.mark.compat

HOST = servers.HOST
SOCKET_TIMEOUT = 5.0
SET_CHUNK = 200   # pipelined sets per round trip
GET_BATCH = 250   # keys per `get` line
MAX_KEY = 250     # memcached's and nutcracker's key length limit


def nutcracker_binary() -> str:
    path = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
    if not Path(path).exists():
        raise RuntimeError("nutcracker is not installed: run `make debian-deps` as root")
    return path


@dataclass(frozen=True)
class PoolServer:
    """One `servers:` entry of a nutcracker pool, and the point name it gets on the ring."""

    port: int
    weight: int = 1
    name: str | None = None
    host: str = HOST

    def yaml_entry(self) -> str:
        entry = f"{self.host}:{self.port}:{self.weight}"
        return f"{entry} {self.name}" if self.name else entry

    @property
    def point(self) -> str:
        return self.name or point_name(self.host, self.port)


@dataclass
class Placement:
    """The outcome of one comparison: how many keys were checked and which disagreed."""

    compared: int = 0
    mismatches: list[tuple[bytes, int, list[int]]] = field(default_factory=list)


class TextConnection:
    """A blocking memcached text-protocol connection; every socket call has a timeout."""

    def __init__(self, port: int, host: str = HOST, deadline: float | None = None) -> None:
        self.deadline = deadline if deadline is not None else time.monotonic() + 60.0
        self.sock = socket.create_connection((host, port), timeout=SOCKET_TIMEOUT)
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> TextConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> None:
        if time.monotonic() > self.deadline:
            raise TimeoutError("memcached exchange passed its deadline")
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buffer += chunk

    def flush_all(self) -> None:
        self.sock.sendall(b"flush_all\r\n")
        while not self.buffer.endswith(b"\r\n"):
            self._fill()
        reply = bytes(self.buffer)
        del self.buffer[:]
        if reply != b"OK\r\n":
            raise AssertionError(f"flush_all failed: {reply!r}")

    def store(self, keys: Sequence[bytes]) -> None:
        """`set` every key (value b"1"), pipelined in chunks; each reply must be STORED."""
        for start in range(0, len(keys), SET_CHUNK):
            chunk = keys[start:start + SET_CHUNK]
            self.sock.sendall(b"".join(b"set %s 0 0 1\r\n1\r\n" % k for k in chunk))
            while self.buffer.count(b"\r\n") < len(chunk):
                self._fill()
            replies = bytes(self.buffer).split(b"\r\n")
            del self.buffer[:]
            bad = [r for r in replies[:len(chunk)] if r != b"STORED"]
            if bad or replies[len(chunk):] != [b""]:
                raise AssertionError(f"set through nutcracker failed: {bad[:3]!r}")

    def held(self, keys: Sequence[bytes]) -> set[bytes]:
        """Which of `keys` the server holds: one `get` per batch, replies parsed by length."""
        found: set[bytes] = set()
        for start in range(0, len(keys), GET_BATCH):
            self.sock.sendall(b"get " + b" ".join(keys[start:start + GET_BATCH]) + b"\r\n")
            # A reply ends with END\r\n after a line break (or is just END\r\n): no key or
            # data line can end that way, since VALUE lines end in flags and length.
            while not (self.buffer == b"END\r\n" or self.buffer.endswith(b"\r\nEND\r\n")):
                self._fill()
            found.update(_parse_values(bytes(self.buffer)))
            del self.buffer[:]
        return found


def _parse_values(reply: bytes) -> list[bytes]:
    keys: list[bytes] = []
    pos = 0
    for _ in range(reply.count(b"VALUE ") + 1):  # bounded: one round per VALUE, then END
        eol = reply.index(b"\r\n", pos)
        line = reply[pos:eol]
        if line == b"END":
            return keys
        _, key, _flags, length = line.split(b" ")
        keys.append(key)
        pos = eol + 2 + int(length) + 2
    raise AssertionError(f"unexpected get reply: {reply[:200]!r}")


def nutcracker_yaml(listen_port: int, hash_name: str, pool: Sequence[PoolServer]) -> str:
    lines = [
        "memring_ketama:",
        f"  listen: {HOST}:{listen_port}",
        f"  hash: {hash_name}",
        "  distribution: ketama",
        "  auto_eject_hosts: false",  # every server stays on the ring, as in memring
        "  timeout: 3000",
        "  servers:",
    ]
    lines += [f"    - {s.yaml_entry()}" for s in pool]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def nutcracker(pool: Sequence[PoolServer], hash_name: str) -> Iterator[int]:
    """A nutcracker over `pool` on free ports; yields its listen port, stops it after."""
    listen_port, stats_port = servers.free_port(), servers.free_port()
    with tempfile.TemporaryDirectory(prefix="memring-nutcracker-") as tmp:
        conf = Path(tmp, "nutcracker.yml")
        conf.write_text(nutcracker_yaml(listen_port, hash_name, pool))
        argv = [nutcracker_binary(), "-c", str(conf), "-s", str(stats_port), "-a", HOST,
                "-o", str(Path(tmp, "nutcracker.log")), "-v", "4"]
        # `running` polls `version`, which nutcracker forwards to a backend: once it
        # answers, the listener and the server pool are both up.
        with servers.running("nutcracker", argv, port=listen_port) as proc:
            yield proc.port


def compare_placement(pool: Sequence[PoolServer], hash_name: str, keys: Sequence[bytes],
                      timeout: float = 60.0) -> Placement:
    """Store `keys` through nutcracker, find each on the memcacheds, compare with KetamaRing."""
    deadline = time.monotonic() + timeout
    ring = KetamaRing([(s.point, s.weight) for s in pool], hash_name)
    for server in pool:  # earlier comparisons on the same memcacheds leave their keys
        with TextConnection(server.port, host=server.host, deadline=deadline) as conn:
            conn.flush_all()
    with nutcracker(pool, hash_name) as port, TextConnection(port, deadline=deadline) as conn:
        conn.store(keys)
    where: dict[bytes, list[int]] = {}
    for index, server in enumerate(pool):
        with TextConnection(server.port, host=server.host, deadline=deadline) as conn:
            for key in conn.held(keys):
                where.setdefault(key, []).append(index)
    result = Placement()
    for key in keys:
        expected = ring.server_for(key)
        actual = where.get(key, [])
        result.compared += 1
        if actual != [expected]:
            result.mismatches.append((key, expected, actual))
    return result


_WORDS = ["ключ", "キー", "钥匙", "Schlüssel", "clé", "κλειδί", "מפתח", "مفتاح", "🔑", "naïve",
          "ÿ", "€uro", "ß", "Ωmega", "emoji😀🎉"]


def sample_keys(count: int, seed: int, prefix: str) -> list[bytes]:
    """`count` distinct keys: ASCII, UTF-8 text, raw bytes >= 0x80 (not UTF-8), long ones.

    memcached keys may hold any byte but space and control characters, so the raw keys
    draw from 0x21..0x7e and 0x80..0xff.
    """
    rng = random.Random(seed)
    raw_alphabet = bytes([*range(0x21, 0x7F), *range(0x80, 0x100)])
    keys: list[bytes] = []
    for i in range(count):
        tag = b"%s%d:" % (prefix.encode(), i)  # keeps keys distinct
        kind = i % 4
        if kind == 0:
            key = tag + bytes(rng.randrange(0x21, 0x7F) for _ in range(rng.randrange(1, 40)))
        elif kind == 1:
            key = tag + "".join(rng.choice(_WORDS) for _ in range(rng.randrange(1, 5))).encode()
        elif kind == 2:
            key = tag + bytes(rng.choice(raw_alphabet) for _ in range(rng.randrange(1, 60)))
        else:
            long_tail = bytes(rng.choice(raw_alphabet) for _ in range(rng.randrange(60, MAX_KEY)))
            key = (tag + long_tail)[:MAX_KEY]
        keys.append(key)
    return keys


# ---------------------------------------------------------------------------------------

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
