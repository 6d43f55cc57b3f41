"""The in-memory item store: a hash map in LRU order under a memory limit.

Theory of operation: items live in one OrderedDict, least recently used first; a hit
moves an item to the end, a store that pushes `bytes` past the limit evicts from the
front. Expiry is lazy (an expired item is dropped when touched) plus `reap()`, which a
server calls periodically. Expiry times are absolute unix seconds, so replicas that
copy an item keep the same deadline. Every mutation takes the next 64-bit CAS value,
as memcached does, and the counters mirror memcached's `stats` names.

The store knows nothing of sockets or wire formats; the server maps its results to
replies.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from memring.protocol.numeric import U64_MAX, parse_stored_number
from memring.protocol.replication import ItemState
from memring.protocol.sizes import item_size, slab_class

# protocol.txt: an exptime above 30 days is an absolute unix time.
MAX_RELATIVE_EXPTIME = 60 * 60 * 24 * 30


class Outcome(Enum):
    STORED = "STORED"
    NOT_STORED = "NOT_STORED"
    EXISTS = "EXISTS"
    NOT_FOUND = "NOT_FOUND"
    NON_NUMERIC = "NON_NUMERIC"
    NO_MEMORY = "NO_MEMORY"


class Item:
    """One cached value. `suffix` is the pre-built " <flags> <bytes>" of a VALUE line."""

    __slots__ = ("cas", "expires", "fetched", "flags", "key_binary", "last_access",
                 "size", "stale", "suffix", "token_sent", "updated", "value")

    def __init__(self, value: bytes, flags: int, expires: int, size: int, now: int) -> None:
        self.value = value
        self.flags = flags
        self.expires = expires
        self.size = size
        self.cas = 0
        self.last_access = now
        self.updated = now
        self.fetched = False
        self.stale = False
        self.token_sent = False
        self.key_binary = False
        self.suffix = b" %d %d" % (flags, len(value))


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
    store_no_memory: int = 0
    store_too_large: int = 0
    total_items: int = 0
    touch_hits: int = 0
    touch_misses: int = 0

    def reset(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


class Store:
    def __init__(self, memory_limit: int = 64 << 20, max_item_size: int = 1 << 20,
                 clock: Callable[[], float] = time.time) -> None:
        self.memory_limit = memory_limit
        self.max_item_size = max_item_size
        self.clock = clock
        self.items: OrderedDict[bytes, Item] = OrderedDict()
        self.bytes = 0
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

    def next_cas(self) -> int:
        self.last_cas += 1
        return self.last_cas

    # -- lookup --------------------------------------------------------------------

    def _live(self, key: bytes, now: int) -> Item | None:
        """The item under key if it has neither expired nor been flushed."""
        item = self.items.get(key)
        if item is None:
            return None
        if item.expires and item.expires <= now:
            self._unlink(key, item)
            self.stats.get_expired += 1
            if not item.fetched:
                self.stats.expired_unfetched += 1
            return None
        if self.flush_before and self._flushed(item, now):
            self._unlink(key, item)
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
        if bump:
            self.items.move_to_end(key)
            item.last_access = now
            item.fetched = True
        return item

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
        self.items.move_to_end(key)
        item.last_access = now
        item.fetched = True
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
        self.items.move_to_end(key)
        item.last_access = now
        if self.on_change is not None:
            self.on_change(key)
        return True

    # -- mutation ------------------------------------------------------------------

    def _unlink(self, key: bytes, item: Item) -> None:
        del self.items[key]
        self.bytes -= item.size

    def _link(self, key: bytes, item: Item, cas: int = 0) -> Outcome:
        """Insert or replace under key with a new CAS, evicting LRU items to fit."""
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        if item.size > self.memory_limit:
            self.stats.store_no_memory += 1
            if old is not None and self.on_change is not None:
                self.on_change(key)
            return Outcome.NO_MEMORY
        item.cas = cas or self.next_cas()
        self.items[key] = item
        self.bytes += item.size
        self.stats.total_items += 1
        if self.bytes > self.memory_limit:
            self._evict()
        if self.on_change is not None:
            self.on_change(key)
        return Outcome.STORED

    def _evict(self) -> None:
        items = self.items
        now = self.now()
        while self.bytes > self.memory_limit and items:
            _key, victim = items.popitem(last=False)
            self.bytes -= victim.size
            if victim.expires and victim.expires <= now:
                self.stats.reclaimed += 1
            else:
                self.stats.evictions += 1
                if not victim.fetched:
                    self.stats.evicted_unfetched += 1
                cls = slab_class(victim.size)
                by_class = self.class_evictions.get(cls) or self.class_evictions.setdefault(
                    cls, ClassEvictions())
                by_class.evicted += 1
                by_class.evicted_nonzero += victim.expires != 0
                by_class.evicted_time = now - victim.last_access

    def make_item(self, key: bytes, value: bytes, flags: int, exptime: int) -> Item:
        now = self.now()
        return Item(value, flags, self.absolute_expiry(exptime, now),
                    item_size(len(key), len(value), flags), now)

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
                self.items.move_to_end(key)
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
        joined = current.value + value if command == b"append" else value + current.value
        return self._replace_value(key, current, joined)

    def _replace_value(self, key: bytes, current: Item, value: bytes) -> Outcome:
        item = Item(value, current.flags, current.expires,
                    item_size(len(key), len(value), current.flags), self.now())
        item.key_binary = current.key_binary
        if item.size > self.max_item_size:
            return Outcome.NOT_STORED
        return self._link(key, item)

    def delete(self, key: bytes) -> bool:
        item = self._live(key, self.now())
        if item is None:
            self.stats.delete_misses += 1
            return False
        self._unlink(key, item)
        self.stats.delete_hits += 1
        if self.on_change is not None:
            self.on_change(key)
        return True

    def drop(self, key: bytes) -> None:
        """Remove key without counting it as a client delete (a failed overwrite)."""
        item = self.items.get(key)
        if item is not None:
            self._unlink(key, item)
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
        if cas_unique and item.cas != cas_unique:
            return Outcome.EXISTS, 0, item
        current = parse_stored_number(item.value)
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
            digits = digits.ljust(old_length)
            item.value = digits
            item.suffix = b" %d %d" % (item.flags, old_length)
            item.cas = self.next_cas()
            item.updated = self.now()
            self.items.move_to_end(key)
            if self.on_change is not None:
                self.on_change(key)
            return Outcome.STORED, value, item
        self._replace_value(key, item, digits)
        return Outcome.STORED, value, self.items.get(key)

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

    def flush_all(self, delay: int = 0) -> None:
        self.stats.cmd_flush += 1
        self._settle_flush(self.now())
        if delay > 0:
            self.flush_before = self.absolute_expiry(delay) - 1
        else:
            # An immediate flush: everything stored so far is gone. memcached marks the
            # moment with a CAS watermark, which spends one CAS value; so do we.
            self.items.clear()
            self.bytes = 0
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
        item = Item(state.value, state.flags, state.expires,
                    item_size(len(key), len(state.value), state.flags), state.updated)
        item.last_access = self.now()
        item.cas = state.cas
        item.stale = state.stale
        item.key_binary = state.key_binary
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        if state.cas > self.last_cas:
            self.last_cas = state.cas
        if item.size > self.memory_limit:
            return
        self.items[key] = item
        self.bytes += item.size
        if self.bytes > self.memory_limit:
            self._evict()

    def remove(self, key: bytes) -> None:
        """A replicated delete: no stats, no expiry check."""
        old = self.items.pop(key, None)
        if old is not None:
            self.bytes -= old.size

    def apply_flush(self, flush_before: int) -> None:
        """A replicated flush_all: 0 empties the store, else a delayed flush's deadline."""
        self._settle_flush(self.now())
        if flush_before:
            self.flush_before = flush_before
            return
        self.items.clear()
        self.bytes = 0
        self.flush_before = 0

    def reap(self, budget: int = 1000) -> int:
        """Drop up to `budget` expired or flushed items from the LRU's cold end."""
        now = self.now()
        dropped = 0
        for key in list(self._oldest(budget)):
            item = self.items.get(key)
            if item is None:
                continue
            if (item.expires and item.expires <= now) or (
                    self.flush_before and self._flushed(item, now)):
                self._unlink(key, item)
                self.stats.reclaimed += 1
                dropped += 1
        if not dropped:
            self._settle_flush(now)
        return dropped

    def _settle_flush(self, now: int) -> None:
        """Once a delayed flush_all is due, remove what it flushed in one pass and forget it:
        a later flush_all must not bring those items back by replacing its deadline (found
        by tests/unit/test_follower_apply.py: leader and follower then disagreed)."""
        if self.flush_before and self.flush_before <= now:
            for key, item in list(self.items.items()):
                if self._flushed(item, now):
                    self._unlink(key, item)
            self.flush_before = 0

    def _oldest(self, count: int) -> list[bytes]:
        keys = []
        for key in self.items:
            keys.append(key)
            if len(keys) >= count:
                break
        return keys

    # -- reading without touching (stats, dumps) ------------------------------------------

    def reset_stats(self) -> None:
        """`stats reset`: every counter back to zero (the items stay)."""
        self.stats.reset()
        self.class_evictions.clear()

    def keys_by_age(self) -> list[bytes]:
        """Every key, least recently used first: a snapshot a dump walks while the store
        changes (about 8 bytes a key: the key objects themselves are shared)."""
        return list(self.items)

    def describe(self, key: bytes) -> ItemFacts | None:
        """The item under `key` as the dumps show it, without a fetch, an LRU bump or
        expiry (None once it is gone)."""
        item = self.items.get(key)
        if item is None:
            return None
        now = self.now()
        live = not ((item.expires and item.expires <= now)
                    or (self.flush_before and self._flushed(item, now)))
        return ItemFacts(len(item.value), item.expires, item.last_access, item.cas,
                         item.fetched, item.size, item.key_binary, bool(live))

    def set_memory_limit(self, limit: int) -> None:
        self.memory_limit = limit
        if self.bytes > limit:
            self._evict()
