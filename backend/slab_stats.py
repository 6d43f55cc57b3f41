"""`stats items`, `stats slabs` and `stats sizes`: the store seen through memcached's slab classes.

memring allocates each item on its own; these replies put every item in the slab class that
memcached 1.6.18's defaults (-n 48, -f 1.25, 1 MB pages) would give it (protocol.sizes) and
count pages as memcached would need them, so tools that read the per-class figures see the
shape they expect. They are computed from a walk over the items at the time of the request.

Per-class figures memring does not have are printed as 0: it has one LRU, so nothing moves
between hot, warm and cold (every item is `number_cold`, `age` is the oldest item's idle
time) and there are no per-class hit counters (`stats slabs` get_hits ... touch_hits) or
tail repairs; evictions are counted per class (Store.class_evictions).
"""

from __future__ import annotations

from dataclasses import dataclass

from memring.backend.store import Store
from memring.protocol.sizes import SLAB_CHUNK_SIZES, slab_class

PAGE_SIZE = 1 << 20  # memcached's slab page (-I 1m)
SIZES_BUCKET = 32  # items.c: `stats sizes` counts in 32-byte steps

Pairs = list[tuple[str, object]]


@dataclass(slots=True)
class ClassCensus:
    number: int = 0
    requested: int = 0  # mem_requested: the items' sizes
    oldest_access: int = 0  # the least recently used item's last access


@dataclass(slots=True)
class SizesHistogram:
    """`stats sizes_enable|disable`: like memcached, only items stored after the histogram was
    enabled are counted (their CAS is at least `cas_min`, which enabling draws)."""

    cas_min: int | None = None  # None: disabled


def census(store: Store) -> dict[int, ClassCensus]:
    """Items by slab class."""
    classes: dict[int, ClassCensus] = {}
    for size, last_access in store.census():
        cls = slab_class(size)
        entry = classes.get(cls)
        if entry is None:
            entry = classes[cls] = ClassCensus(oldest_access=last_access)
        entry.number += 1
        entry.requested += size
    return classes


def items(store: Store) -> Pairs:
    """`stats items`: memcached's 28 lines per class that holds items (with its LRU
    maintainer on and no temp LRU, its defaults)."""
    now = store.now()
    pairs: Pairs = []
    for cls, entry in sorted(census(store).items()):
        evicted = store.class_evictions.get(cls)
        fields: Pairs = [
            ("number", entry.number), ("number_hot", 0), ("number_warm", 0),
            ("number_cold", entry.number), ("age_hot", 0), ("age_warm", 0),
            ("age", max(now - entry.oldest_access, 0)), ("mem_requested", entry.requested),
            ("evicted", evicted.evicted if evicted else 0),
            ("evicted_nonzero", evicted.evicted_nonzero if evicted else 0),
            ("evicted_time", evicted.evicted_time if evicted else 0),
            ("outofmemory", 0), ("tailrepairs", 0), ("reclaimed", 0),
            ("expired_unfetched", 0), ("evicted_unfetched", 0), ("evicted_active", 0),
            ("crawler_reclaimed", 0), ("crawler_items_checked", 0), ("lrutail_reflocked", 0),
            ("moves_to_cold", 0), ("moves_to_warm", 0), ("moves_within_lru", 0),
            ("direct_reclaims", 0), ("hits_to_hot", 0), ("hits_to_warm", 0),
            ("hits_to_cold", 0), ("hits_to_temp", 0)]
        pairs += [(f"items:{cls}:{name}", value) for name, value in fields]
    return pairs


def slabs(store: Store) -> Pairs:
    """`stats slabs`: per class with items, the pages memcached would have allocated for them;
    then active_slabs and total_malloced (those pages' bytes)."""
    pairs: Pairs = []
    pages_total = 0
    classes = census(store)
    for cls, entry in sorted(classes.items()):
        chunk = SLAB_CHUNK_SIZES[cls - 1]
        per_page = PAGE_SIZE // chunk
        pages = -(-entry.number // per_page)
        pages_total += pages
        fields: Pairs = [
            ("chunk_size", chunk), ("chunks_per_page", per_page), ("total_pages", pages),
            ("total_chunks", pages * per_page), ("used_chunks", entry.number),
            ("free_chunks", pages * per_page - entry.number), ("free_chunks_end", 0),
            ("get_hits", 0), ("cmd_set", 0), ("delete_hits", 0), ("incr_hits", 0),
            ("decr_hits", 0), ("cas_hits", 0), ("cas_badval", 0), ("touch_hits", 0)]
        pairs += [(f"{cls}:{name}", value) for name, value in fields]
    pairs += [("active_slabs", len(classes)), ("total_malloced", pages_total * PAGE_SIZE)]
    return pairs


def sizes(store: Store, histogram: SizesHistogram) -> Pairs:
    """`stats sizes`: `<size> <count>` in 32-byte steps of item size, or the status."""
    if histogram.cas_min is None:
        return [("sizes_status", "disabled")]
    counts: dict[int, int] = {}
    for size, cas in store.sizes_and_cas():
        if cas >= histogram.cas_min:
            bucket = -(-size // SIZES_BUCKET) * SIZES_BUCKET
            counts[bucket] = counts.get(bucket, 0) + 1
    return [(str(bucket), count) for bucket, count in sorted(counts.items())]


def sizes_enable(store: Store, histogram: SizesHistogram) -> Pairs:
    if histogram.cas_min is None:
        histogram.cas_min = store.next_cas()  # memcached draws one CAS value (get_cas_id)
    return [("sizes_status", "enabled")]


def sizes_disable(histogram: SizesHistogram) -> Pairs:
    histogram.cas_min = None
    return [("sizes_status", "disabled")]
