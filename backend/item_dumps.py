"""`stats cachedump` and `lru_crawler metadump`: a store's items listed as memcached 1.6.18 lists them.

Theory of operation: a dump walks a snapshot of the keys (Store.keys_by_age, least recently used
first) and looks each key up when it reaches it, so it shows each item as it is then, skips the
ones gone meanwhile, and holds no more than the snapshot and one chunk of lines. Each dump is a
generator of chunks; the server sends every chunk and lets other connections run before asking
for the next (backend.server), so a dump of a large store neither builds an unbounded reply nor
stalls other clients. A chunk may be empty: the walk has only passed over items of other classes.

memring has one LRU where memcached has a hot, warm, cold and temp LRU per slab class: a
cachedump lists the class's items most recently used first (memcached: its COLD LRU from the
head), a metadump least recently used first (memcached: each class's LRUs from the tail), and
`metadump hash` uses the same order, memring's store having no hash table order of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator
from urllib.parse import quote

from memring.backend.store import ItemFacts, Store
from memring.protocol.sizes import slab_class

CACHEDUMP_LIMIT = 2 * 1024 * 1024  # items.c item_cachedump: "2MB max response size"
MAX_SLAB_CLASSES = 64  # memcached's MAX_NUMBER_OF_SLAB_CLASSES: valid ids are below it
KEYS_PER_CHUNK = 512  # keys looked at between two yields
_END = b"END\r\n"


class StreamedReply(Exception):
    """Raised by a command whose reply is a dump: the server sends `chunks` one by one and
    lets other connections run between them."""

    def __init__(self, chunks: Generator[bytes, None, None]) -> None:
        super().__init__()
        self.chunks = chunks


def walk(store: Store, visit: Callable[[ItemFacts], None], render: Callable[[], bytes]
         ) -> Generator[bytes, None, None]:
    """For replies that sum over the items (stats items, slabs, sizes): `visit` each item of
    a snapshot of the keys, an empty chunk every KEYS_PER_CHUNK keys, then `render()`."""
    for seen, key in enumerate(store.keys_by_age(), start=1):
        facts = store.describe(key)
        if facts is not None:
            visit(facts)
        if seen % KEYS_PER_CHUNK == 0:
            yield b""
    yield render()


def cachedump(store: Store, cls: int, limit: int) -> Generator[bytes, None, None]:
    """`stats cachedump <cls> <limit>`: `ITEM <key> [<bytes> b; <expiry> s]` lines, at most
    `limit` (0: all) and at most CACHEDUMP_LIMIT bytes with the END, then END. Items with a
    binary key are left out, as memcached leaves them out."""
    keys = store.keys_by_age()
    lines: list[bytes] = []
    used = shown = 0
    for seen, key in enumerate(reversed(keys), start=1):
        if limit and shown >= limit:
            break
        facts = store.describe(key)
        if facts is not None and not facts.key_binary and slab_class(facts.size) == cls:
            line = b"ITEM %s [%d b; %d s]\r\n" % (key, facts.value_length, facts.expires)
            if used + len(line) + len(_END) + 1 > CACHEDUMP_LIMIT:  # memcached: + "\0"
                break
            used += len(line)
            shown += 1
            lines.append(line)
        if seen % KEYS_PER_CHUNK == 0:
            yield b"".join(lines)
            lines.clear()
    lines.append(_END)
    yield b"".join(lines)


def parse_classes(spec: bytes) -> frozenset[int] | None:
    """The slab classes of `lru_crawler crawl|metadump <spec>`: "all", or ids separated by
    commas (empty pieces skipped, as strtok does); None if one is not a valid class id."""
    if spec == b"all":
        return frozenset(range(1, MAX_SLAB_CLASSES))
    classes = set()
    for piece in spec.split(b","):
        if not piece:
            continue
        if not piece.isdigit() or not 1 <= int(piece) < MAX_SLAB_CLASSES:
            return None
        classes.add(int(piece))
    return frozenset(classes)


def metadump(store: Store, classes: Collection[int]) -> Generator[bytes, None, None]:
    """`lru_crawler metadump`: one line per live item of `classes`, `key=<uri-encoded key>
    exp=<expiry or -1> la=<last access> cas= fetch=yes|no cls= size=` ending in a bare LF
    (crawler.c), then END with CRLF."""
    keys = store.keys_by_age()
    lines: list[bytes] = []
    for seen, key in enumerate(keys, start=1):
        facts = store.describe(key)
        if facts is not None and facts.live:
            cls = slab_class(facts.size)
            if cls in classes:
                lines.append(b"key=%s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\n" % (
                    quote(key, safe=b"-._~").encode(), facts.expires or -1,
                    facts.last_access, facts.cas, b"yes" if facts.fetched else b"no", cls,
                    facts.size))
        if seen % KEYS_PER_CHUNK == 0:
            yield b"".join(lines)
            lines.clear()
    lines.append(_END)
    yield b"".join(lines)
