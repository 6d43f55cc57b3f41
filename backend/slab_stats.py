"""`stats items`, `stats slabs` and `stats sizes`: the store seen through memcached's slab classes.

memring allocates each item on its own; these replies put every item in the slab class that
memcached 1.6.18's defaults (-n 48, -f 1.25, 1 MB pages) would give it (protocol.sizes) and
count pages as memcached would need them, so tools that read the per-class figures see the
shape they expect. They are computed from a walk over a snapshot of the keys, in chunks the
server sends with other connections running between them (backend.item_dumps, the dumps'
machinery; an empty chunk until the last, the whole reply), so a large store's `stats items`
does not stall other clients: 1M items took 0.65 s in one piece.

Per-class figures memring does not have are printed as 0: it has one LRU, so nothing moves
between hot, warm and cold (every item is `number_cold`, `age` is the oldest item's idle
time) and there are no per-class hit counters (`stats slabs` get_hits ... touch_hits) or
tail repairs; evictions are counted per class (Store.class_evictions).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass

from memring.backend.item_dumps import walk
from memring.backend.store import ItemFacts, Store
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


Census = dict[int, ClassCensus]


def census_chunks(store: Store, render: Callable[[Census], bytes]
                  ) -> Generator[bytes, None, None]:
    """Items by slab class over a snapshot of the keys (item_dumps.walk), then
    `render(census)`."""
    classes: Census = {}

    def visit(facts: ItemFacts) -> None:
        cls = slab_class(facts.size)
        entry = classes.get(cls)
        if entry is None:
            entry = classes[cls] = ClassCensus(oldest_access=facts.last_access)
        entry.number += 1
        entry.requested += facts.size

    return walk(store, visit, lambda: render(classes))


def items(store: Store, classes: Census) -> Pairs:
    """`stats items`: memcached's 28 lines per class that holds items (with its LRU
    maintainer on and no temp LRU, its defaults)."""
    now = store.now()
    pairs: Pairs = []
    for cls, entry in sorted(classes.items()):
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


def slabs(classes: Census) -> Pairs:
    """`stats slabs`: per class with items, the pages memcached would have allocated for them;
    then active_slabs and total_malloced (those pages' bytes)."""
    pairs: Pairs = []
    pages_total = 0
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


def sizes_chunks(store: Store, histogram: SizesHistogram, render: Callable[[Pairs], bytes]
                 ) -> Generator[bytes, None, None]:
    """`stats sizes`: `<size> <count>` in 32-byte steps of item size (item_dumps.walk), or
    the status when the histogram is off."""
    cas_min = histogram.cas_min
    if cas_min is None:
        yield render([("sizes_status", "disabled")])
        return
    counts: dict[int, int] = {}

    def visit(facts: ItemFacts) -> None:
        if facts.cas >= cas_min:
            bucket = -(-facts.size // SIZES_BUCKET) * SIZES_BUCKET
            counts[bucket] = counts.get(bucket, 0) + 1

    yield from walk(store, visit, lambda: render(
        [(str(bucket), count) for bucket, count in sorted(counts.items())]))


def sizes_enable(store: Store, histogram: SizesHistogram) -> Pairs:
    if histogram.cas_min is None:
        histogram.cas_min = store.next_cas()  # memcached draws one CAS value (get_cas_id)
    return [("sizes_status", "enabled")]


def sizes_disable(histogram: SizesHistogram) -> Pairs:
    histogram.cas_min = None
    return [("sizes_status", "disabled")]
