"""The store's semantics, with a controllable clock."""

from __future__ import annotations

import sys

import pytest

from memring.backend.store import MAX_RELATIVE_EXPTIME, Outcome, Store
from memring.protocol.replication import ItemState

pytestmark = pytest.mark.unit


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(clock: FakeClock) -> Store:
    return Store(memory_limit=1 << 20, clock=clock)


def test_set_get_and_cas_increase(store: Store) -> None:
    assert store.store(b"set", b"a", b"1", 0, 0) is Outcome.STORED
    assert store.store(b"set", b"b", b"2", 3, 0) is Outcome.STORED
    a, b = store.get(b"a"), store.get(b"b")
    assert a is not None and b is not None
    assert (a.value, b.flags, a.cas, b.cas) == (b"1", 3, 1, 2)


def test_add_replace_append_prepend(store: Store) -> None:
    assert store.store(b"replace", b"k", b"x", 0, 0) is Outcome.NOT_STORED
    assert store.store(b"append", b"k", b"x", 0, 0) is Outcome.NOT_STORED
    assert store.store(b"add", b"k", b"mid", 7, 100) is Outcome.STORED
    assert store.store(b"add", b"k", b"x", 0, 0) is Outcome.NOT_STORED
    assert store.store(b"append", b"k", b">", 0, 0) is Outcome.STORED
    assert store.store(b"prepend", b"k", b"<", 0, 0) is Outcome.STORED
    item = store.get(b"k")
    assert item is not None
    # append/prepend keep the flags and the expiry of the item.
    assert (item.value, item.flags, item.expires) == (b"<mid>", 7, int(store.clock()) + 100)


def test_cas_rules(store: Store) -> None:
    assert store.store(b"cas", b"k", b"x", 0, 0, 1) is Outcome.NOT_FOUND
    store.store(b"set", b"k", b"v", 0, 0)
    item = store.peek(b"k")
    assert item is not None
    assert store.store(b"cas", b"k", b"x", 0, 0, item.cas + 1) is Outcome.EXISTS
    assert store.store(b"cas", b"k", b"x", 0, 0, item.cas) is Outcome.STORED
    assert (store.stats.cas_misses, store.stats.cas_badval, store.stats.cas_hits) == (1, 1, 1)


def test_incr_wraps_decr_floors_and_pads(store: Store) -> None:
    store.store(b"set", b"n", b"18446744073709551615", 0, 0)
    assert store.arithmetic(b"n", True, 2)[:2] == (Outcome.STORED, 1)
    store.store(b"set", b"n", b"100", 0, 0)
    assert store.arithmetic(b"n", False, 1)[:2] == (Outcome.STORED, 99)
    item = store.peek(b"n")
    assert item is not None and item.value == b"99 "  # memcached pads in place
    assert store.arithmetic(b"n", False, 1000)[:2] == (Outcome.STORED, 0)
    store.store(b"set", b"s", b"abc", 0, 0)
    assert store.arithmetic(b"s", True, 1)[0] is Outcome.NON_NUMERIC
    assert store.arithmetic(b"missing", True, 1)[0] is Outcome.NOT_FOUND
    store.store(b"set", b"g", b"9", 0, 0)
    assert store.arithmetic(b"g", True, 1)[:2] == (Outcome.STORED, 10)
    item = store.peek(b"g")
    assert item is not None and item.value == b"10"


def test_expiry_relative_absolute_negative(store: Store, clock: FakeClock) -> None:
    now = int(clock.now)
    store.store(b"set", b"rel", b"x", 0, 10)
    store.store(b"set", b"abs", b"x", 0, now + MAX_RELATIVE_EXPTIME + 100)
    store.store(b"set", b"past", b"x", 0, MAX_RELATIVE_EXPTIME + 1)
    store.store(b"set", b"neg", b"x", 0, -1)
    assert store.get(b"past") is None and store.get(b"neg") is None
    clock.now += 9
    assert store.get(b"rel") is not None
    clock.now += 1
    assert store.get(b"rel") is None
    assert store.get(b"abs") is not None
    assert store.stats.get_expired == 3


def test_touch_and_gat_change_expiry_not_cas(store: Store, clock: FakeClock) -> None:
    store.store(b"set", b"k", b"x", 0, 5)
    before = store.peek(b"k")
    assert before is not None
    assert store.touch(b"k", 100)
    clock.now += 50
    item = store.get_and_touch(b"k", 0)
    assert item is not None and item.cas == before.cas and item.expires == 0


def test_lru_eviction_near_the_limit(clock: FakeClock) -> None:
    store = Store(memory_limit=100_000, clock=clock)
    for i in range(200):
        store.store(b"set", b"k%d" % i, b"v" * 1000, 0, 0)
        store.get(b"k0")  # k0 stays hot
    # the limit counts what the items cost the process (store_bytes), not memcached's bytes
    assert store.bytes < store.store_bytes <= 100_000
    assert store.store_bytes > 100_000 - 2 * 1100
    assert store.peek(b"k0") is not None
    assert store.peek(b"k1") is None
    assert store.stats.evictions == 200 - len(store.items)


def test_flush_all_now_and_delayed(store: Store, clock: FakeClock) -> None:
    store.store(b"set", b"a", b"1", 0, 0)
    store.flush_all()
    assert store.get(b"a") is None
    store.store(b"set", b"b", b"1", 0, 0)
    store.flush_all(10)
    clock.now += 5
    assert store.get(b"b") is not None
    clock.now += 5
    assert store.get(b"b") is None
    store.store(b"set", b"c", b"1", 0, 0)
    assert store.get(b"c") is not None


def test_reap_drops_expired_items(store: Store, clock: FakeClock) -> None:
    for i in range(50):
        store.store(b"set", b"k%d" % i, b"x", 0, 1 + i % 2)
    clock.now += 1
    assert store.reap() == 25
    assert len(store.items) == 25
    assert store.bytes == sum(item.size for _, item in store.each_item())


def test_the_crawl_drops_expired_items_the_cold_end_hides(clock: FakeClock) -> None:
    """reap() looks at the LRU's cold end only: behind a long-lived item, expired ones would
    hold their memory until evicted. The crawl walks every key, a chunk at a time."""
    store = Store(memory_limit=1 << 30, clock=clock)
    for i in range(3000):
        store.store(b"set", b"live%d" % i, b"x", 0, 0)
    for i in range(5000):
        store.store(b"set", b"gone%d" % i, b"x" * 100, 0, 5)
    clock.now += 10
    held = store.record_bytes
    assert store.reap() == 0  # the 1,000 coldest items live
    chunks = list(store.crawl_expired(chunk=1024))
    assert len(chunks) == 8 and sum(chunks) == 5000
    assert len(store.items) == 3000 and all(k.startswith(b"live") for k in store.items)
    assert store.stats.crawler_reclaimed == 5000 and store.stats.crawler_items_checked == 8000
    assert store.record_bytes < held / 3
    assert store.bytes == sum(item.size for _, item in store.each_item())
    # a key replaced or deleted while the crawl runs is judged as it is then
    store.store(b"set", b"soon", b"x", 0, 5)
    store.store(b"set", b"late", b"x", 0, 5)
    crawl = store.crawl_expired(chunk=1)
    clock.now += 10
    store.store(b"set", b"late", b"y", 0, 0)
    assert sum(crawl) == 1 and store.get(b"late") is not None


def test_store_bytes_is_what_the_items_cost(clock: FakeClock) -> None:
    """The limit's figure matches what the allocator hands out for the items (tracemalloc),
    within 10%, for short and long values."""
    import tracemalloc

    for size in (10, 100, 3000):
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        store = Store(memory_limit=1 << 30, clock=clock)
        for i in range(20_000):
            store.store(b"set", b"k%012d" % i, b"v" * size, 0, 0)
        traced = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert 0.9 * traced <= store.store_bytes <= 1.1 * traced, (size, traced, store.store_bytes)
        assert store.store_bytes > store.bytes


def test_eviction_keeps_store_bytes_under_the_limit_through_churn(clock: FakeClock) -> None:
    store = Store(memory_limit=2 << 20, clock=clock)
    for i in range(60_000):
        store.store(b"set", b"k%012d" % i, b"v" * 100, 0, 0)
        assert store.store_bytes <= store.memory_limit
    assert store.store_bytes > store.memory_limit * 0.95
    assert store.stats.evictions == 60_000 - len(store.items)
    # the dict is repacked when churn grows its table: about 1.5x its items, not 3x
    assert sys.getsizeof(store.items) <= sys.getsizeof(dict(store.items)) * 2


def test_hits_mark_fetched_then_active_as_memcached(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.store(b"set", b"a", b"1", 0, 0)
    store.store(b"set", b"b", b"2", 0, 0)
    clock.now += 5
    first = store.get(b"a")
    assert first is not None
    facts = store.describe(b"a")
    assert facts is not None and facts.fetched and facts.last_access == int(clock.now) - 5
    assert store.keys_by_age() == [b"a", b"b"]  # the first hit does not move it
    store.get(b"a")
    facts = store.describe(b"a")
    assert facts is not None and facts.last_access == int(clock.now)
    assert store.keys_by_age() == [b"b", b"a"]  # the second stamps and moves it


def test_fetch_marks_hits_as_get_does(clock: FakeClock) -> None:
    """`fetch` (a plain get's path) marks the record itself, without an Item: each hit
    leaves the same records, in the same LRU order, with the same accounting as `get`."""
    by_get, by_fetch = Store(clock=clock), Store(clock=clock)
    for store in (by_get, by_fetch):
        store.store(b"set", b"a", b"1", 7, 0)
        store.store(b"set", b"b", b"2", 0, 100)
    clock.now += 5
    for key in (b"a", b"b", b"a", b"a", b"b"):
        by_get.get(key)
        assert by_fetch.fetch(key) is not None
        assert list(by_fetch.items.items()) == list(by_get.items.items())
        clock.now += 1
    assert by_fetch.fetch(b"a") == (7, 1, b"1")
    assert by_fetch.keys_by_age() == [b"a", b"b"]  # b's second hit moved it, then a's
    assert (by_fetch.bytes, by_fetch.record_bytes, by_fetch.next_expiry) == (
        by_get.bytes, by_get.record_bytes, by_get.next_expiry)


def test_fetch_without_cas_reads_as_the_full_header_does(clock: FakeClock) -> None:
    """A plain get's `fetch(with_cas=False)` reads only the flags of a hit that changes
    nothing; the items it leaves and the hits it counts are `fetch`'s, flags beyond 16 bits,
    expiring items (until they expire) and a pending flush_all included."""
    lean, full = Store(clock=clock), Store(clock=clock)
    flags = 0xFEDCBA98
    for store in (lean, full):
        store.store(b"set", b"a", b"1", flags, 0)
        store.store(b"set", b"b", b"22", 1, 3)  # expires 3 s from now
        store.store(b"set", b"c", b"333", 1 << 24, 0)
    seen = []
    lean_hits = 0
    for step in range(7):
        if step == 3:
            for store in (lean, full):
                store.flush_all(delay=2)  # flushes everything stored before then
        for key in (b"a", b"b", b"c"):
            hit, expected = lean.fetch(key, with_cas=False), full.fetch(key)
            assert (hit is None) == (expected is None)
            if hit is not None and expected is not None:
                assert (hit[0], hit[2]) == (expected[0], expected[2])
                lean_hits += hit[1] == 0  # (the cas unread: only the flags were)
                seen.append(hit[0])
            assert list(lean.items.items()) == list(full.items.items())
        clock.now += 1
    assert {flags, 1, 1 << 24} <= set(seen)  # each hit at least once, all gone at the end
    assert lean_hits == 2  # a's and c's third hits (b has an expiry; then a flush is pending)
    assert hit is None  # (c's last: flushed)
    assert (lean.stats.get_hits, lean.stats.get_misses) == (
        full.stats.get_hits, full.stats.get_misses)


def test_flush_all_gives_the_table_back(clock: FakeClock) -> None:
    store = Store(clock=clock)
    for i in range(10_000):
        store.store(b"set", b"k%d" % i, b"v", 0, 0)
    store.flush_all()
    assert (store.bytes, store.record_bytes, store.store_bytes) == (0, 0, 0)
    assert store.get(b"k1") is None


def test_next_expiry_tells_the_reaper_when_items_may_expire(store: Store,
                                                          clock: FakeClock) -> None:
    """The reaper sleeps until `next_expiry` (0: nothing may expire, it sleeps for good):
    every write lowers it and calls `on_expiry` when it moved earlier; a whole crawl makes
    it exact, an abandoned one keeps the bound it had; an empty store has none."""
    now = int(clock.now)
    moved: list[int] = []
    store.on_expiry = lambda: moved.append(store.next_expiry)
    store.store(b"set", b"forever", b"x", 0, 0)
    assert store.next_expiry == 0 and moved == []
    store.store(b"set", b"a", b"x", 0, 100)
    store.store(b"set", b"b", b"x", 0, 200)  # later: no call
    assert store.next_expiry == now + 100 and moved == [now + 100]
    store.touch(b"forever", 50)  # touch and gat change expiry
    assert store.next_expiry == now + 50 and moved[-1] == now + 50
    store.delete(b"forever")  # a lower bound: a deleted item's expiry stays...
    assert store.next_expiry == now + 50
    assert sum(store.crawl_expired()) == 0
    assert store.next_expiry == now + 100  # ...until a crawl makes it exact
    abandoned = store.crawl_expired(chunk=1)
    next(abandoned)
    abandoned.close()
    assert store.next_expiry == now + 100
    clock.now += 300
    assert store.reap() == 2 and not store.items and store.next_expiry == 0
    store.store(b"set", b"c", b"x", 0, 0)
    assert sum(store.crawl_expired()) == 0 and store.next_expiry == 0  # none expires
    calls = len(moved)
    store.flush_all(10)  # a delayed flush wakes the reaper too
    assert len(moved) == calls + 1


def test_on_expiry_fires_only_when_next_expiry_moves_earlier(store: Store,
                                                             clock: FakeClock) -> None:
    """Every way an item gets an expiry (a write, a touch, a replicated install) calls
    `on_expiry` exactly when `next_expiry` moved earlier; a crawl's end, which the reaper
    running it reads anyway, does not call it; a write during a crawl does."""
    now = int(clock.now)
    moved: list[int] = []
    store.on_expiry = lambda: moved.append(store.next_expiry)
    store.install(ItemState(b"i", b"x", 0, now + 300, 7))
    store.install(ItemState(b"j", b"x", 0, now + 400, 8))  # later: no call
    store.install(ItemState(b"k", b"x", 0, 0, 9))  # never expires: no call
    assert moved == [now + 300]
    store.store(b"set", b"a", b"x", 0, 200)
    store.store(b"set", b"a", b"x", 0, 250)  # a replacement, later: no call
    store.touch(b"k", 100)
    assert moved == [now + 300, now + 200, now + 100]
    crawl = store.crawl_expired(chunk=1)
    next(crawl)  # next_expiry is 0 while it runs: the first expiry stored lowers it
    store.store(b"set", b"b", b"x", 0, 500)
    assert moved[3:] == [now + 500]
    assert sum(crawl) == 0
    assert store.next_expiry == now + 100 and moved[4:] == []  # exact now, and no call
