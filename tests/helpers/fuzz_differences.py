"""Every known way memring's replies may differ from memcached 1.6.18's: the fuzzer's one list.

Theory of operation: the fuzz runner (tests/helpers/fuzz_runner.py) compares each target's
reply with memcached's byte for byte. When they differ it first applies the `REPLY_NORMALIZERS`
to both replies (what varies for a reason that says nothing about correctness: clocks, CAS
counters, server-specific stats). If they still differ, it looks for commands of the case
that a `COMMAND_DIFFERENCES` entry names, re-runs the case without them on a clean key
space, and calls the difference documented only if it is gone then. `OPEN_BUGS` work the
same way, but name bugs being fixed: the runner reports them apart, and a test may xfail on
them and nothing else. Anything left is undocumented: a bug or an entry missing here.

Each entry is a named predicate with a one-line reason. README's "Compatibility notes" lists
the deliberate differences; the proxy adds its own (it answers `stats` itself).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

BACKEND = "backend"
PROXY_MEMCACHED = "proxy-memcached"
PROXY_BACKEND = "proxy-backend"
TARGETS = (BACKEND, PROXY_MEMCACHED, PROXY_BACKEND)
PROXIES = frozenset({PROXY_MEMCACHED, PROXY_BACKEND})
ALL = frozenset(TARGETS)

STORAGE = frozenset({b"set", b"add", b"replace", b"append", b"prepend", b"cas"})
META = frozenset({b"mg", b"ms", b"md", b"ma", b"me"})
INT32 = range(-(2**31), 2**31)
U32 = range(2**32)


def command_tokens(command: bytes) -> list[bytes]:
    """A command's line split as memcached splits it: on spaces only, CR before LF dropped,
    up to its first NUL."""
    line = command.split(b"\n", 1)[0]
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.split(b"\x00", 1)[0].split(b" ")


def _words(command: bytes) -> list[bytes]:
    return [t for t in command_tokens(command) if t]


def _integer(token: bytes) -> int | None:
    """The value memcached's strtol/strtoull would read from a decimal token (C whitespace
    before it, or after it where a CR or TAB is left in the token, as memcached allows)."""
    match = re.fullmatch(rb"[ \t\n\v\f\r]*([+-]?[0-9]+)(?:[ \t\n\v\f\r].*)?", token, re.S)
    return int(match.group(1)) if match else None


# --- reply normalizers ------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplyNormalizer:
    name: str
    reason: str
    targets: frozenset[str]
    normalize: Callable[[bytes], bytes]


_TIMED = re.compile(rb"( t| l| exp=| la=)(-?\d+)")


def reconcile_timing(expected: bytes, actual: bytes) -> bytes:
    """`actual` with TTL-like numbers copied from `expected` where they differ by 1 s at most."""
    want = list(_TIMED.finditer(expected))
    got = list(_TIMED.finditer(actual))
    if len(want) != len(got):
        return actual
    for w, g in zip(want, got, strict=True):
        if w.group(1) != g.group(1) or abs(int(w.group(2)) - int(g.group(2))) > 1:
            return actual
    values = iter(w.group(2) for w in want)
    return _TIMED.sub(lambda m: m.group(1) + next(values), actual)


_META_CAS = re.compile(rb"^c\d+$")


def _size_at(tokens: list[bytes]) -> int:
    """Where a reply line names the size of the data block after it (VALUE, VA), else 0."""
    if tokens[0] == b"VALUE" and len(tokens) in (4, 5) and tokens[3].isdigit():
        return 3
    if tokens[0] == b"VA" and len(tokens) > 1 and tokens[1].isdigit():
        return 1
    return 0


def _rewrite_replies(reply: bytes,
                     rewrite: Callable[[list[bytes], bytes], tuple[list[bytes], bytes]]) -> bytes:
    """`reply` read as replies: each line's tokens and its data block (b"" after a line
    without one; a block's own CRLF reads as an empty line) go through `rewrite`; stops
    rewriting where the reply stops parsing."""
    out = bytearray()
    pos = 0
    while pos < len(reply):
        end = reply.find(b"\r\n", pos)
        if end < 0:
            break
        tokens = reply[pos:end].split(b" ")
        at = _size_at(tokens)
        pos = end + 2
        data = reply[pos:pos + int(tokens[at])] if at else b""
        pos += len(data)
        tokens, data = rewrite(tokens, data)
        out += b" ".join(tokens) + b"\r\n" + data
    return bytes(out) + reply[pos:]


def canonical_cas(reply: bytes) -> bytes:
    """Each CAS value in a reply replaced by its order of first appearance (c#1, c#2, ...),
    counted per key where the reply names it (a VALUE line, a meta reply's k flag): a
    proxy's shards count apart, so two keys on two shards may hold the same number. Data
    blocks never count."""
    numbers: dict[tuple[bytes, bytes], bytes] = {}

    def ordinal(value: bytes, key: bytes = b"") -> bytes:
        return numbers.setdefault((key, value), b"#%d" % (len(numbers) + 1))

    def rewrite(tokens: list[bytes], data: bytes) -> tuple[list[bytes], bytes]:
        if _size_at(tokens) == 3 and len(tokens) == 5:
            tokens[4] = ordinal(tokens[4], tokens[1])
        elif tokens[0] in (b"VA", b"HD", b"EN", b"NF", b"NS", b"EX"):
            key = next((t[1:] for t in tokens[1:] if t.startswith(b"k")), b"")
            tokens = [b"c" + ordinal(t[1:], key) if _META_CAS.match(t) else t for t in tokens]
        elif tokens[0] == b"ME":
            tokens = [b"cas=" + ordinal(t[4:]) if t.startswith(b"cas=") else t for t in tokens]
        return tokens, data

    return _rewrite_replies(reply, rewrite)


_PADDED = re.compile(rb"([0-9]+) +")


def unpadded_numbers(reply: bytes) -> bytes:
    """Each VALUE or VA data block that is a number padded with spaces (what incr/decr/ma
    leave when they rewrite a value in place) as the number alone, its length adjusted."""

    def rewrite(tokens: list[bytes], data: bytes) -> tuple[list[bytes], bytes]:
        at = _size_at(tokens)
        padded = _PADDED.fullmatch(data) if at else None
        if padded:
            data = padded.group(1)
            tokens[at] = b"%d" % len(data)
        return tokens, data

    return _rewrite_replies(reply, rewrite)


REPLY_NORMALIZERS: tuple[ReplyNormalizer, ...] = (
    ReplyNormalizer(
        "cas_values", "CAS values come from each server's own counter: a proxy's shards count "
        "apart, and one documented difference (an item memcached stores and memring refuses) "
        "moves a counter for the rest of the run; their equality pattern is still compared",
        ALL, canonical_cas),
    ReplyNormalizer(
        "arithmetic_padding", "README: incr/decr/ma that writes a shorter number pads it with "
        "spaces to the old length in memring, as memcached does in place; 1.6.18 stores the "
        "digits alone when a reply it has not written yet (an mg with v earlier in the same "
        "read) holds the item", ALL, unpadded_numbers),
)
# Timing is applied to the pair (it copies memcached's value into the target's reply).
TIMING = ("timing", "TTLs and last-access ages (t, l, exp=, la=) may differ by the 1 s tick "
          "of two independent clocks")


# --- command differences ----------------------------------------------------------------------

@dataclass(frozen=True)
class CommandDifference:
    name: str
    reason: str
    targets: frozenset[str]
    matches: Callable[[int, bytes], bool]  # (position in the case, command bytes)


def _out_of_range(token: bytes, allowed: range) -> bool:
    value = _integer(token)
    return value is not None and value not in allowed


def _out_of_range_number(_: int, command: bytes) -> bool:
    words = _words(command)
    if not words:
        return False
    if words[0] in STORAGE and len(words) >= 5:
        return _out_of_range(words[2], U32) or any(_out_of_range(w, INT32) for w in words[3:5])
    if words[0] == b"touch" and len(words) >= 3:
        return _out_of_range(words[2], INT32)
    if words[0] in (b"gat", b"gats") and len(words) >= 2:  # also without keys: 1.6.18 says END
        return _out_of_range(words[1], INT32)
    if words[0] in META and len(words) >= 3:
        first_flag = 3 if words[0] == b"ms" else 2
        if words[0] == b"ms" and _out_of_range(words[2], INT32):
            return True
        flags = words[first_flag:]
        return any(_out_of_range(w[1:], U32) for w in flags if w[:1] == b"F") or \
            any(_out_of_range(w[1:], INT32) for w in flags if w[:1] in (b"T", b"N", b"R"))
    return False


def _long_key_in_multiget(_: int, command: bytes) -> bool:
    """Also a retrieval without its line end: the next command's tokens end its line."""
    words = _words(command)
    return bool(words) and words[0] in (b"get", b"gets", b"gat", b"gats") and (
        any(len(w) > 250 for w in words[1:]) or b"\n" not in command)


def _binary_protocol(position: int, command: bytes) -> bool:
    return position == 0 and command[:1] == b"\x80"


NEWER_FLAGS = {b"mg": b"EC", b"ms": b"EN", b"md": b"Ex", b"ma": b"E"}


def _newer_meta_flag(_: int, command: bytes) -> bool:
    words = _words(command)
    if len(words) < 3 or words[0] not in NEWER_FLAGS:
        return False
    first_flag = 3 if words[0] == b"ms" else 2
    return any(w[:1] and w[:1] in NEWER_FLAGS[words[0]] for w in words[first_flag:])


STATS_WITH_CONTENT = frozenset({b"settings", b"items", b"slabs", b"sizes", b"conns",
                                b"cachedump", b"extstore"})


def _stats_content(_: int, command: bytes) -> bool:
    words = _words(command)
    if not words or words[0] != b"stats":
        return False
    return len(words) == 1 or words[1] in STATS_WITH_CONTENT or words[1:] == [b"detail", b"dump"]


def _stats_any(_: int, command: bytes) -> bool:
    words = _words(command)
    return bool(words) and words[0] == b"stats"


def _ma_vivify_quiet(_: int, command: bytes) -> bool:
    words = _words(command)
    return len(words) > 2 and words[0] == b"ma" and \
        any(w[:1] == b"q" for w in words[2:]) and any(w[:1] == b"N" for w in words[2:])


def _cache_memlimit(_: int, command: bytes) -> bool:
    words = _words(command)
    return len(words) >= 2 and words[0] == b"cache_memlimit"


def _long_opaque(_: int, command: bytes) -> bool:
    words = _words(command)
    return bool(words) and words[0] in (b"mg", b"ms", b"md", b"ma") and \
        any(w[:1] == b"O" and len(w) > 32 for w in words[2:])


def _vivify_with(*flags: bytes) -> Callable[[int, bytes], bool]:
    def matches(_: int, command: bytes) -> bool:
        words = _words(command)
        present = {w[:1] for w in words[2:]}
        return bool(words) and words[0] == b"mg" and b"N" in present and \
            all(f in present for f in flags)
    return matches


def _ttl_out_of_range(_: int, command: bytes) -> bool:
    """An N or T whose TTL is negative or an absolute time in the past (> 30 days, as
    memcached reads it): the `t` both servers print for the item is clock-dependent
    nonsense."""
    words = _words(command)
    if not words or words[0] not in (b"mg", b"ma"):
        return False
    for word in words[2:]:
        if word[:1] in (b"N", b"T"):
            ttl = _integer(word[1:])
            if ttl is not None and (ttl < 0 or ttl > 2_592_000):
                return True
    return False


_C_WHITESPACE = frozenset(b" \t\n\v\f\r")


def _whitespace_value(_: int, command: bytes) -> bool:
    """A storage command (or ms) whose data block is only C whitespace: a later
    incr/decr/ma on it makes 1.6.18's strtoull read past the value (not NUL-terminated) into
    whatever the slab chunk held before, e.g. a deleted key's digits."""
    words = _words(command)
    if not words or (words[0] not in STORAGE and words[0] != b"ms"):
        return False
    line_end = command.find(b"\n")
    if line_end < 0:
        return False
    data = command[line_end + 1:]
    data = data[:-2] if data.endswith(b"\r\n") else data
    return bool(data) and all(byte in _C_WHITESPACE for byte in data)  # empty: NON_NUMERIC


COMMAND_DIFFERENCES: tuple[CommandDifference, ...] = (
    CommandDifference(
        "out_of_range_number", "README: numbers past their field's range (flags and meta F past "
        "2^32-1; exptime, meta T/N/R and lengths past int32, also in touch/gat/ms) are refused "
        "where 1.6.18 truncates them",
        ALL, _out_of_range_number),
    CommandDifference(
        "long_key_in_multiget", "README: a get with a key over 250 bytes answers the error "
        "without dropping the replies of earlier pipelined commands that memcached drops (a "
        "retrieval glued to the next command may take its long key from it)",
        ALL, _long_key_in_multiget),
    CommandDifference(
        "binary_protocol", "README: a first byte 0x80 makes the connection binary; the "
        "backend and the proxy send the replies of a read that ends in a close (bad magic), "
        "which memcached drops, and the proxy answers binary stat and version itself",
        ALL, _binary_protocol),
    CommandDifference(
        "newer_meta_flags", "README: meta flags newer than 1.6.18 (E, md x, ms N, mg C) follow "
        "the current protocol.txt", ALL, _newer_meta_flag),
    CommandDifference(
        "stats_content", "stats output describes the server (pid, uptime, memory, "
        "connections, settings), so no two servers print the same", ALL, _stats_content),
    CommandDifference(
        "proxy_stats", "the proxy answers stats with its own lines and the shard leaders' sums "
        "(README: Using the proxy)",
        PROXIES, _stats_any),
    CommandDifference(
        "proxy_cache_memlimit", "the proxy refuses cache_memlimit (fanned out it would resize "
        "every backend, followers unlike their leaders)", PROXIES, _cache_memlimit),
    CommandDifference(
        "ma_vivify_ignores_q", "README: memcached 1.6.18 answers HD to `ma <key> N<ttl> q` when "
        "it creates the item; memring follows protocol.txt (q hides HD)", ALL,
        _ma_vivify_quiet),
    CommandDifference(
        "meta_opaque_checked_last", "an opaque token over 32 bytes: memring checks it after "
        "the other flags (and before mg N creates an item); 1.6.18 reports the other errors "
        "first and may create the item before refusing", ALL, _long_opaque),
    CommandDifference(
        "vivify_base64_key", "mg with N and b on a miss: 1.6.18 does not mark the item it "
        "creates binary, so its k then and later prints the decoded key; memring prints the "
        "key base64, with b, as for an item ms stored with b", ALL, _vivify_with(b"b")),
    CommandDifference(
        "ttl_out_of_range", "mg/ma N or T with a negative or past TTL: the t both print is "
        "clock-dependent (1.6.18 an unsigned wrap, memring a negative number)", ALL,
        _ttl_out_of_range),
    CommandDifference(
        "whitespace_value_arithmetic", "README: incr/decr/ma on a value of only whitespace is "
        "non-numeric in memring; 1.6.18 reads on past the value into stale slab bytes "
        "(tests/integration/test_arithmetic_whitespace_value.py)", ALL, _whitespace_value),
)


# --- open bugs (being fixed on another branch; a test may xfail on exactly these) -------------

def _noreply_read_as_key(_: int, command: bytes) -> bool:
    """`noreply` as the last token where memcached reads that token as a key."""
    words = _words(command)
    if not words or words[-1] != b"noreply":
        return False
    if words[0] == b"delete":
        return len(words) == 2
    if words[0] in (b"get", b"gets"):
        return len(words) >= 2
    if words[0] in (b"gat", b"gats"):
        return len(words) >= 3
    return False


def _q_prefixed_meta_flag(_: int, command: bytes) -> bool:
    """A meta flag token that starts with `q` but is not `q` (memcached reads its first byte)."""
    words = _words(command)
    if len(words) < 2 or words[0] not in (b"mg", b"ms", b"md", b"ma"):
        return False
    first_flag = 3 if words[0] == b"ms" else 2
    return any(w.startswith(b"q") and w != b"q" for w in words[first_flag:])


# Both found by the attacker who filed issue 11 and fixed there (they stay for the record of
# what the fuzzer looks for: the predicates above); none is open now.
OPEN_BUGS: tuple[CommandDifference, ...] = ()


# --- reported (found by the fuzzer, reported for triage; still undocumented: a test fails) ------

REPORTED: tuple[CommandDifference, ...] = ()  # none open: triaged into COMMAND_DIFFERENCES


def matching(differences: tuple[CommandDifference, ...], target: str,
             commands: tuple[bytes, ...]) -> dict[str, list[int]]:
    """Name -> positions of the commands each difference that applies to `target` names."""
    found: dict[str, list[int]] = {}
    for difference in differences:
        if target not in difference.targets:
            continue
        positions = [i for i, c in enumerate(commands) if difference.matches(i, c)]
        if positions:
            found[difference.name] = positions
    return found


def reasons() -> dict[str, str]:
    """Every documented cause and open bug by name, for reports."""
    table = {n.name: n.reason for n in REPLY_NORMALIZERS}
    table[TIMING[0]] = TIMING[1]
    table.update({d.name: d.reason for d in COMMAND_DIFFERENCES + OPEN_BUGS + REPORTED})
    return table
