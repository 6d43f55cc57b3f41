"""memcached's administration commands: `lru_crawler`, `lru`, `slabs` and `watch`.

Replies follow proto_text.c of memcached 1.6.18 (process_lru_crawler_command, process_lru_command,
process_slabs_command, process_watch_command), checked live against it in
tests/compat/test_stats_differential.py. What they tune lives in RuntimeSettings, which
`stats settings` prints. What memring actually does:
- `lru_crawler crawl` reclaims expired items from the cold end of the LRU (Store.reap), as
  the reaper does every few seconds anyway; `lru_crawler metadump` streams the items
  (backend.item_dumps) and counts as a running crawl meanwhile (BUSY to a second one).
- `slabs reassign` of two valid, different classes answers NOSPARE, the truth for a store that
  allocates each item on its own and so never has a spare slab page to move.
- `watch` answers OK and then holds the connection, as memcached does, but memring writes no
  log lines to it (it has no fetch/mutation/eviction log stream); log_watchers counts it.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator

from memring.backend.item_dumps import StreamedReply, metadump, parse_classes
from memring.backend.runtime_settings import RuntimeSettings
from memring.backend.store import Store
from memring.protocol.numeric import parse_double, parse_i32, parse_u32_truncated
from memring.protocol.sizes import SLAB_CHUNK_SIZES

ERROR = b"ERROR\r\n"
OK = b"OK\r\n"
_BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
_CRAWLER_DISABLED = b"CLIENT_ERROR lru crawler disabled\r\n"
_CRAWLER_BUSY = b"BUSY currently processing crawler request\r\n"
_BADCLASS = b"BADCLASS invalid class id\r\n"
_NOTSTARTED = b"NOTSTARTED no items to crawl\r\n"
# memcached's watch log types (logger.h): each token after `watch` must be one of them
WATCH_TYPES = frozenset({b"rawcmds", b"evictions", b"fetchers", b"mutations", b"sysevents",
                         b"connevents", b"proxyreqs", b"proxyevents", b"proxyuser"})
POWER_LARGEST = len(SLAB_CHUNK_SIZES)  # the highest slab class id memcached's defaults make


class AdminCommands:
    """The replies of the administration commands, and the state they change."""

    def __init__(self, settings: RuntimeSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.crawler_starts = 0  # stats lru_crawler_starts
        self.crawling = False  # a metadump is streaming (stats lru_crawler_running)
        self.watchers = 0  # connections that ran `watch` and are still open (log_watchers)

    # -- lru_crawler -------------------------------------------------------------------

    def lru_crawler(self, args: list[bytes], pipelined: bool = False) -> bytes:
        """The reply; a metadump raises StreamedReply with its chunks. `pipelined`: replies
        of earlier commands are still waiting to be sent (memcached refuses a metadump then)."""
        settings = self.settings
        if len(args) == 2:
            sub, value = args
            if sub in (b"crawl", b"metadump"):
                if not settings.lru_crawler:
                    return _CRAWLER_DISABLED
                if sub == b"metadump" and pipelined:
                    return b"ERROR cannot pipeline other commands before metadump\r\n"
                if self.crawling:
                    return _CRAWLER_BUSY
                if sub == b"crawl" and value == b"hash":
                    return b"ERROR an unknown error happened\r\n"  # only metadump walks the hash
                classes = parse_classes(b"all" if value == b"hash" else value)
                if classes is None:
                    return _BADCLASS
                if not classes:
                    return _NOTSTARTED
                self.crawler_starts += 1
                if sub == b"crawl":
                    self.store.reap()
                    return OK
                raise StreamedReply(self._crawl(metadump(self.store, classes)))
            if sub in (b"tocrawl", b"sleep"):
                number = parse_u32_truncated(value)
                if number is None:
                    return _BAD_FORMAT
                if sub == b"tocrawl":
                    settings.lru_crawler_tocrawl = number
                elif number > 1000000:
                    return b"CLIENT_ERROR sleep must be one second or less\r\n"
                else:
                    settings.lru_crawler_sleep = number
                return OK
        if len(args) == 1 and args[0] == b"enable":
            if settings.lru_crawler:
                return b"ERROR failed to start lru crawler thread\r\n"  # it is running
            settings.lru_crawler = True
            return OK
        if len(args) == 1 and args[0] == b"disable":
            settings.lru_crawler = False  # memcached answers OK when it was off already
            return OK
        return ERROR

    def _crawl(self, chunks: Iterator[bytes]) -> Generator[bytes, None, None]:
        """The dump's chunks, marking the crawler busy from the first to the last."""
        self.crawling = True
        try:
            yield from chunks
        finally:
            self.crawling = False

    # -- lru -------------------------------------------------------------------------

    def lru(self, args: list[bytes]) -> bytes:
        """`lru tune|mode|temp_ttl ...`; a last token noreply hides the reply."""
        reply = self._lru(args)
        return b"" if args[-1] == b"noreply" else reply

    def _lru(self, args: list[bytes]) -> bytes:
        settings = self.settings
        sub = args[0]
        if sub == b"tune" and len(args) >= 5:
            pct_hot, pct_warm = parse_u32_truncated(args[1]), parse_u32_truncated(args[2])
            hot_factor, warm_factor = parse_double(args[3]), parse_double(args[4])
            if pct_hot is None or pct_warm is None or hot_factor is None or warm_factor is None:
                return ERROR
            if pct_hot + pct_warm > 80:
                return b"ERROR hot and warm pcts must not exceed 80\r\n"
            if hot_factor <= 0 or warm_factor <= 0:
                return b"ERROR hot/warm age factors must be greater than 0\r\n"
            settings.hot_lru_pct, settings.warm_lru_pct = pct_hot, pct_warm
            settings.hot_max_factor, settings.warm_max_factor = hot_factor, warm_factor
            return OK
        if sub == b"mode" and len(args) >= 2:
            if args[1] not in (b"flat", b"segmented"):
                return ERROR
            settings.lru_segmented = args[1] == b"segmented"
            return OK
        if sub == b"temp_ttl" and len(args) >= 2:
            ttl = parse_i32(args[1])
            if ttl is None:
                return ERROR
            settings.temp_lru = ttl >= 0
            if ttl >= 0:
                settings.temporary_ttl = ttl
            return OK
        return ERROR

    # -- slabs -----------------------------------------------------------------------

    def slabs(self, args: list[bytes]) -> bytes:
        """`slabs reassign <src> <dst>` and `slabs automove <0|1|2>|ratio <r>`."""
        if len(args) == 3 and args[0] == b"reassign":
            src, dst = parse_i32(args[1]), parse_i32(args[2])
            if src is None or dst is None:
                return _BAD_FORMAT
            if src == dst:
                return b"SAME src and dst class are identical\r\n"
            # src -1 asks memcached to pick a class with a spare page: there is none
            if not (0 <= src <= POWER_LARGEST and 0 <= dst <= POWER_LARGEST):
                return b"BADCLASS invalid src or dst class id\r\n"
            return b"NOSPARE source class has no spare pages\r\n"
        if len(args) >= 2 and args[0] == b"automove":
            reply = self._automove(args)
            return b"" if args[-1] == b"noreply" else reply
        return ERROR

    def _automove(self, args: list[bytes]) -> bytes:
        if args[1] == b"ratio":
            ratio = parse_double(args[2]) if len(args) >= 3 else None
            if ratio is None:
                return ERROR
            self.settings.slab_automove_ratio = ratio
            return OK
        level = parse_u32_truncated(args[1])
        if level is None:
            return _BAD_FORMAT
        if level > 2:
            return ERROR
        self.settings.slab_automove = level
        return OK

    # -- watch -----------------------------------------------------------------------

    @staticmethod
    def watch_refusal(args: list[bytes]) -> bytes | None:
        """None if `watch <args>` may start, else its reply (noreply hides it: memcached reads
        a trailing noreply as one more log type, an unknown one)."""
        if all(arg in WATCH_TYPES for arg in args):
            return None
        return b"" if args[-1] == b"noreply" else ERROR
