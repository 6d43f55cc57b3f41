"""One item's record: the packed form the store keeps, and `Item`, the form commands read.

Theory of operation: a record is one immutable bytes object, a 29-byte header (CAS, expiry,
flags, last access, last update, bits) followed by the value, so an item costs three Python
objects in the store (key, record, dict slot) instead of a dozen; `decode` turns a record
into an `Item` whose fields commands may change, and `Item.record` packs it again (the
store's `save`). `allocated` says what a bytes object costs the allocator, which is what
the store's memory limit counts.
"""

from __future__ import annotations

import sys
from struct import Struct
from typing import Final

from memring.protocol.sizes import item_size

# A record's header: cas, expires (absolute, 0: never), flags, last_access, updated, bits.
HEADER: Final = Struct("<QqIIIB")
FLAGS_FIELD: Final = Struct("<I")
FLAGS_AT: Final = 16
EXPIRES_FIELD: Final = Struct("<q")
EXPIRES_AT: Final = 8
LAST_ACCESS_FIELD: Final = Struct("<I")
LAST_ACCESS_AT: Final = 20
BITS_AT: Final = HEADER.size - 1
VALUE_AT: Final = HEADER.size
FETCHED: Final = 1
STALE: Final = 2
TOKEN_SENT: Final = 4
KEY_BINARY: Final = 8
ACTIVE: Final = 16  # hit twice (do_item_bump); cleared when eviction gives it a second chance

_BYTES_OBJECT: Final = sys.getsizeof(b"")  # a bytes object's header and trailing NUL (33)


def allocated(length: int) -> int:
    """What a bytes object of `length` bytes takes from the allocator: pymalloc serves up
    to 512 bytes in 16-byte steps, glibc malloc the rest with an 8-byte chunk header."""
    size = _BYTES_OBJECT + length
    if size <= 512:
        return (size + 15) & ~15
    return (size + 23) & ~15


class Item:
    """One item as read from its record: the header's fields, free to change before
    `Store.save` writes them back, and the value (see `value_of` once stored)."""

    __slots__ = ("bits", "cas", "expires", "flags", "key_length", "last_access", "updated",
                 "value")

    def __init__(self, value: bytes | memoryview, flags: int, expires: int, key_length: int,
                 now: int, cas: int = 0, last_access: int = 0, bits: int = 0) -> None:
        self.value = value
        self.flags = flags
        self.expires = expires
        self.key_length = key_length
        self.updated = now
        self.cas = cas
        self.last_access = last_access or now
        self.bits = bits

    @property
    def fetched(self) -> bool:
        """Hit at least once."""
        return bool(self.bits & FETCHED)

    @fetched.setter
    def fetched(self, on: bool) -> None:
        self.bits = self.bits | FETCHED if on else self.bits & ~FETCHED

    @property
    def active(self) -> bool:
        """Hit again since it last moved to the LRU's end."""
        return bool(self.bits & ACTIVE)

    @active.setter
    def active(self, on: bool) -> None:
        self.bits = self.bits | ACTIVE if on else self.bits & ~ACTIVE

    @property
    def stale(self) -> bool:
        """Invalidated by a meta I flag."""
        return bool(self.bits & STALE)

    @stale.setter
    def stale(self, on: bool) -> None:
        self.bits = self.bits | STALE if on else self.bits & ~STALE

    @property
    def token_sent(self) -> bool:
        """A client holds the win token (meta W)."""
        return bool(self.bits & TOKEN_SENT)

    @token_sent.setter
    def token_sent(self, on: bool) -> None:
        self.bits = self.bits | TOKEN_SENT if on else self.bits & ~TOKEN_SENT

    @property
    def key_binary(self) -> bool:
        """Stored under a base64 key by a meta command."""
        return bool(self.bits & KEY_BINARY)

    @key_binary.setter
    def key_binary(self, on: bool) -> None:
        self.bits = self.bits | KEY_BINARY if on else self.bits & ~KEY_BINARY

    @property
    def size(self) -> int:
        """Bytes memcached would charge for the item (protocol.sizes.item_size)."""
        return item_size(self.key_length, len(self.value), self.flags)

    @property
    def suffix(self) -> bytes:
        """The " <flags> <bytes>" of a VALUE line."""
        return b" %d %d" % (self.flags, len(self.value))

    def record(self) -> bytes:
        """The header and the value as one record (copies the value)."""
        return HEADER.pack(self.cas, self.expires, self.flags, self.last_access,
                           self.updated, self.bits) + self.value


unpack_header: Final = HEADER.unpack_from

# A value up to this many bytes is read as a slice of its record (a copy), a longer one as a
# memoryview: below 4 KiB the copy costs less than the view (90-130 ns vs 210-310 ns, timeit).
VIEW_FROM: Final = 4096


def value_of(record: bytes) -> bytes | memoryview:
    """The value a record holds, without copying a long one."""
    if len(record) - VALUE_AT < VIEW_FROM:
        return record[VALUE_AT:]
    return memoryview(record)[VALUE_AT:]


def flags_of(record: bytes) -> int:
    """A record's client flags, read byte by byte: native code when compiled, where the
    header's unpack is a call, a tuple and boxed ints (docs/benchmarks.md "Round seven:
    backend")."""
    at = FLAGS_AT
    return record[at] | record[at + 1] << 8 | record[at + 2] << 16 | record[at + 3] << 24


def has_expiry(record: bytes) -> bool:
    """Whether a record has an expiry (a byte of its expiry field set), read as `flags_of`
    reads."""
    at = EXPIRES_AT
    return (record[at] | record[at + 1] | record[at + 2] | record[at + 3] | record[at + 4]
            | record[at + 5] | record[at + 6] | record[at + 7]) != 0


def decode(key_length: int, record: bytes) -> Item:
    """The item a record holds; its value as `value_of` reads it."""
    cas, expires, flags, last_access, updated, bits = unpack_header(record)
    return Item(value_of(record), flags, expires, key_length, updated, cas, last_access, bits)


def expiry_of(record: bytes) -> int:
    """A record's absolute expiry (0: never), without decoding the rest."""
    return int(EXPIRES_FIELD.unpack_from(record, EXPIRES_AT)[0])


def record_size(key: bytes, record: bytes) -> int:
    """memcached's item size for a stored record."""
    return item_size(len(key), len(record) - HEADER.size, FLAGS_FIELD.unpack_from(record, FLAGS_AT)[0])


def record_cost(key: bytes, record: bytes) -> int:
    """What the key and record objects take from the allocator."""
    return allocated(len(key)) + allocated(len(record))
