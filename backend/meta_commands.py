"""The meta commands (mg, ms, md, ma, mn, me) against the store.

Return flags are answered in the order the client gave them; `O` and `k` come back on
every reply; `q` hides only the nominal reply of each command (EN for mg, HD for ms,
md and ma), never an error (protocol.txt, probed on memcached 1.6.18).
"""

from __future__ import annotations

import base64

from memring.backend.item_record import Item
from memring.backend.store import Outcome, Store
from memring.protocol.requests import (
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaFlags,
    MetaGet,
    MetaNoop,
    MetaSet,
)
from memring.protocol.sizes import slab_class

_MS_MODES = {0: b"set", 0x53: b"set", 0x45: b"add", 0x41: b"append", 0x50: b"prepend",
             0x52: b"replace"}
_MS_CODES = {Outcome.STORED: b"HD", Outcome.NOT_STORED: b"NS", Outcome.EXISTS: b"EX",
             Outcome.NOT_FOUND: b"NF"}
_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"


def _key_flag(key: bytes, binary: bool) -> bytes:
    if binary:
        return b"k" + base64.b64encode(key) + b" b"
    return b"k" + key


def _echo(flags: MetaFlags, key: bytes, binary: bool) -> list[bytes]:
    """The O and k flags, which every meta reply echoes, in request order."""
    parts = []
    for flag in flags.order:
        if flag == "O":
            parts.append(flags.opaque)
        elif flag == "k":
            parts.append(_key_flag(key, binary))
    return parts


def _line(code: bytes, parts: list[bytes]) -> bytes:
    return b" ".join([code, *parts]) + b"\r\n" if parts else code + b"\r\n"


class MetaCommands:
    def __init__(self, store: Store) -> None:
        self.store = store

    def _ttl(self, item: Item, now: int) -> bytes:
        return b"t-1" if item.expires == 0 else b"t%d" % (item.expires - now)

    def get(self, request: MetaGet, out: list[bytes]) -> None:
        store = self.store
        flags = request.flags
        key = request.key
        now = store.now()
        stats = store.stats
        item = store.peek(key)
        created = False
        if item is None and flags.vivify_ttl is not None:
            item = store.make_item(key, b"", 0, 0)  # the N flag sets its TTL in turn
            item.key_binary = flags.base64
            store._link(key, item)
            created = True
        stats.cmd_get += 1
        if item is None:
            stats.get_misses += 1
            if not flags.quiet:
                out.append(_line(b"EN", _echo(flags, key, flags.base64)))
            return
        parts: list[bytes] = []
        won = False
        ttl_set = False
        for flag in flags.order:
            if flag == "T":
                item.expires = store.absolute_expiry(flags.ttl or 0, now)
                ttl_set = True
            elif flag == "N":
                if created:
                    item.expires = store.absolute_expiry(flags.vivify_ttl or 0, now)
                    won = True
            elif flag == "R":
                if (not item.token_sent and not created and item.expires
                        and item.expires < store.absolute_expiry(flags.recache_ttl or 0, now)):
                    won = True
            elif flag == "s":
                parts.append(b"s%d" % len(item.value))
            elif flag == "t":
                parts.append(self._ttl(item, now))
            elif flag == "c":
                parts.append(b"c%d" % item.cas)
            elif flag == "f":
                parts.append(b"f%d" % item.flags)
            elif flag == "l":
                parts.append(b"l%d" % (now - item.last_access))
            elif flag == "h":
                parts.append(b"h1" if item.fetched else b"h0")
            elif flag == "O":
                parts.append(flags.opaque)
            elif flag == "k":
                parts.append(_key_flag(key, item.key_binary))
        if item.token_sent:
            parts.append(b"Z")
        if item.stale:
            parts.append(b"X")
            if not item.token_sent:
                won = True
        if won:
            parts.append(b"W")
            item.token_sent = True
        if ttl_set:
            stats.cmd_touch += 1
            stats.touch_hits += 1
        else:
            stats.get_hits += 1
        if "v" in flags.order:
            out.append(_line(b"VA %d" % len(item.value), parts) + item.value + b"\r\n")
        else:
            out.append(_line(b"HD", parts))
        if ttl_set or created or won:  # T, N and W changed the item
            store.save(key, item)
        if not flags.no_bump:
            store.fetched(key, item, now)

    def set(self, request: MetaSet, out: list[bytes]) -> None:
        store = self.store
        flags = request.flags
        key = request.key
        store.stats.cmd_set += 1
        command = _MS_MODES[flags.mode]
        item = store.make_item(key, request.value, flags.client_flags, flags.ttl or 0)
        item.key_binary = flags.base64
        outcome, stored = self._store(command, key, item, flags)
        code = _MS_CODES.get(outcome)
        if code is None:
            out.append(b"SERVER_ERROR out of memory storing object\r\n")
            return
        if outcome is Outcome.STORED and flags.quiet:
            return
        parts = []
        for flag in flags.order:
            if flag == "O":
                parts.append(flags.opaque)
            elif flag == "k":
                parts.append(_key_flag(key, flags.base64))
            elif flag == "c":
                parts.append(b"c%d" % (stored.cas if stored is not None else 0))
            elif flag == "b" and "k" not in flags.order:
                continue
            # `s` is accepted and not echoed: 1.6.18 prints only O, k, c (and b) for ms; the
            # `s<size>` of later releases is left out (differential case ms_s_is_ignored).
        out.append(_line(code, parts))

    def _store(self, command: bytes, key: bytes, item: Item,
               flags: MetaFlags) -> tuple[Outcome, Item | None]:
        store = self.store
        current = store.peek(key)
        explicit_cas = flags.explicit_cas or 0
        cas = flags.cas
        if command == b"add" or (cas == 0 and command in (b"append", b"prepend")):
            # memcached.c do_store_item: NREAD_ADD never looks at the CAS (an item there is
            # NOT_STORED whatever C says); append/prepend compare a C that is not 0
            cas = None
        if cas is not None and current is not None and current.cas != cas:
            if (command in (b"set", b"replace") and flags.invalidate
                    and 0 < cas < current.cas):
                # I with an older CAS: store anyway, but mark the item stale.
                item.stale = True
                return store._link(key, item, explicit_cas), item
            store.stats.cas_badval += 1
            return Outcome.EXISTS, None
        if flags.cas is not None and current is None and command in (b"set", b"replace"):
            store.stats.cas_misses += 1
            return Outcome.NOT_FOUND, None
        if command == b"set":
            return store._link(key, item, explicit_cas), item
        if command == b"add":
            if current is not None:
                store.bump(key)
                return Outcome.NOT_STORED, None
            return store._link(key, item, explicit_cas), item
        if command == b"replace":
            if current is None:
                return Outcome.NOT_STORED, None
            return store._link(key, item, explicit_cas), item
        # append / prepend: N vivifies a missing item from this value.
        if current is None:
            if flags.vivify_ttl is not None:
                item.expires = store.absolute_expiry(flags.vivify_ttl)
                return store._link(key, item, explicit_cas), item
            return Outcome.NOT_STORED, None
        parts = ((current.value, item.value) if command == b"append"
                 else (item.value, current.value))
        outcome = store._replace_value(key, current, b"".join(parts))
        return outcome, store.item(key)

    def delete(self, request: MetaDelete, out: list[bytes]) -> None:
        store = self.store
        flags = request.flags
        key = request.key
        item = store.peek(key)
        if item is None:
            store.stats.delete_misses += 1
            code = b"NF"
        elif flags.cas is not None and item.cas != flags.cas:
            store.stats.delete_misses += 1
            code = b"EX"
        elif flags.invalidate:
            # I: keep the item but mark it stale, so one client wins the recache.
            if flags.ttl is not None:
                item.expires = store.absolute_expiry(flags.ttl)
            item.stale = True
            item.token_sent = False
            item.cas = flags.explicit_cas or store.next_cas()
            store.save(key, item)
            code = b"HD"
        elif "x" in flags.order:
            # x: drop the value but leave the item in place (protocol.txt, 1.6.27+).
            store._replace_value(key, item, b"")
            code = b"HD"
        else:
            store.delete(key)
            code = b"HD"
        if code == b"HD" and flags.quiet:
            return
        out.append(_line(code, _echo(flags, key, flags.base64)))

    def arithmetic(self, request: MetaArithmetic, out: list[bytes]) -> None:
        store = self.store
        flags = request.flags
        key = request.key
        incr = flags.mode in (0, 0x49, 0x2B)  # I +
        outcome, value, item = store.arithmetic(key, incr, flags.delta, flags.cas or 0)
        created = False
        if outcome is Outcome.NON_NUMERIC:
            out.append(_NON_NUMERIC)
            return
        if outcome is Outcome.NOT_FOUND and flags.vivify_ttl is not None:
            value = flags.initial
            item = store.make_item(key, b"%d" % value, 0, 0)
            store._link(key, item)
            outcome = Outcome.STORED
            created = True
        if outcome is Outcome.STORED and item is not None and flags.explicit_cas:
            item.cas = flags.explicit_cas  # E: the client chooses the new CAS value
            store.save(key, item)
        if outcome is not Outcome.STORED or item is None:
            code = b"EX" if outcome is Outcome.EXISTS else b"NF"
            out.append(_line(code, _echo(flags, key, flags.base64)))
            return
        if flags.quiet:
            return
        now = store.now()
        parts = []
        for flag in flags.order:
            if flag == "c":
                parts.append(b"c%d" % item.cas)
            elif flag == "t":
                parts.append(self._ttl(item, now))
            elif flag == "T":
                item.expires = store.absolute_expiry(flags.ttl or 0, now)
            elif flag == "N":
                if created:
                    item.expires = store.absolute_expiry(flags.vivify_ttl or 0, now)
            elif flag == "O":
                parts.append(flags.opaque)
            elif flag == "k":
                parts.append(_key_flag(key, flags.base64))
        if "T" in flags.order or (created and "N" in flags.order):
            store.save(key, item)
        digits = b"%d" % value
        if "v" in flags.order:
            out.append(_line(b"VA %d" % len(digits), parts) + digits + b"\r\n")
        else:
            out.append(_line(b"HD", parts))

    def noop(self, request: MetaNoop, out: list[bytes]) -> None:
        out.append(b"MN\r\n")

    def debug(self, request: MetaDebug, out: list[bytes]) -> None:
        item = self.store.peek(request.key)
        if item is None:
            out.append(b"EN\r\n")
            return
        now = self.store.now()
        # memcached 1.6.18 prints exp as now minus the expiry time (negative while the
        # item lives); differential case me_hit_miss pins it. An item stored under a base64
        # key shows it base64 again, however `me` named it (differential case
        # me_binary_key_shown_in_base64).
        key = base64.b64encode(request.key) if item.key_binary else request.key
        out.append(b"ME %s exp=%d la=%d cas=%d fetch=%s cls=%d size=%d\r\n" % (
            key, -1 if item.expires == 0 else now - item.expires,
            now - item.last_access,
            item.cas, b"yes" if item.fetched else b"no", slab_class(item.size), item.size))
