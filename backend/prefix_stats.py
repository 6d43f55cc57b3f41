"""`stats detail on|off|dump`: memcached's per-prefix counters of gets, hits, sets and deletes.

A key's prefix is what comes before its first ':' (memcached's default -D); keys without one
are not counted. memcached counts in the text get/gets/gat/gats (every key, hit or miss), the
text storage commands (once the command line is read, whether or not the item is then stored)
and text delete; meta commands are not counted. The dump lists the prefixes in memcached's
order: its 256-bucket table hashed with murmur3 (its default hash), newest first in a bucket
(stats_prefix.c), so `stats detail dump` is byte-identical. Unlike memcached the table is
bounded (MAX_PREFIXES), and a storage command is counted once its data block arrived intact
(memcached also counts one refused as too large or with a bad data chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

DELIMITER = b":"
# memcached keeps every prefix it sees; memring stops adding new ones past this many (each
# costs up to ~400 bytes), so keys a client makes up cannot grow the table without bound
MAX_PREFIXES = 100_000
_BUCKETS = 256  # stats_prefix.c PREFIX_HASH_SIZE
_M32 = 0xFFFFFFFF


def murmur3_32(data: bytes) -> int:
    """MurmurHash3_x86_32 with seed 0 (memcached's murmur3_hash.c)."""
    h = 0
    length = len(data)
    tail_start = length - length % 4
    for i in range(0, tail_start, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * 0xCC9E2D51) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * 0x1B873593) & _M32
        h ^= k
        h = ((h << 13) | (h >> 19)) & _M32
        h = (h * 5 + 0xE6546B64) & _M32
    tail = data[tail_start:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = (k * 0xCC9E2D51) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * 0x1B873593) & _M32
        h ^= k
    h ^= length
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


@dataclass(slots=True)
class PrefixCounts:
    gets: int = 0
    hits: int = 0
    sets: int = 0
    deletes: int = 0


class PrefixStats:
    """The counters by prefix; `enabled` is `stats detail on|off` (detail_enabled)."""

    def __init__(self) -> None:
        self.enabled = False
        self._counts: dict[bytes, PrefixCounts] = {}

    def _find(self, key: bytes) -> PrefixCounts | None:
        end = key.find(DELIMITER)
        if end < 0:
            return None
        prefix = key[:end]
        counts = self._counts.get(prefix)
        if counts is None:
            if len(self._counts) >= MAX_PREFIXES:
                return None
            counts = self._counts[prefix] = PrefixCounts()
        return counts

    def record_get(self, key: bytes, hit: bool) -> None:
        counts = self._find(key)
        if counts is not None:
            counts.gets += 1
            counts.hits += hit

    def record_set(self, key: bytes) -> None:
        counts = self._find(key)
        if counts is not None:
            counts.sets += 1

    def record_delete(self, key: bytes) -> None:
        counts = self._find(key)
        if counts is not None:
            counts.deletes += 1

    def clear(self) -> None:
        """`stats reset` forgets the prefixes (stats_prefix_clear)."""
        self._counts.clear()

    def dump(self) -> bytes:
        """`PREFIX <prefix> get <n> hit <n> set <n> del <n>` lines, then END."""
        order = sorted(enumerate(self._counts.items()),
                       key=lambda entry: (murmur3_32(entry[1][0]) % _BUCKETS, -entry[0]))
        return b"".join(b"PREFIX %s get %d hit %d set %d del %d\r\n" % (
            prefix, c.gets, c.hits, c.sets, c.deletes) for _, (prefix, c) in order) + b"END\r\n"
