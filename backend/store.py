"""The in-memory item store: one packed record per item in a dict kept in LRU order,
under a memory limit that counts what the process pays for its items.

Theory of operation: `items` maps each key to one immutable record, a 29-byte header
(CAS, expiry, flags, last access, last update, bits) followed by the value; a read
decodes it into an `Item` whose `value` is a memoryview of the record (no copy; a slice
below VIEW_FROM bytes, which costs less), and a change writes a new record back (`save`).
Three Python objects per item (key, record, dict slot) instead of a dozen: measured in
docs/benchmarks.md "Memory per item". The get and gets replies read (flags, cas, value)
straight from the record (`fetch`).

The dict's insertion order is the LRU. Hits follow memcached's do_item_bump: the first
marks an item fetched, the second marks it active, stamps its access time and moves it
to the end, later ones write nothing; eviction takes the oldest keys from the front and
gives an active item a second chance (moved to the end, mark cleared). Evicting one key
at a time from a dict's front rescans the holes deletions leave (66 us per set measured
at 700k items), so eviction frees a batch: down to the limit minus limit >> 9.

Two totals: `bytes` is memcached's (protocol.sizes.item_size, what `stats bytes`
reports), `store_bytes` what the items really cost (key and record allocations plus the
dict's table); eviction keeps `store_bytes` under `memory_limit`.

Expiry is lazy (an expired item is dropped when touched) plus `reap()`, which a server
calls while items may expire: `next_expiry` is the earliest expiry any stored item may have
(0: none has one), lowered by every write and made exact by each `crawl_expired`, and
`on_expiry` tells the server's reaper when it moved earlier, so that an idle node whose
items never expire (or that holds none) runs no timer for them. Expiry times are absolute unix seconds, so replicas that copy an
item keep the same deadline. Every mutation takes the next 64-bit CAS value, as
memcached does, and the counters mirror memcached's `stats` names.

The store knows nothing of sockets or wire formats; the server maps its results to
replies.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from enum import Enum
from itertools import islice
from typing import Final

from memring.backend.item_record import (
    ACTIVE,
    BITS_AT,
    FETCHED,
    FLAGS_AT,
    FLAGS_FIELD,
    LAST_ACCESS_AT,
    LAST_ACCESS_FIELD,
    Item,
    allocated,
    decode,
    expiry_of,
    flags_of,
    has_expiry,
    record_cost,
    record_size,
    unpack_header,
    value_of,
)
from memring.netio.heap import heap_trim
from memring.protocol.numeric import U64_MAX, parse_stored_number
from memring.protocol.replication import ItemState
from memring.protocol.sizes import slab_class

# protocol.txt: an exptime above 30 days is an absolute unix time.
MAX_RELATIVE_EXPTIME: Final = 60 * 60 * 24 * 30

# Eviction frees down to the limit minus limit >> EVICTION_SLACK_SHIFT (0.2%), taking
# at most EVICTION_BATCH keys per scan of the dict's front.
EVICTION_SLACK_SHIFT: Final = 9
EVICTION_BATCH: Final = 1024

TRIM_AFTER_TABLE: Final = 1 << 20  # a repacked dict table this large is worth a malloc_trim

_EMPTY_DICT: Final = sys.getsizeof({})


class Outcome(Enum):
    STORED = "STORED"
    NOT_STORED = "NOT_STORED"
    EXISTS = "EXISTS"
    NOT_FOUND = "NOT_FOUND"
    NON_NUMERIC = "NON_NUMERIC"
    NO_MEMORY = "NO_MEMORY"


@dataclass(frozen=True, slots=True)
class ItemFacts:
    """What the dumps (stats cachedump, lru_crawler metadump) show of one item."""

    value_length: int
    expires: int  # absolute unix seconds, 0: never
    last_access: int  # unix seconds
    cas: int
    fetched: bool
    size: int  # bytes memcached would charge (protocol.sizes.item_size)
    key_binary: bool  # stored by a meta command with a base64 key
    live: bool  # neither expired nor flushed


@dataclass(slots=True)
class ClassEvictions:
    """Evictions from one slab class, as `stats items` names them."""

    evicted: int = 0
    evicted_nonzero: int = 0  # evicted items that had an expiry time
    evicted_time: int = 0  # seconds since the last evicted item was last accessed


@dataclass(slots=True)
class StoreStats:
    """Counters named as memcached's `stats` names them."""

    cas_badval: int = 0
    cas_hits: int = 0
    cas_misses: int = 0
    cmd_flush: int = 0
    cmd_get: int = 0
    cmd_meta: int = 0
    cmd_set: int = 0
    cmd_touch: int = 0
    decr_hits: int = 0
    decr_misses: int = 0
    delete_hits: int = 0
    delete_misses: int = 0
    evictions: int = 0
    expired_unfetched: int = 0
    evicted_unfetched: int = 0
    get_expired: int = 0
    get_flushed: int = 0
    get_hits: int = 0
    get_misses: int = 0
    incr_hits: int = 0
    incr_misses: int = 0
    reclaimed: int = 0
    crawler_reclaimed: int = 0  # expired items the crawl dropped (memcached's LRU crawler)
    crawler_items_checked: int = 0
    store_no_memory: int = 0
    store_too_large: int = 0
    total_items: int = 0
    touch_hits: int = 0
    touch_misses: int = 0

    def reset(self) -> None:
        for counter in fields(self):  # not __slots__: a class compiled by mypyc has none
            setattr(self, counter.name, 0)


class Store:
    def __init__(self, memory_limit: int = 64 << 20, max_item_size: int = 1 << 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.memory_limit = memory_limit
        self.max_item_size = max_item_size
        self.clock = clock
        # key -> record (see Item.record), least recently used first.
        self.items: dict[bytes, bytes] = {}
        self.bytes = 0  # memcached's figure: the sum of item_size
        self.record_bytes = 0  # what the keys and records take from the allocator
        self._table_bytes = _EMPTY_DICT  # the dict's size after its last growth (_fit)
        self.last_cas = 0
        self.stats = StoreStats()
        self.class_evictions: dict[int, ClassEvictions] = {}  # by slab class (stats items)
        # A delayed flush_all: items last updated at or before `flush_before` vanish
        # once the clock reaches it.
        self.flush_before = 0
        # Replication's hook (backend.replication.mutation_log): called with the key of an item a
        # client changed, or None after flush_all; never for expiry or eviction, which stay
        # local. None (the default) costs one attribute test per mutation.
        self.on_change: Callable[[bytes | None], None] | None = None
        # The earliest expiry (unix s) an item stored may have; 0: none has one. A lower
        # bound between crawls (a deleted or replaced item's stays), exact after one.
        self.next_expiry = 0
        # The reaper's hook: called when `next_expiry` or a delayed flush moves earlier.
        self.on_expiry: Callable[[], None] | None = None

    @property
    def store_bytes(self) -> int:
        """What the items cost the process: keys, records and the dict's table."""
        return self.record_bytes + sys.getsizeof(self.items) - _EMPTY_DICT

    # -- time ----------------------------------------------------------------------

    def now(self) -> int:
        return int(self.clock())

    def absolute_expiry(self, exptime: int, now: int | None = None) -> int:
        """0 = never; relative up to 30 days; beyond that absolute; negative = expired."""
        if exptime == 0:
            return 0
        if exptime < 0:
            return 1
        if exptime > MAX_RELATIVE_EXPTIME:
            return exptime
        return (self.now() if now is None else now) + exptime

    def _expires_at(self, expires: int, *, wake: bool = True) -> None:
        """An item stored with `expires` (0: never): lower `next_expiry` to it if it is
        earlier, and then, with `wake`, tell the reaper (`on_expiry`)."""
        if expires and (not self.next_expiry or expires < self.next_expiry):
            self.next_expiry = expires
            if wake and self.on_expiry is not None:
                self.on_expiry()

    def next_cas(self) -> int:
        self.last_cas += 1
        return self.last_cas

    # -- lookup --------------------------------------------------------------------

    def item(self, key: bytes) -> Item | None:
        """The item under key as stored, expired or not (replication reads, dumps)."""
        record = self.items.get(key)
        return None if record is None else decode(len(key), record)

    def _live(self, key: bytes, now: int) -> Item | None:
        """The item under key if it has neither expired nor been flushed."""
        record = self.items.get(key)
        if record is None:
            return None
        item = decode(len(key), record)
        if item.expires and item.expires <= now:
            self._unlink(key)
            self.stats.get_expired += 1
            if not item.fetched:
                self.stats.expired_unfetched += 1
            return None
        if self.flush_before and self._flushed(item, now):
            self._unlink(key)
            self.stats.get_flushed += 1
            return None
        return item

    def _flushed(self, item: Item, now: int) -> bool:
        return self.flush_before <= now and item.updated <= self.flush_before

    def peek(self, key: bytes) -> Item | None:
        """The live item without counting a fetch or bumping it in the LRU."""
        return self._live(key, self.now())

    def get(self, key: bytes, bump: bool = True) -> Item | None:
        now = self.now()
        item = self._live(key, now)
        stats = self.stats
        stats.cmd_get += 1
        if item is None:
            stats.get_misses += 1
            return None
        stats.get_hits += 1
        if bump and not item.bits & ACTIVE:
            self.fetched(key, item, now)
        return item

    def fetch(self, key: bytes, with_cas: bool = True
              ) -> tuple[int, int, bytes | memoryview] | None:
        """`get` for the get and gets replies, without building an Item: (flags, cas,
        value) of the live item, a view of its record; counted and marked as `get` does.
        Without `with_cas`, the cas is not to be read (0 when a hit changes nothing: already
        active, no expiry, no flush pending, most gets; then only its flags are read from the
        header)."""
        record = self.items.get(key)
        if record is None:
            self.stats.cmd_get += 1
            self.stats.get_misses += 1
            return None
        if (not with_cas and record[BITS_AT] & ACTIVE and not self.flush_before
                and not has_expiry(record)):
            stats = self.stats
            stats.cmd_get += 1
            stats.get_hits += 1
            return flags_of(record), 0, value_of(record)
        cas, expires, flags, _, updated, bits = unpack_header(record)
        # the clock only when something reads it (most items: no expiry, no flush pending,
        # already active): a call and a float less per get
        now = self.now() if expires or self.flush_before or not bits & ACTIVE else 0
        if (expires and expires <= now) or (
                self.flush_before and self.flush_before <= now and updated <= self.flush_before):
            self.get(key)  # the expiry or flush, counted as get counts it
            return None
        if not bits & ACTIVE:
            self._hit(key, record, bits, expires, now)
        stats = self.stats
        stats.cmd_get += 1
        stats.get_hits += 1
        return flags, cas, value_of(record)

    def fetched(self, key: bytes, item: Item, now: int) -> None:
        """A hit, as memcached's do_item_bump counts it: the first marks the item fetched;
        the second marks it active, stamps its access time and moves it to the LRU's end;
        later hits write nothing until eviction clears the mark."""
        if item.bits & ACTIVE:
            return
        if not item.bits & FETCHED:
            item.bits |= FETCHED
            self.save(key, item)
            return
        item.bits |= ACTIVE
        item.last_access = now
        self.save(key, item, bump=True)

    def _hit(self, key: bytes, record: bytes, bits: int, expires: int, now: int) -> None:
        """`fetched` for `fetch`, on the record itself: the same marks, access time and LRU
        move, without an Item decoded and packed again (a fifth of the gets under a 90/10
        load mark a record: docs/benchmarks.md "Round six: backend")."""
        marked = bytearray(record)
        if not bits & FETCHED:
            marked[BITS_AT] = bits | FETCHED
            self.items[key] = bytes(marked)
        else:
            marked[BITS_AT] = bits | ACTIVE
            LAST_ACCESS_FIELD.pack_into(marked, LAST_ACCESS_AT, now)
            del self.items[key]  # to the LRU's end
            self.items[key] = bytes(marked)
        self._expires_at(expires)
        if bits & FETCHED:
            self._fit()

    def bump(self, key: bytes) -> None:
        """Move the item under key to the LRU's end (a failed add, as memcached does)."""
        record = self.items.pop(key, None)
        if record is not None:
            self.items[key] = record

    def save(self, key: bytes, item: Item, bump: bool = False) -> None:
        """Write a changed item back under key (if it is still there), in place in the
        LRU or, with `bump`, moved to its end."""
        old = self.items.pop(key, None) if bump else self.items.get(key)
        if old is None:
            return
        record = item.record()
        if len(record) != len(old) or item.flags != FLAGS_FIELD.unpack_from(old, FLAGS_AT)[0]:
            self.bytes += item.size - record_size(key, old)
            self.record_bytes += allocated(len(record)) - allocated(len(old))
        self.items[key] = record
        self._expires_at(item.expires)
        if bump:
            self._fit()

    def get_and_touch(self, key: bytes, exptime: int) -> Item | None:
        now = self.now()
        item = self._live(key, now)
        stats = self.stats
        stats.cmd_touch += 1  # gat counts as a touch only, not in cmd_get (1.6.18)
        if item is None:
            stats.touch_misses += 1
            return None
        stats.touch_hits += 1
        item.expires = self.absolute_expiry(exptime, now)
        item.last_access = now
        item.fetched = True
        item.active = True
        self.save(key, item, bump=True)
        if self.on_change is not None:
            self.on_change(key)
        return item

    def touch(self, key: bytes, exptime: int) -> bool:
        now = self.now()
        item = self._live(key, now)
        self.stats.cmd_touch += 1
        if item is None:
            self.stats.touch_misses += 1
            return False
        self.stats.touch_hits += 1
        item.expires = self.absolute_expiry(exptime, now)
        item.last_access = now
        self.save(key, item, bump=True)
        if self.on_change is not None:
            self.on_change(key)
        return True

    # -- mutation ------------------------------------------------------------------

    def _unlink(self, key: bytes) -> None:
        record = self.items.pop(key, None)
        if record is not None:
            self._forget(key, record)

    def _forget(self, key: bytes, record: bytes) -> None:
        self.bytes -= record_size(key, record)
        self.record_bytes -= record_cost(key, record)

    def _put(self, key: bytes, record: bytes, size: int) -> None:
        """Insert a record at the LRU's end (the key must be absent) and evict to fit."""
        self.items[key] = record
        self.bytes += size
        self.record_bytes += record_cost(key, record)
        self._fit()

    def _fit(self) -> None:
        """After an insertion: repack the dict if it just grew its table, then evict to the
        limit. A dict whose inserts and deletes churn fills its entries with holes and then
        grows to 3x its items (CPython's GROWTH_RATE): 101 B of table per item at 412k
        items in 128 MB, measured; a copy sizes it to 1.5x (50 B), once per growth."""
        table = sys.getsizeof(self.items)
        if table > self._table_bytes:
            fresh = dict(self.items)  # keeps the LRU order
            if sys.getsizeof(fresh) < table:
                self.items = fresh
                del fresh
                if table >= TRIM_AFTER_TABLE and heap_trim.malloc_trim is not None:
                    # the two tables let go were in the heap's middle: hand their pages back
                    # (at --memory 16 RSS stayed 1.31x the limit without, measured)
                    heap_trim.malloc_trim(0)
                table = sys.getsizeof(self.items)
            self._table_bytes = table
        if self.record_bytes + table - _EMPTY_DICT > self.memory_limit:
            self._evict()

    def _link(self, key: bytes, item: Item, cas: int = 0) -> Outcome:
        """Insert or replace under key with a new CAS, evicting LRU items to fit."""
        replaced = key in self.items
        self._unlink(key)
        size = item.size
        if size > self.memory_limit:
            self.stats.store_no_memory += 1
            if replaced and self.on_change is not None:
                self.on_change(key)
            return Outcome.NO_MEMORY
        item.cas = cas or self.next_cas()
        self._put(key, item.record(), size)
        self._expires_at(item.expires)
        self.stats.total_items += 1
        if self.on_change is not None:
            self.on_change(key)
        return Outcome.STORED

    def _evict(self) -> None:
        """Free LRU items down to the limit minus the slack, a batch of keys per scan."""
        items = self.items
        target = self.memory_limit - (self.memory_limit >> EVICTION_SLACK_SHIFT)
        now = self.now()
        # Each pass evicts or clears the active mark of every key it takes, so at most
        # 2 * len(items) keys are visited.
        while items and self.store_bytes > target:
            for key in list(islice(items, EVICTION_BATCH)):
                if self.store_bytes <= target:
                    return
                record = items.pop(key)
                if record[BITS_AT] & ACTIVE:
                    # Fetched since it last moved: a second chance at the LRU's end.
                    second = bytearray(record)
                    second[BITS_AT] &= ~ACTIVE
                    items[key] = bytes(second)
                    continue
                self._forget(key, record)
                self._count_eviction(decode(len(key), record), now)

    def _count_eviction(self, victim: Item, now: int) -> None:
        if victim.expires and victim.expires <= now:
            self.stats.reclaimed += 1
            return
        self.stats.evictions += 1
        if not victim.fetched:
            self.stats.evicted_unfetched += 1
        cls = slab_class(victim.size)
        by_class = self.class_evictions.get(cls) or self.class_evictions.setdefault(
            cls, ClassEvictions())
        by_class.evicted += 1
        by_class.evicted_nonzero += victim.expires != 0
        by_class.evicted_time = now - victim.last_access

    def make_item(self, key: bytes, value: bytes | memoryview, flags: int,
                  exptime: int) -> Item:
        now = self.now()
        return Item(value, flags, self.absolute_expiry(exptime, now), len(key), now)

    def store(self, command: bytes, key: bytes, value: bytes, flags: int, exptime: int,
              cas_unique: int = 0) -> Outcome:
        """The text storage commands; `command` is set/add/replace/append/prepend/cas."""
        self.stats.cmd_set += 1
        now = self.now()
        if command == b"set":
            return self._link(key, self.make_item(key, value, flags, exptime))
        current = self._live(key, now)
        if command == b"add":
            if current is not None:
                # memcached bumps the existing item on a failed add.
                self.bump(key)
                return Outcome.NOT_STORED
            return self._link(key, self.make_item(key, value, flags, exptime))
        if command == b"replace":
            if current is None:
                return Outcome.NOT_STORED
            return self._link(key, self.make_item(key, value, flags, exptime))
        if command == b"cas":
            if current is None:
                self.stats.cas_misses += 1
                return Outcome.NOT_FOUND
            if current.cas != cas_unique:
                self.stats.cas_badval += 1
                return Outcome.EXISTS
            self.stats.cas_hits += 1
            return self._link(key, self.make_item(key, value, flags, exptime))
        # append / prepend keep the item's flags and expiry.
        if current is None:
            return Outcome.NOT_STORED
        parts = (current.value, value) if command == b"append" else (value, current.value)
        return self._replace_value(key, current, b"".join(parts))

    def _replace_value(self, key: bytes, current: Item, value: bytes) -> Outcome:
        item = Item(value, current.flags, current.expires, len(key), self.now())
        item.key_binary = current.key_binary
        if item.size > self.max_item_size:
            return Outcome.NOT_STORED
        return self._link(key, item)

    def delete(self, key: bytes) -> bool:
        item = self._live(key, self.now())
        if item is None:
            self.stats.delete_misses += 1
            return False
        self._unlink(key)
        self.stats.delete_hits += 1
        if self.on_change is not None:
            self.on_change(key)
        return True

    def drop(self, key: bytes) -> None:
        """Remove key without counting it as a client delete (a failed overwrite)."""
        if key in self.items:
            self._unlink(key)
            if self.on_change is not None:
                self.on_change(key)

    def arithmetic(self, key: bytes, incr: bool, delta: int, cas_unique: int = 0,
                   count_miss: bool = True) -> tuple[Outcome, int, Item | None]:
        """incr/decr as unsigned 64-bit: incr wraps, decr floors at 0. `count_miss` False:
        a miss the caller turns into a create (binary incr/decr), not counted as a miss."""
        stats = self.stats
        item = self._live(key, self.now())
        if item is None:
            if count_miss and incr:
                stats.incr_misses += 1
            elif count_miss:
                stats.decr_misses += 1
            return Outcome.NOT_FOUND, 0, None
        # memcached's order (do_add_delta): an empty value is non-numeric before the CAS is
        # compared; any other value's CAS is compared before its digits are read
        if not len(item.value):
            return Outcome.NON_NUMERIC, 0, item
        if cas_unique and item.cas != cas_unique:
            return Outcome.EXISTS, 0, item
        current = parse_stored_number(bytes(item.value))
        if current is None:
            return Outcome.NON_NUMERIC, 0, item
        if incr:
            value = (current + delta) & U64_MAX
            stats.incr_hits += 1
        else:
            value = current - delta if delta < current else 0
            stats.decr_hits += 1
        digits = b"%d" % value
        old_length = len(item.value)
        if len(digits) <= old_length:
            # memcached rewrites in place, padding a shorter number with spaces.
            item.value = memoryview(digits.ljust(old_length))
            item.cas = self.next_cas()
            item.updated = self.now()
            self.save(key, item, bump=True)
            if self.on_change is not None:
                self.on_change(key)
            return Outcome.STORED, value, item
        self._replace_value(key, item, digits)
        return Outcome.STORED, value, self.item(key)

    def add_counter(self, key: bytes, initial: int, exptime: int) -> Item | None:
        """Binary incr/decr's create on a miss: `initial` stored as an add would store it
        (counted as neither a set nor a miss, as proto_bin.c complete_incr_bin); None if
        the key exists or the item does not fit."""
        if self._live(key, self.now()) is not None:
            return None
        item = self.make_item(key, b"%d" % initial, 0, exptime)
        if self._link(key, item) is not Outcome.STORED:
            return None
        return item

    def _clear(self) -> None:
        # A new dict rather than clear(): the old table goes back to the allocator at once.
        self.items = {}
        self.bytes = 0
        self.record_bytes = 0
        self._table_bytes = _EMPTY_DICT
        self.next_expiry = 0

    def flush_all(self, delay: int = 0) -> None:
        self.stats.cmd_flush += 1
        self._settle_flush(self.now())
        if delay > 0:
            self.flush_before = self.absolute_expiry(delay) - 1
            if self.on_expiry is not None:
                self.on_expiry()
        else:
            # An immediate flush: everything stored so far is gone. memcached marks the
            # moment with a CAS watermark, which spends one CAS value; so do we.
            self._clear()
            self.flush_before = 0
            self.next_cas()
        if self.on_change is not None:
            self.on_change(None)

    # -- replication (a follower applying the leader's item states) --------------------

    def install(self, state: ItemState) -> None:
        """Set an item exactly as the leader holds it: same CAS, expiry and flags.

        Draws no CAS, but keeps `last_cas` at or above every installed CAS so that this
        node, once leader, hands out only values no replica has seen.
        """
        key = state.key
        item = Item(state.value, state.flags, state.expires, len(key), state.updated)
        item.last_access = self.now()
        item.cas = state.cas
        item.stale = state.stale
        item.key_binary = state.key_binary
        self._unlink(key)
        if state.cas > self.last_cas:
            self.last_cas = state.cas
        size = item.size
        if size > self.memory_limit:
            return
        self._put(key, item.record(), size)
        self._expires_at(item.expires)

    def remove(self, key: bytes) -> None:
        """A replicated delete: no stats, no expiry check."""
        self._unlink(key)

    def apply_flush(self, flush_before: int) -> None:
        """A replicated flush_all: 0 empties the store, else a delayed flush's deadline."""
        self._settle_flush(self.now())
        if flush_before:
            self.flush_before = flush_before
            if self.on_expiry is not None:
                self.on_expiry()
            return
        self._clear()
        self.flush_before = 0

    def reap(self, budget: int = 1000) -> int:
        """Drop up to `budget` expired or flushed items from the LRU's cold end; one that
        looked at every item makes `next_expiry` exact."""
        now = self.now()
        dropped = 0
        whole = len(self.items) <= budget
        earliest = 0
        for key in list(islice(self.items, budget)):
            item = self.item(key)
            if item is None:
                continue
            if (item.expires and item.expires <= now) or (
                    self.flush_before and self._flushed(item, now)):
                self._unlink(key)
                self.stats.reclaimed += 1
                dropped += 1
            elif item.expires and (not earliest or item.expires < earliest):
                earliest = item.expires
        if not dropped:
            self._settle_flush(now)
        if whole:
            self.next_expiry = earliest
        return dropped

    def crawl_expired(self, chunk: int = 4096) -> Iterator[int]:
        """memcached's LRU crawler: reap() looks only at the LRU's cold end, so an expired item
        behind a live one would hold its memory until evicted (300k expired items kept the RSS
        growing under new keys). This walks a snapshot of the keys `chunk` at a time, drops
        the expired ones still stored, and yields after each chunk how many it dropped, so the
        server lets other work run between chunks. The snapshot costs 8 bytes a key while it
        runs; the expiry is read from the record without decoding it. A whole crawl makes
        `next_expiry` exact: the earliest expiry of the items it kept, or of those stored
        meanwhile (0 when none has one)."""
        keys = list(self.items)
        items = self.items
        stats = self.stats
        before, self.next_expiry = self.next_expiry, 0  # lowered again by what is stored
        earliest = 0
        finished = False
        try:
            for start in range(0, len(keys), chunk):
                now = self.now()
                dropped = 0
                for key in keys[start:start + chunk]:
                    record = items.get(key)
                    if record is None:
                        continue
                    expires = expiry_of(record)
                    if expires:
                        if expires <= now:
                            self._unlink(key)
                            dropped += 1
                        elif not earliest or expires < earliest:
                            earliest = expires
                stats.crawler_items_checked += min(chunk, len(keys) - start)
                stats.crawler_reclaimed += dropped
                yield dropped
            finished = True
        finally:
            if not finished:  # abandoned: only the old bound is known to hold
                earliest = before
            # (no wake-up: the reaper running the crawl reads `next_expiry` after it)
            self._expires_at(earliest, wake=False)

    def _settle_flush(self, now: int) -> None:
        """Once a delayed flush_all is due, remove what it flushed in one pass and forget it:
        a later flush_all must not bring those items back by replacing its deadline (found
        by tests/unit/test_follower_apply.py: leader and follower then disagreed)."""
        if self.flush_before and self.flush_before <= now:
            for key, record in list(self.items.items()):
                if self._flushed(decode(len(key), record), now):
                    self._unlink(key)
            self.flush_before = 0

    # -- reading without touching (stats, dumps) ------------------------------------------

    def reset_stats(self) -> None:
        """`stats reset`: every counter back to zero (the items stay)."""
        self.stats.reset()
        self.class_evictions.clear()

    def each_item(self) -> Iterator[tuple[bytes, Item]]:
        """Every (key, item), least recently used first, expired or not (the store must
        not change while this runs)."""
        for key, record in self.items.items():
            yield key, decode(len(key), record)

    def keys_by_age(self) -> list[bytes]:
        """Every key, least recently used first: a snapshot a dump walks while the store
        changes (about 8 bytes a key: the key objects themselves are shared)."""
        return list(self.items)

    def describe(self, key: bytes) -> ItemFacts | None:
        """The item under `key` as the dumps show it, without a fetch, an LRU bump or
        expiry (None once it is gone)."""
        item = self.item(key)
        if item is None:
            return None
        now = self.now()
        live = not ((item.expires and item.expires <= now)
                    or (self.flush_before and self._flushed(item, now)))
        return ItemFacts(len(item.value), item.expires, item.last_access, item.cas,
                         item.fetched, item.size, item.key_binary, bool(live))

    def set_memory_limit(self, limit: int) -> None:
        self.memory_limit = limit
        if self.store_bytes > limit:
            self._evict()
