"""Ketama consistent hashing that places keys exactly like twemproxy (and libmemcached).

Theory of operation: each server contributes points to a circle of 32-bit values. A
server's point count is 160 * weight / total_weight * nservers, computed in 32-bit float
and rounded down to a multiple of 4 (the float arithmetic is part of the contract: with
equal weights, pools of 25, 47 or 50 servers get 156 points each, not 160). The points of
server `name` are the md5 digests of `name-0`, `name-1`, ..., each digest read as four
little-endian 32-bit words. A key is hashed to 32 bits with the configured key hash and
served by the first point at or after it, wrapping to the first point of the circle. Where
two servers share a point value, twemproxy's order decides (see `KetamaRing.__init__`);
that rare case is the only one where libmemcached can place a key differently.

The ring is immutable: the proxy builds a new one per topology and swaps it atomically.
The lookup is one hash plus one `bisect` on a precomputed sorted list.

Verified against Debian's nutcracker 0.5.0 (tests/compat/test_ketama_nutcracker.py,
bench/ketama_placement.py); the definitions follow twemproxy's src/hashkit/nc_ketama.c and
libmemcached's src/libmemcached/hosts.cc (weighted ketama).
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Final

__all__ = ["HASH_NAMES", "KetamaRing", "key_hash", "point_name", "points_per_server"]

POINTS_PER_SERVER = 160
POINTS_PER_DIGEST = 4
# libmemcached (and twemproxy, for compatibility) leave the port out of the point name
# when it is the default port.
DEFAULT_PORT = 11211
# twemproxy formats point strings into a 273-byte buffer (KETAMA_MAX_HOSTLEN): anything
# longer is cut to 272 bytes before hashing.
MAX_POINT_STRING = 272

_MASK32: Final = 0xFFFFFFFF
_FNV_64_INIT_LOW = 0xCBF29CE484222325 & _MASK32  # twemproxy truncates the 64-bit constants
_FNV_64_PRIME_LOW = 0x100000001B3 & _MASK32
_FNV_32_INIT = 2166136261
_FNV_32_PRIME = 16777619
_MURMUR_M = 0x5BD1E995

# twemproxy's hashes read the key through a signed `char`: a byte >= 0x80 enters the hash
# sign-extended to 32 bits (0xFFFFFF80...). This table makes that one list index.
_SIGNED_BYTE: tuple[int, ...] = tuple(b if b < 0x80 else b | 0xFFFFFF00 for b in range(256))

_unpack_u32_le: Final = struct.Struct("<I").unpack_from
# Final: native statics, not a module-dict (or module attribute) lookup per key
_bisect_left: Final = bisect_left
_md5: Final = hashlib.md5
_unpack_4u32_le = struct.Struct("<4I").unpack


def point_name(host: str, port: int) -> str:
    """The ring point name libmemcached and twemproxy give an unnamed `host:port` server."""
    return host if port == DEFAULT_PORT else f"{host}:{port}"


def _f32(x: float) -> float:
    """Round to IEEE single precision, as a C `float` expression does (round to nearest)."""
    return float(_unpack_f32(_pack_f32(x))[0])


_pack_f32 = struct.Struct("<f").pack
_unpack_f32 = struct.Struct("<f").unpack


def points_per_server(weight: int, total_weight: int, nservers: int) -> int:
    """Point count of one server, with twemproxy's and libmemcached's float32 arithmetic.

    Each float operation of `floorf((float)(pct * 160 / 4 * (float)n + 1e-10)) * 4` is
    rounded to single precision. Products and quotients of floats are exact or correctly
    rounded in double, so rounding the double result to float reproduces C's float result.
    """
    pct = _f32(_f32(float(weight)) / _f32(float(total_weight)))
    value = _f32(pct * POINTS_PER_SERVER)
    value = _f32(value / 4)
    value = _f32(value * _f32(float(nservers)))
    value = _f32(value + 0.0000000001)  # a double constant in twemproxy; lost in the cast
    return math.floor(value) * POINTS_PER_DIGEST


# Key hashes. md5 and fnv1a_64 are the ones memring documents; the rest are twemproxy's
# other `hash:` choices, cheap to carry, each pinned by twemproxy's own test vectors.


def _hash_md5(key: bytes) -> int:
    """libketama/libmemcached/twemproxy md5: the digest's first 4 bytes, little-endian."""
    return int(_unpack_u32_le(_md5(key).digest())[0])


def _hash_fnv1a_64(key: bytes) -> int:
    """twemproxy's "fnv1a_64": really FNV-1a in 32 bits, 64-bit constants truncated."""
    h = _FNV_64_INIT_LOW
    signed = _SIGNED_BYTE
    for b in key:
        h = ((h ^ signed[b]) * _FNV_64_PRIME_LOW) & _MASK32
    return h


def _hash_fnv1_64(key: bytes) -> int:
    """twemproxy's "fnv1_64": 64-bit FNV-1 whose result is cut to its low 32 bits.

    The low 32 bits of a product depend only on the low 32 bits of its factors, so it
    runs in 32 bits.
    """
    h = _FNV_64_INIT_LOW
    signed = _SIGNED_BYTE
    for b in key:
        h = ((h * _FNV_64_PRIME_LOW) & _MASK32) ^ signed[b]
    return h


def _hash_fnv1a_32(key: bytes) -> int:
    h = _FNV_32_INIT
    signed = _SIGNED_BYTE
    for b in key:
        h = ((h ^ signed[b]) * _FNV_32_PRIME) & _MASK32
    return h


def _hash_fnv1_32(key: bytes) -> int:
    h = _FNV_32_INIT
    signed = _SIGNED_BYTE
    for b in key:
        h = ((h * _FNV_32_PRIME) & _MASK32) ^ signed[b]
    return h


def _hash_crc32(key: bytes) -> int:
    """libmemcached's "crc32": bits 16..30 of the standard CRC-32 (not CRC-32 itself)."""
    return (zlib.crc32(key) >> 16) & 0x7FFF


def _hash_crc32a(key: bytes) -> int:
    """twemproxy's "crc32a": the standard CRC-32."""
    return zlib.crc32(key)


def _hash_one_at_a_time(key: bytes) -> int:
    h = 0
    signed = _SIGNED_BYTE
    for b in key:
        h = (h + signed[b]) & _MASK32
        h = (h + (h << 10)) & _MASK32
        h ^= h >> 6
    h = (h + (h << 3)) & _MASK32
    h ^= h >> 11
    return (h + (h << 15)) & _MASK32


def _hash_murmur(key: bytes) -> int:
    """MurmurHash2 with twemproxy's seed (0xdeadbeef * length); words read little-endian."""
    m = _MURMUR_M
    length = len(key)
    h = ((0xDEADBEEF * length) & _MASK32) ^ (length & _MASK32)
    whole = length - length % 4
    for (k,) in struct.iter_unpack("<I", key[:whole]):
        k = (k * m) & _MASK32
        k ^= k >> 24
        k = (k * m) & _MASK32
        h = ((h * m) & _MASK32) ^ k
    tail = key[whole:]
    if tail:
        for shift, b in enumerate(tail):
            h ^= b << (8 * shift)
        h = (h * m) & _MASK32
    h ^= h >> 13
    h = (h * m) & _MASK32
    return h ^ (h >> 15)


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK32


def _jenkins_mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = ((a - c) & _MASK32) ^ _rot(c, 4)
    c = (c + b) & _MASK32
    b = ((b - a) & _MASK32) ^ _rot(a, 6)
    a = (a + c) & _MASK32
    c = ((c - b) & _MASK32) ^ _rot(b, 8)
    b = (b + a) & _MASK32
    a = ((a - c) & _MASK32) ^ _rot(c, 16)
    c = (c + b) & _MASK32
    b = ((b - a) & _MASK32) ^ _rot(a, 19)
    a = (a + c) & _MASK32
    c = ((c - b) & _MASK32) ^ _rot(b, 4)
    b = (b + a) & _MASK32
    return a, b, c


def _jenkins_final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _MASK32
    a = ((a ^ c) - _rot(c, 11)) & _MASK32
    b = ((b ^ a) - _rot(a, 25)) & _MASK32
    c = ((c ^ b) - _rot(b, 16)) & _MASK32
    a = ((a ^ c) - _rot(c, 4)) & _MASK32
    b = ((b ^ a) - _rot(a, 14)) & _MASK32
    return ((c ^ b) - _rot(b, 24)) & _MASK32


def _hash_jenkins(key: bytes) -> int:
    """Bob Jenkins' lookup3 `hashlittle` with initval 13, as twemproxy runs it on x86."""
    length = len(key)
    a = b = c = (0xDEADBEEF + length + 13) & _MASK32
    if length == 0:
        return c
    blocks = (length - 1) // 12  # every 12-byte block but the last is mixed
    # The last 1..12 bytes count as zero-padded words (the C code masks its reads).
    words = struct.unpack(f"<{3 * (blocks + 1)}I", key.ljust(12 * (blocks + 1), b"\0"))
    for i in range(0, 3 * blocks, 3):
        a, b, c = _jenkins_mix((a + words[i]) & _MASK32, (b + words[i + 1]) & _MASK32,
                               (c + words[i + 2]) & _MASK32)
    last = 3 * blocks
    return _jenkins_final((a + words[last]) & _MASK32, (b + words[last + 1]) & _MASK32,
                          (c + words[last + 2]) & _MASK32)


def _hash_hsieh(key: bytes) -> int:
    """Paul Hsieh's SuperFastHash, with twemproxy's one signed-char read in the 3-byte tail."""
    length = len(key)
    if length == 0:
        return 0
    h = 0
    whole = length - length % 4
    for lo, hi in struct.iter_unpack("<HH", key[:whole]):
        h = (h + lo) & _MASK32
        tmp = ((hi << 11) & _MASK32) ^ h
        h = ((h << 16) & _MASK32) ^ tmp
        h = (h + (h >> 11)) & _MASK32
    rem = length % 4
    if rem == 3:
        h = (h + key[whole] + (key[whole + 1] << 8)) & _MASK32
        h ^= (h << 16) & _MASK32
        h ^= (_SIGNED_BYTE[key[whole + 2]] << 18) & _MASK32
        h = (h + (h >> 11)) & _MASK32
    elif rem == 2:
        h = (h + key[whole] + (key[whole + 1] << 8)) & _MASK32
        h ^= (h << 11) & _MASK32
        h = (h + (h >> 17)) & _MASK32
    elif rem == 1:
        h = (h + key[whole]) & _MASK32
        h ^= (h << 10) & _MASK32
        h = (h + (h >> 1)) & _MASK32
    h ^= (h << 3) & _MASK32
    h = (h + (h >> 5)) & _MASK32
    h ^= (h << 4) & _MASK32
    h = (h + (h >> 17)) & _MASK32
    h ^= (h << 25) & _MASK32
    return (h + (h >> 6)) & _MASK32


_HASHES: dict[str, Callable[[bytes], int]] = {
    "md5": _hash_md5,
    "fnv1a_64": _hash_fnv1a_64,
    "fnv1_64": _hash_fnv1_64,
    "fnv1a_32": _hash_fnv1a_32,
    "fnv1_32": _hash_fnv1_32,
    "crc32": _hash_crc32,
    "crc32a": _hash_crc32a,
    "one_at_a_time": _hash_one_at_a_time,
    "murmur": _hash_murmur,
    "jenkins": _hash_jenkins,
    "hsieh": _hash_hsieh,
}
HASH_NAMES: tuple[str, ...] = tuple(_HASHES)


def key_hash(hash_name: str) -> Callable[[bytes], int]:
    """The 32-bit key hash twemproxy calls `hash_name` (md5 is libmemcached's too)."""
    try:
        return _HASHES[hash_name]
    except KeyError:
        known = ", ".join(HASH_NAMES)
        raise ValueError(f"unknown key hash {hash_name!r} (known: {known})") from None


def _server_points(name: str, count: int) -> list[int]:
    """The `count` point values of server `name`: 4 little-endian words per md5 digest."""
    encoded = name.encode()
    values: list[int] = []
    for i in range(count // POINTS_PER_DIGEST):
        point = b"%s-%d" % (encoded, i)
        values.extend(_unpack_4u32_le(hashlib.md5(point[:MAX_POINT_STRING]).digest()))
    return values


class KetamaRing:
    """Immutable; built once per topology and swapped atomically."""

    __slots__ = ("_hash", "_owners", "_single", "_values", "hash_name", "point_counts",
                 "servers")

    def __init__(self, servers: Sequence[tuple[str, int]], hash_name: str = "md5") -> None:
        # servers: (point name, weight) in configuration order; weight >= 1
        if not servers:
            raise ValueError("a ketama ring needs at least one server")
        names = [name for name, _ in servers]
        if len(set(names)) != len(names):
            raise ValueError("ketama point names must be unique (twemproxy refuses duplicates)")
        for name, weight in servers:
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
                raise ValueError(f"server {name!r}: weight must be an integer >= 1, got {weight!r}")
        self.servers: tuple[tuple[str, int], ...] = tuple((n, w) for n, w in servers)
        self.hash_name = hash_name
        self._hash = key_hash(hash_name)
        total = sum(w for _, w in servers)
        counts = tuple(points_per_server(w, total, len(servers)) for _, w in servers)
        self.point_counts: tuple[int, ...] = counts
        # Equal point values (two servers' md5 words colliding) go to the server whose name
        # is shorter, then bytewise smaller: twemproxy sorts its server array by name
        # (length first) while validating the config, builds the circle in that order, and
        # glibc's qsort is a stable merge sort. libmemcached breaks ties on its own server
        # order instead, so the two can differ here, and only here.
        encoded = [name.encode() for name in names]
        rank = sorted(range(len(names)), key=lambda i: (len(encoded[i]), encoded[i]))
        # Each point sorts as one int, value * n + position: the order of (value, position)
        # pairs, without a tuple per point (256 shards: 40,960 points, 3x faster to build).
        n = len(names)
        keys: list[int] = []
        for position, index in enumerate(rank):
            keys.extend(value * n + position
                        for value in _server_points(names[index], counts[index]))
        keys.sort()
        self._values: list[int] = [key // n for key in keys]
        self._owners: list[int] = [rank[key % n] for key in keys]
        self._single = len(servers) == 1  # twemproxy skips hashing for a one-server pool

    def server_for(self, key: bytes) -> int:
        """Index into `servers` of the server that owns `key`."""
        if self._single:
            return 0
        i = _bisect_left(self._values, self._hash(key))
        return self._owners[i] if i < len(self._owners) else self._owners[0]

    def __len__(self) -> int:
        """Number of points on the circle."""
        return len(self._values)

    def __repr__(self) -> str:
        return (f"KetamaRing({len(self.servers)} servers, {len(self._values)} points, "
                f"hash={self.hash_name!r})")
