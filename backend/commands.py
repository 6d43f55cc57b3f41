"""Text-protocol commands: request events in, reply bytes out, against one Store.

This is where memcached's replies are chosen; the codec has already validated the
syntax and the server owns the sockets. Replies are appended to a list that the
connection writes in one batch. Meta commands live in `backend.meta_commands`.

In cluster mode a `WriteFence` (backend.cluster_member) guards every mutating command: the
handler asks it just before applying one, and a refusal (a SERVER_ERROR line) is sent instead
of applying the write (classic noreply hides it; meta `q` never hides an error).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final, Protocol

from memring.backend.binary_commands import BinaryCommands
from memring.backend.meta_commands import MetaCommands
from memring.backend.stats import StatsReport
from memring.backend.store import Outcome, Store
from memring.netio.heap import TRIM_THRESHOLD, heap_trim
from memring.protocol.binary_frames import BinaryRequest
from memring.protocol.binary_parser import BinaryReply
from memring.protocol.requests import (
    Arithmetic,
    Authenticated,
    CacheMemlimit,
    Delete,
    FlushAll,
    Get,
    Lru,
    LruCrawler,
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaGet,
    MetaNoop,
    MetaSet,
    ProtocolError,
    Quit,
    RefreshCerts,
    Shutdown,
    Slabs,
    Stats,
    Touch,
    Verbosity,
    Version,
    Watch,
)
from memring.protocol.requests import (
    Store as StoreRequest,
)
from memring.protocol.responses import TLS_NOT_ENABLED, refresh_certs_reply

END: Final = b"END\r\n"
STORED: Final = b"STORED\r\n"
_OUTCOME_REPLY = {
    Outcome.STORED: STORED,
    Outcome.NOT_STORED: b"NOT_STORED\r\n",
    Outcome.EXISTS: b"EXISTS\r\n",
    Outcome.NOT_FOUND: b"NOT_FOUND\r\n",
    Outcome.NO_MEMORY: b"SERVER_ERROR out of memory storing object\r\n",
}
_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"


class WriteFence(Protocol):
    def refusal(self) -> bytes | None:
        """None if a write may be acknowledged now, else the SERVER_ERROR line to send."""

    def read_refusal(self) -> bytes | None:
        """None if a read may be answered from this node's store now, else the line to send."""

    def role_stats(self) -> list[tuple[str, object]]:
        """The memring_* lines of `stats`."""


class WriteRecorder(Protocol):
    def committed(self, key: bytes | None) -> None:
        """A mutating command finished: note `key` (meta commands) and record the changes."""


STANDALONE_STATS: list[tuple[str, object]] = [
    ("memring_role", "standalone"), ("memring_shard", "-"), ("memring_node_id", "-"),
    ("memring_epoch", 0)]


def _always(request: object) -> bool:
    return True


def _mg_mutates(request: MetaGet) -> bool:
    return "N" in request.flags.order or "T" in request.flags.order  # vivify / touch


def _get_mutates(request: Get) -> bool:
    return request.touches  # gat / gats


# What each request type may change; meta commands answer an error even under q.
_MUTATING: dict[type, tuple[Callable[[Any], bool], bool]] = {
    StoreRequest: (_always, True), Delete: (_always, True), Arithmetic: (_always, True),
    Touch: (_always, True), FlushAll: (_always, True), Get: (_get_mutates, False),
    MetaSet: (_always, False), MetaDelete: (_always, False),
    MetaArithmetic: (_always, False), MetaGet: (_mg_mutates, False)}
# Meta commands may change an item in place without telling the store (mg T, md I, ma E):
# with replication their key is noted after every mutating request.
_META = (MetaGet, MetaSet, MetaDelete, MetaArithmetic)


class CloseConnection(Exception):
    """Raised by a command after which the connection must close (quit, bad framing)."""


class StartWatching(Exception):
    """Raised by `watch`: the server sends OK, then only holds the connection (memcached
    reads no more commands from a watcher)."""


class CommandHandler:
    """Executes request events against the store; one per server, shared by connections."""

    def __init__(self, store: Store, stats: StatsReport,
                 fence: WriteFence | None = None) -> None:
        self.store = store
        self.stats = stats
        self.fence = fence
        self.meta = MetaCommands(store)
        self.binary = BinaryCommands(self)
        self.verbosity = 0
        self.prefixes = stats.prefixes  # `stats detail`
        self.recorder: WriteRecorder | None = None
        self.unwrapped = True  # no fence, no recorder: get and set are called directly
        self._handlers: dict[type, Callable[[Any, list[bytes]], None]] = {
            Get: self.get,
            StoreRequest: self.storage,
            Delete: self.delete,
            Arithmetic: self.arithmetic,
            Touch: self.touch,
            FlushAll: self.flush_all,
            Stats: self.stats_command,
            LruCrawler: self.lru_crawler,
            Lru: self.lru,
            Slabs: self.slabs,
            Watch: self.watch,
            Version: self.version,
            Verbosity: self.verbosity_command,
            Quit: self.quit,
            Shutdown: self.shutdown,
            RefreshCerts: self.refresh_certs,
            CacheMemlimit: self.cache_memlimit,
            MetaGet: self.meta.get,
            MetaSet: self.meta.set,
            MetaDelete: self.meta.delete,
            MetaArithmetic: self.meta.arithmetic,
            MetaNoop: self.meta.noop,
            MetaDebug: self.meta.debug,
            ProtocolError: self.protocol_error,
            Authenticated: self.authenticated,
            BinaryRequest: self.binary_request,
            BinaryReply: self.binary_reply,
        }
        self._unfenced = dict(self._handlers)
        self._wrap()

    def record_writes(self, recorder: WriteRecorder) -> None:
        """Replication (opt-in): report every mutating command to `recorder` once it ran."""
        self.recorder = recorder
        self._wrap()

    def _wrap(self) -> None:
        """The handlers: the fence outermost (a refused write reaches neither the store nor
        the recorder), then the recorder. Standalone pays nothing: no fence, no recorder."""
        recorder = self.recorder
        self.unwrapped = recorder is None and self.fence is None
        for kind, (mutates, hideable) in _MUTATING.items():
            handler = self._unfenced[kind]
            if recorder is not None:
                handler = self._recorded(handler, mutates, kind in _META, recorder)
            if self.fence is not None:
                handler = self._fenced(handler, mutates, hideable)
            self._handlers[kind] = handler
        if recorder is not None:
            self._handlers[ProtocolError] = self._recorded(
                self._unfenced[ProtocolError], _always, False, recorder)

    @staticmethod
    def _recorded(handler: Callable[[Any, list[bytes]], None], mutates: Callable[[Any], bool],
                  meta: bool, recorder: WriteRecorder) -> Callable[[Any, list[bytes]], None]:
        committed = recorder.committed

        def recorded(request: Any, out: list[bytes]) -> None:
            try:
                handler(request, out)
            finally:
                if mutates(request):
                    committed(request.key if meta else None)
        return recorded

    def _fenced(self, handler: Callable[[Any, list[bytes]], None],
                mutates: Callable[[Any], bool], hideable: bool
                ) -> Callable[[Any, list[bytes]], None]:
        def fenced(request: Any, out: list[bytes]) -> None:
            if mutates(request):
                if self.refuse_write(request, out, hideable):
                    return
            elif self.refuse_read(out):
                return
            handler(request, out)
        return fenced

    def refuse_read(self, out: list[bytes]) -> bool:
        """True (and the refusal appended) if the fence says this store may not answer reads
        now: a node that stepped down from leading and has not caught up with the new leader
        yet (its store may hold writes nobody acknowledged, or miss ones the new leader did),
        a leader whose lease ran out on its own clock. The proxy asks the leader again."""
        refusal = self.fence.read_refusal() if self.fence is not None else None
        if refusal is None:
            return False
        out.append(refusal)
        return True

    def refuse_write(self, request: Any, out: list[bytes], hideable: bool = False) -> bool:
        """True (and the refusal appended unless noreply hides it) if the fence says no."""
        refusal = self.fence.refusal() if self.fence is not None else None
        if refusal is None:
            return False
        if not (hideable and getattr(request, "noreply", False)):
            out.append(refusal)
        return True

    def handle(self, event: object, out: list[bytes]) -> None:
        """Append the reply of one request to `out`; raises CloseConnection to hang up."""
        if self.unwrapped:  # the common requests called natively (when compiled)
            if type(event) is Get:
                self.get(event, out)
                return
            if type(event) is StoreRequest:
                self.storage(event, out)
                return
        self._handlers[type(event)](event, out)

    # -- retrieval -------------------------------------------------------------------

    def get(self, request: Get, out: list[bytes]) -> None:
        keys = request.keys
        if len(keys) == 1 and request.command == b"get" and not self.prefixes.enabled:
            # the common case: the reply as one bytes object, END included (no join)
            hit = self.store.fetch(keys[0], with_cas=False)
            if hit is None:
                out.append(END)
                return
            flags, _cas, value = hit
            out.append(b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (keys[0], flags, len(value), value))
            return
        self.values(request, keys, out)
        out.append(END)

    def values(self, request: Get, keys: list[bytes], out: list[bytes]) -> None:
        """The VALUE blocks of a retrieval for `keys` (a slice of the request's keys)."""
        if self.prefixes.enabled:  # stats detail on: each key counted, hit or miss
            record = self.prefixes.record_get
            for key in keys:
                before = len(out)
                self._values(request, (key,), out)
                record(key, len(out) > before)
            return
        self._values(request, keys, out)

    def _values(self, request: Get, keys: Sequence[bytes], out: list[bytes]) -> None:
        store = self.store  # (methods called, not held: compiled, those are native calls)
        if request.command == b"get" or (request.with_cas and not request.touches):
            with_cas = request.with_cas
            for key in keys:
                hit = store.fetch(key, with_cas)
                if hit is None:
                    continue
                flags, cas, value = hit
                if with_cas:
                    out.append(b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(value), cas,
                                                                 value))
                else:
                    out.append(b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(value), value))
        else:
            with_cas = request.with_cas
            touch = request.touches
            for key in keys:
                item = store.get_and_touch(key, request.exptime) if touch else store.get(key)
                if item is None:
                    continue
                if with_cas:
                    out.append(b"VALUE %s%s %d\r\n%s\r\n" % (key, item.suffix, item.cas,
                                                              item.value))
                else:
                    out.append(b"VALUE %s%s\r\n%s\r\n" % (key, item.suffix, item.value))

    # -- storage ---------------------------------------------------------------------

    def storage(self, request: StoreRequest, out: list[bytes]) -> None:
        if self.prefixes.enabled:
            self.prefixes.record_set(request.key)
        outcome = self.store.store(request.command, request.key, request.value, request.flags,
                                   request.exptime, request.cas_unique)
        if not request.noreply:  # (an Enum's hash is a Python call: STORED without it)
            out.append(STORED if outcome is Outcome.STORED else _OUTCOME_REPLY[outcome])

    def delete(self, request: Delete, out: list[bytes]) -> None:
        if self.prefixes.enabled:
            self.prefixes.record_delete(request.key)
        deleted = self.store.delete(request.key)
        if not request.noreply:
            out.append(b"DELETED\r\n" if deleted else b"NOT_FOUND\r\n")

    def arithmetic(self, request: Arithmetic, out: list[bytes]) -> None:
        outcome, value, _item = self.store.arithmetic(request.key, request.command == b"incr",
                                                      request.delta)
        if request.noreply:
            return
        if outcome is Outcome.STORED:
            out.append(b"%d\r\n" % value)
        elif outcome is Outcome.NON_NUMERIC:
            out.append(_NON_NUMERIC)
        else:
            out.append(b"NOT_FOUND\r\n")

    def touch(self, request: Touch, out: list[bytes]) -> None:
        touched = self.store.touch(request.key, request.exptime)
        if not request.noreply:
            out.append(b"TOUCHED\r\n" if touched else b"NOT_FOUND\r\n")

    # -- administration ----------------------------------------------------------------

    def flush_all(self, request: FlushAll, out: list[bytes]) -> None:
        held = self.store.record_bytes
        self.store.flush_all(request.delay)
        if held - self.store.record_bytes >= TRIM_THRESHOLD and heap_trim.malloc_trim:
            # Values over 512 bytes live in glibc's heap, which keeps freed pages mapped:
            # without a trim a flushed 1 KB-item cache kept all its RSS (docs/benchmarks.md).
            heap_trim.trim()
        if not request.noreply:
            out.append(b"OK\r\n")

    def stats_command(self, request: Stats, out: list[bytes]) -> None:
        reply = self.stats.reply(request.args)
        if not request.args:
            reply = reply[: -len(END)] + b"".join(
                b"STAT %s %s\r\n" % (k.encode(), str(v).encode())
                for k, v in self.role_stats()) + END
        out.append(reply)

    def lru_crawler(self, request: LruCrawler, out: list[bytes]) -> None:
        out.append(self.stats.admin.lru_crawler(request.args, pipelined=bool(out)))

    def lru(self, request: Lru, out: list[bytes]) -> None:
        out.append(self.stats.admin.lru(request.args))

    def slabs(self, request: Slabs, out: list[bytes]) -> None:
        out.append(self.stats.admin.slabs(request.args))

    def watch(self, request: Watch, out: list[bytes]) -> None:
        noreply = request.args[-1:] == [b"noreply"]
        if out:  # memcached: only a connection with no replies pending may turn watcher
            if not noreply:
                out.append(b"ERROR cannot pipeline other commands before watch\r\n")
            return
        refusal = self.stats.admin.watch_refusal(request.args)
        if refusal is not None:
            out.append(refusal)
            return
        raise StartWatching

    def role_stats(self) -> list[tuple[str, object]]:
        """The memring_* lines that end a plain `stats`."""
        return self.fence.role_stats() if self.fence is not None else STANDALONE_STATS

    def version(self, request: Version, out: list[bytes]) -> None:
        out.append(b"VERSION %s\r\n" % self.stats.settings.version.encode())

    def verbosity_command(self, request: Verbosity, out: list[bytes]) -> None:
        self.verbosity = self.stats.verbosity = min(request.level, 2)
        if not request.noreply:
            out.append(b"OK\r\n")

    def cache_memlimit(self, request: CacheMemlimit, out: list[bytes]) -> None:
        refusal = self.fence.refusal() if self.fence is not None else None
        if refusal is not None:
            # A follower's settings follow its leader's: resized alone it would evict what
            # the leader keeps, and a failover would hand clients a smaller cache.
            reply = refusal
        elif request.megabytes < 8:
            reply = b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n"
        elif request.megabytes > 1000000000:
            reply = b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n"
        else:
            self.store.set_memory_limit(request.megabytes << 20)
            reply = b"OK\r\n"
        if not request.noreply:
            out.append(reply)

    def shutdown(self, request: Shutdown, out: list[bytes]) -> None:
        # memcached refuses unless started with -A; so do we: SIGTERM stops a backend.
        out.append(b"ERROR: shutdown not enabled\r\n")

    def refresh_certs(self, request: RefreshCerts, out: list[bytes]) -> None:
        tls = self.stats.tls
        error = TLS_NOT_ENABLED if tls is None else tls.reload()
        out.append(refresh_certs_reply(error, request.noreply))

    def quit(self, request: Quit, out: list[bytes]) -> None:
        raise CloseConnection

    def binary_request(self, request: BinaryRequest, out: list[bytes]) -> None:
        """A binary-protocol frame (backend.binary_commands): fenced and recorded there."""
        if self.binary.handle(request, out):
            raise CloseConnection

    def binary_reply(self, event: BinaryReply, out: list[bytes]) -> None:
        out.append(event.reply)  # answered by the codec (SASL)

    def authenticated(self, event: Authenticated, out: list[bytes]) -> None:
        out.append(event.reply)

    def protocol_error(self, error: ProtocolError, out: list[bytes]) -> None:
        if error.drop_key is not None and self.fence is not None and self.fence.refusal():
            error = replace(error, drop_key=None)  # not ours to change: leave the item
        if error.drop_key is not None:
            self.store.drop(error.drop_key)
        if error.reply:
            out.append(error.reply)
        if error.close:
            raise CloseConnection
