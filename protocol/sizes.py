"""Item sizes as memcached counts them, shared by the codec (too-large checks) and the store."""

from __future__ import annotations

from bisect import bisect_left

KEY_MAX_LENGTH = 250

# memcached.c limited_get: an item referenced more than IT_REFCOUNT_LIMIT (60000) times is
# answered as a miss, and a get holds a reference per repeat (on top of the item's own) until
# its reply is written, so one get returns a key at most 59,999 times (1.6.18, measured: a
# get of 3 keys repeated 83,333 times each returns 179,997 values).
GET_REPEATS_LIMIT = 59_999


def limit_repeats(keys: list[bytes]) -> list[bytes]:
    """`keys` of one get without the repeats past GET_REPEATS_LIMIT, which memcached omits."""
    if len(keys) <= GET_REPEATS_LIMIT:
        return keys
    seen: dict[bytes, int] = {}
    kept = []
    for key in keys:
        count = seen[key] = seen.get(key, 0) + 1
        if count <= GET_REPEATS_LIMIT:
            kept.append(key)
    return kept

# 64-bit build with CAS: a 48-byte item header plus the 8-byte CAS field.
_ITEM_HEADER = 48 + 8


def item_size(key_length: int, value_length: int, flags: int) -> int:
    """Bytes memcached charges for an item (items.c item_make_header + CAS).

    With the default 1 MiB item size this makes the largest value of a 1-byte key
    1048516 bytes, 4 fewer when the flags are non-zero, as probed on memcached 1.6.18.
    """
    return _ITEM_HEADER + key_length + 1 + value_length + 2 + (4 if flags else 0)


_SLAB_CHUNK_MAX = 512 * 1024
_FIRST_CHUNK = 96  # 48-byte item header + memcached's default -n 48
_GROWTH = 1.25


def _slab_chunk_sizes() -> list[int]:
    sizes = []
    size = _FIRST_CHUNK
    while size <= _SLAB_CHUNK_MAX / _GROWTH:
        if size % 8:
            size += 8 - size % 8
        sizes.append(size)
        size = int(size * _GROWTH)
    sizes.append(_SLAB_CHUNK_MAX)
    return sizes


SLAB_CHUNK_SIZES = _slab_chunk_sizes()


def slab_class(size: int) -> int:
    """The slab class memcached's default settings would put an item of `size` in."""
    # chunked items (past the largest chunk) live in the largest class
    return min(bisect_left(SLAB_CHUNK_SIZES, size), len(SLAB_CHUNK_SIZES) - 1) + 1
