"""A seeded, grammar-based generator of memcached requests for the fuzzer (bench/fuzz.py).

Theory of operation: a case is a short list of commands, each one complete request (its line
plus, for a storage command, its data block), drawn from a grammar of every text and meta
command and then, with some probability, mutated: tokens replaced by hostile ones (`noreply`,
`q` and q-like spellings, huge and negative numbers, NUL and binary bytes), tokens dropped,
added or repeated, bare LF line ends, wrong data lengths, over-long keys and lines. A few
cases (`pipeline_rate`) are instead a pipelined run of retrievals over nine keys on both shards
(`pipelined_case`), for the proxy's split multi-gets and inline replies.

`generate_case(seed, index, prefix)` is a pure function of its arguments: the runner re-makes
a case with another prefix of the same length to re-run it on a clean key space (shrinking,
checking a documented difference), and dropping commands by position keeps the others
byte-identical. Keys are `prefix + short name` so that cases never see each other's items,
except the hostile words of `SHARED_KEYS`, which the runner deletes after each case that
used them.

What the grammar avoids, because the oracle would not be deterministic: expiry times of a few
seconds (the servers' 1 s clocks tick independently), `flush_all` with a positive delay,
CAS values a server could really hold (only 0 and values no counter reaches), and lines
over 2048 bytes in cases large enough that memcached could read them in two pieces.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

PREFIX_LENGTH = 10  # every prefix has this length, so a re-prefixed case keeps its key lengths

PIPELINE_REPLY = 4 << 20  # the most a pipelined case's replies hold (the runner's MAX_REPLY: 8)

# Words that a parser could mistake for something else when they stand where a key or a
# number should: the text `noreply` flag, the meta quiet flag and its look-alikes (memcached
# reads a meta flag by its first character), other meta flag letters, numbers.
HOSTILE_WORDS: tuple[bytes, ...] = (
    b"noreply", b"NOREPLY", b"noreplyx", b"q", b"qz", b"q1", b"qq", b"Q", b"k", b"v", b"b",
    b"O", b"T", b"N", b"0", b"-1", b"mn", b"get", b"END", b"VALUE", b"HTTP/1.0")
# The ones used as keys; the runner deletes them (md <base64> b) after a case that named them.
SHARED_KEYS: tuple[bytes, ...] = HOSTILE_WORDS[:-1]
Q_LIKE = (b"qz", b"q1", b"qq", b"q0", b"qk", b"qv")
HUGE_NUMBERS = (b"4294967295", b"4294967296", b"2147483647", b"2147483648", b"-2147483649",
                b"9223372036854775807", b"18446744073709551615", b"18446744073709551616",
                b"99999999999999999999999", b"-1", b"-0", b"+1", b"0x10", b"1e3", b"00")
GARBAGE_TOKENS = (b"abc", b"\x00", b"a\x00b", b"\xff\xfe", b"\x80", b"\t", b"\x01x", b"-",
                  b"=", b"\xc3\xa9", b"\x7f")
# No counter reaches these, so a cas with them is EXISTS/NOT_FOUND on every server.
UNREACHABLE_CAS = (b"0", b"1099511627776", b"18446744073709551615", b"4611686018427387904")

STORAGE = (b"set", b"add", b"replace", b"append", b"prepend", b"cas")
RETRIEVAL = (b"get", b"gets", b"gat", b"gats")
# Flags memcached 1.6.18 knows per meta command, then the ones newer releases added.
META_FLAGS: dict[bytes, tuple[str, ...]] = {
    b"mg": tuple("bcfhklOqstuvNRT"), b"ms": tuple("bcCFIkOqTM"),
    b"md": tuple("bCIkOqT"), b"ma": tuple("bCNJDTMOqtcvk"), b"me": ("b",)}
NEWER_META_FLAGS: dict[bytes, tuple[str, ...]] = {
    b"mg": ("E", "C"), b"ms": ("s", "E", "N"), b"md": ("E", "x"), b"ma": ("E",)}
STATS_ARGS: tuple[bytes, ...] = (
    b"", b"settings", b"items", b"slabs", b"sizes", b"conns", b"reset", b"detail on",
    b"detail off", b"detail dump", b"cachedump 1 1", b"nonsense", b"extstore", b"SETTINGS")


@dataclass(frozen=True)
class GrammarOptions:
    """Knobs of the grammar; the isolation mode turns off what would wipe the victims' keys."""

    flush_all: bool = True
    mutation_rate: float = 0.2
    hostile_key_rate: float = 0.06
    q_like_rate: float = 0.005  # q-like meta tokens cost a proxy timeout while that bug is open
    large_value_rate: float = 0.004
    stuck_rate: float = 0.003  # a data block longer than what follows it (the case ends idle)
    max_commands: int = 8
    # a whole case of pipelined retrievals over a wider pool of keys (drawn from a generator
    # of its own, so that the other cases of a seed stay what they were)
    pipeline_rate: float = 0.04
    # a whole case of storage modes and arithmetic with C (compare CAS) flags on empty,
    # numeric and non-numeric values (round seven's and eight's findings; its own generator)
    cas_mode_rate: float = 0.03


DEFAULT_OPTIONS = GrammarOptions()

@dataclass(frozen=True)
class FuzzCase:
    """One client conversation: commands sent back to back on a fresh connection."""

    seed: int
    index: int
    prefix: bytes
    commands: tuple[bytes, ...]
    dropped: frozenset[int] = field(default_factory=frozenset)  # positions left out (shrinking)

    @property
    def sent(self) -> bytes:
        return b"".join(self.commands)

    @property
    def name(self) -> str:
        kept = "" if not self.dropped else f" without {sorted(self.dropped)}"
        return f"seed {self.seed} case {self.index}{kept}"

    def shared_keys(self) -> list[bytes]:
        """The SHARED_KEYS this case names anywhere as a token (a superset of what it stored)."""
        tokens = {t for command in self.commands for t in command.split()}
        return [k for k in SHARED_KEYS if k in tokens]


def case_prefix(number: int) -> bytes:
    """A fixed-length key prefix, unique per `number`."""
    return b"f%08x:" % (number & 0xFFFFFFFF)


def generate_case(seed: int, index: int, prefix: bytes,
                  options: GrammarOptions = DEFAULT_OPTIONS) -> FuzzCase:
    """Case `index` of the run seeded `seed`, its keys under `prefix`."""
    assert len(prefix) == PREFIX_LENGTH, prefix
    rng = random.Random(f"{seed}:{index}")
    grammar = _Grammar(rng, prefix, options)
    if random.Random(f"{seed}:{index}:pipeline").random() < options.pipeline_rate:
        return FuzzCase(seed, index, prefix, tuple(grammar.pipelined_case()))
    cas_rng = random.Random(f"{seed}:{index}:cas-mode")
    if cas_rng.random() < options.cas_mode_rate:
        return FuzzCase(seed, index, prefix, tuple(_Grammar(cas_rng, prefix, options)
                                                   .cas_mode_case()))
    return FuzzCase(seed, index, prefix, tuple(grammar.case()))


def regenerate(case: FuzzCase, prefix: bytes, dropped: frozenset[int],
               options: GrammarOptions = DEFAULT_OPTIONS) -> FuzzCase:
    """The same case under another prefix, with the commands at `dropped` left out."""
    fresh = generate_case(case.seed, case.index, prefix, options)
    kept = tuple(c for i, c in enumerate(fresh.commands) if i not in dropped)
    return FuzzCase(case.seed, case.index, prefix, kept, dropped)


class _Grammar:
    def __init__(self, rng: random.Random, prefix: bytes, options: GrammarOptions) -> None:
        self.rng = rng
        self.prefix = prefix
        self.options = options
        # A small pool of names per case, so that commands meet each other's items.
        self.names = [prefix + n for n in (b"a", b"b", b"c", b"n")]

    # --- building blocks ---------------------------------------------------------------------

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def pick(self, items: Sequence[bytes]) -> bytes:
        return items[self.rng.randrange(len(items))]

    def key(self) -> bytes:
        rng = self.rng
        if self.chance(self.options.hostile_key_rate):
            return self.pick(SHARED_KEYS)
        roll = rng.random()
        if roll < 0.85:
            return self.pick(self.names)
        if roll < 0.90:  # control and binary bytes inside a key (no space, no LF; NUL: mutate)
            body = bytes(rng.choice([1, 9, 13, 0x7F, 0x80, 0xFF, 0x41]) for _ in range(3))
            return self.prefix + b"x" + body
        if roll < 0.93:
            return self.prefix + b"k" * (250 - PREFIX_LENGTH)  # the longest key
        if roll < 0.96:
            return self.prefix + b"k" * (251 - PREFIX_LENGTH)  # one byte too long
        return self.prefix + b"%d" % rng.randrange(100)

    def value(self) -> bytes:
        rng = self.rng
        if self.chance(self.options.large_value_rate):
            # 1048506 is the largest item a 1 MiB memcached stores under an 11-byte key, flags 0.
            size = rng.choice([5000, 5000, 70000, 70000, 1048506, 1048507, 1100000])
            return b"v" * size
        roll = rng.random()
        if roll < 0.3:
            return b"%d" % rng.choice([0, 1, 7, 99, 100, 2**32, 2**64 - 1, 2**64])
        if roll < 0.4:
            return b" " * rng.randrange(3) + b"%d" % rng.randrange(1000)
        if roll < 0.5:
            return b""
        if roll < 0.7:  # bytes a line parser must not look at: CR, LF, NUL, 0x80
            return bytes(rng.choice(b"ab\r\n\x00\x80 ") for _ in range(rng.randrange(1, 12)))
        return bytes(rng.choice(b"abcdefghij") for _ in range(rng.randrange(1, 20)))

    def flags(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.75:
            return b"%d" % self.rng.choice([0, 0, 1, 42, 65535, 4294967295])
        if roll < 0.9:
            return self.pick(HUGE_NUMBERS)
        return self.pick(GARBAGE_TOKENS)

    def exptime(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.8:
            # 0 never, negative expired, >= 1000 s outlives the run, 2592001 an absolute past
            return b"%d" % self.rng.choice([0, 0, 0, -1, 1000, 86400, 2592000, 2592001])
        if roll < 0.9:
            return self.pick(HUGE_NUMBERS)
        return self.pick(GARBAGE_TOKENS)

    def number(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.7:
            return b"%d" % self.rng.choice([0, 1, 5, 100, 2**32, 2**63, 2**64 - 1])
        if roll < 0.9:
            return self.pick(HUGE_NUMBERS)
        return self.pick(GARBAGE_TOKENS)

    def eol(self) -> bytes:
        roll = self.rng.random()
        return b"\r\n" if roll < 0.9 else b"\n" if roll < 0.97 else b"\r\r\n"

    def noreply(self) -> list[bytes]:
        roll = self.rng.random()
        if roll < 0.8:
            return []
        if roll < 0.95:
            return [b"noreply"]
        return [self.pick((b"NOREPLY", b"noreplyx", b"q", b"norepl"))]

    # --- commands -------------------------------------------------------------------------------

    def case(self) -> list[bytes]:
        rng = self.rng
        count = rng.randint(1, self.options.max_commands)
        commands = [self.command() for _ in range(count)]
        if self.chance(0.002):
            commands.insert(0, self.binary_request())
        if self.chance(self.options.stuck_rate):
            commands.append(b"set %s 0 0 %d\r\nshort\r\n" % (self.pick(self.names),
                                                            rng.choice([100, 5000])))
        if self.chance(0.01):
            commands = self.long_line_case()
        if not commands[-1].endswith(b"\n"):
            commands[-1] += b"\r\n"
        return commands

    def command(self) -> bytes:
        makers: list[tuple[float, Callable[[], bytes]]] = [
            (14, self.storage), (10, self.retrieval), (4, self.delete), (4, self.arithmetic),
            (3, self.touch), (1, self.flush_all), (0.6, self.verbosity), (0.6, self.version),
            (0.8, self.stats), (0.3, self.misc), (10, self.mg), (9, self.ms), (5, self.md),
            (5, self.ma), (1.5, self.me), (1.5, self.mn), (0.6, self.garbage_line)]
        total = sum(w for w, _ in makers)
        roll = self.rng.random() * total
        for weight, maker in makers:
            roll -= weight
            if roll < 0:
                return maker()
        return self.mn()

    def line(self, tokens: list[bytes], data: bytes | None = None, *,
             mutate: bool = True) -> bytes:
        """A command line from tokens (maybe mutated) plus an optional data block."""
        if mutate and self.chance(self.options.mutation_rate):
            tokens = self.mutate(tokens)
        rng = self.rng
        sep = b" " if not self.chance(0.03) else b"  "
        text = sep.join(tokens)
        if self.chance(0.02):
            text = b" " + text + b" "
        if rng.random() < 0.01:
            return text  # no line end: it runs into the next command
        out = text + self.eol()
        if data is not None:
            out += data
        return out

    def mutate(self, tokens: list[bytes]) -> list[bytes]:
        rng = self.rng
        tokens = list(tokens)
        for _ in range(rng.randint(1, 2)):
            op = rng.randrange(8)
            pos = rng.randrange(len(tokens)) if tokens else 0
            if op == 0 and tokens:
                tokens[pos] = self.hostile_token()
            elif op == 1:
                tokens.insert(rng.randrange(len(tokens) + 1), self.hostile_token())
            elif op == 2 and len(tokens) > 1:
                del tokens[rng.randrange(1, len(tokens))]
            elif op == 3 and tokens:
                tokens.insert(pos, tokens[pos])
            elif op == 4 and tokens:  # a NUL or binary byte inside a token
                t = tokens[pos]
                cut = rng.randrange(len(t) + 1)
                tokens[pos] = t[:cut] + self.pick((b"\x00", b"\xff", b"\x80", b"\x01")) + t[cut:]
            elif op == 5 and tokens:
                tokens[0] = tokens[0].upper() if rng.random() < 0.5 else tokens[0][:-1]
            elif op == 6:
                tokens.append(self.pick((b"noreply", *Q_LIKE[:1], b"q", b"x")))
            elif op == 7 and tokens:
                tokens[pos] = self.pick(HUGE_NUMBERS)
        return tokens

    def hostile_token(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.4:
            return self.pick(HOSTILE_WORDS)
        if roll < 0.7:
            return self.pick(HUGE_NUMBERS)
        return self.pick(GARBAGE_TOKENS)

    def data_block(self, value: bytes) -> tuple[bytes, bytes]:
        """(the length token, the data block) - usually right, sometimes not."""
        rng = self.rng
        roll = rng.random()
        length = b"%d" % len(value)
        block = value + b"\r\n"
        if roll < 0.88:
            return length, block
        if roll < 0.93:  # a near miss: memcached reads exactly that many bytes, then wants CRLF
            return b"%d" % max(0, len(value) + rng.choice([-2, -1, 1, 2])), block
        if roll < 0.96:
            return length, value + self.pick((b"\n", b"\r", b"xx", b"\r\nx"))
        if roll < 0.98:
            return self.pick((b"-1", b"abc", b"", b"2147483648", b"4294967297")), block
        return length, block + block  # the block again, parsed as a command

    def storage(self) -> bytes:
        command = self.pick(STORAGE)
        value = self.value()
        length, block = self.data_block(value)
        tokens = [command, self.key(), self.flags(), self.exptime(), length]
        if command == b"cas":
            tokens.append(self.pick(UNREACHABLE_CAS) if self.chance(0.9) else self.number())
        tokens += self.noreply()
        return self.line(tokens, block)

    def retrieval(self) -> bytes:
        command = self.pick(RETRIEVAL)
        keys = [self.key() for _ in range(self.rng.choice([1, 1, 1, 2, 3, 6]))]
        if self.chance(0.01):
            # A get line past 2048 bytes: memcached lets only get/gets lines grow that long
            # when they arrive in pieces, so no gat and no mutation here.
            keys = [self.pick(self.names) for _ in range(300)]
            return self.line([self.pick((b"get", b"gets")), *keys], mutate=False)
        if self.chance(0.03):
            keys = []
        head = [command, self.exptime()] if command in (b"gat", b"gats") else [command]
        return self.line(head + keys)

    def delete(self) -> bytes:
        tokens = [b"delete", self.key()]
        roll = self.rng.random()
        if roll < 0.15:
            tokens.append(self.pick((b"0", b"5", b"-1", b"abc")))
        return self.line(tokens + self.noreply())

    def arithmetic(self) -> bytes:
        return self.line([self.pick((b"incr", b"decr")), self.key(), self.number(),
                          *self.noreply()])

    def touch(self) -> bytes:
        return self.line([b"touch", self.key(), self.exptime(), *self.noreply()])

    def flush_all(self) -> bytes:
        if not self.options.flush_all:
            return self.mn()
        # Never a positive delay: the flush would land mid-run at a different time per server.
        args = [[], [b"0"], [b"-1"], [b"abc"], [b"0", b"x"], [b"-5"]][self.rng.randrange(6)]
        return self.line([b"flush_all", *args, *self.noreply()], mutate=False)

    def verbosity(self) -> bytes:
        # Level 0 and 1 only: memcached at -vv logs every command to its stderr file.
        args = [[b"0"], [b"1"], [], [b"abc"], [b"1", b"2", b"3"]][self.rng.randrange(5)]
        return self.line([b"verbosity", *args, *self.noreply()], mutate=False)

    def version(self) -> bytes:
        return self.line([b"version", *([b"x"] if self.chance(0.2) else [])], mutate=False)

    def stats(self) -> bytes:
        arg = self.pick(STATS_ARGS)
        return self.line([b"stats", *arg.split()], mutate=False)

    def misc(self) -> bytes:
        choice = self.rng.randrange(5)
        if choice == 0:
            return self.line([b"cache_memlimit", self.pick((b"1", b"2048", b"abc"))],
                             mutate=False)
        if choice == 1:
            return self.line([b"shutdown", *([b"graceful"] if self.chance(0.5) else [])],
                             mutate=False)
        if choice == 2:
            return b"quit\r\n"
        if choice == 3:
            return b"GET / HTTP/1.1\r\n"  # memcached closes on a last token HTTP/...
        return b"\r\n"

    def garbage_line(self) -> bytes:
        body = bytes(self.rng.choice(b"ab \x00\x01\x7f\x80\xff\t") for _ in range(
            self.rng.randrange(1, 30)))
        return body.replace(b"\n", b"") + b"\r\n"

    # --- meta -----------------------------------------------------------------------------------

    def meta_key(self, flags: list[bytes]) -> bytes:
        key = self.key()
        if self.chance(0.1):
            flags.append(b"b")
            if self.chance(0.9):
                return base64.b64encode(key)
            return self.pick((b"!!!!", b"Zm9", b"====", b"YQ"))
        return key

    def meta_flags(self, command: bytes) -> list[bytes]:
        rng = self.rng
        letters = list(META_FLAGS[command])
        if self.chance(0.05):
            letters += NEWER_META_FLAGS.get(command, ())
        chosen = rng.sample(letters, rng.randint(0, min(5, len(letters))))
        tokens = [self.meta_token(command, letter) for letter in chosen if letter != "b"]
        if self.chance(self.options.q_like_rate):
            tokens.insert(rng.randrange(len(tokens) + 1), self.pick(Q_LIKE))
        if self.chance(0.03):
            tokens.append(self.pick((b"!", b"9", b"vv", b"P", b"L", b"Oa", b"v")))
        if self.chance(0.01):
            tokens += [b"P"] * rng.choice([18, 19, 30])
        return tokens

    def meta_token(self, command: bytes, letter: str) -> bytes:
        rng = self.rng
        flag = letter.encode()
        if letter in "TNR":
            return flag + self.pick((b"0", b"-1", b"30", b"1000", b"", b"abc", b"2592001"))
        if letter == "F":
            return flag + self.pick((b"0", b"7", b"4294967295", b"4294967296", b"-1", b"x"))
        if letter in "CE":
            return flag + self.pick((*UNREACHABLE_CAS[:2], b"abc", b""))
        if letter in "JD":
            return flag + self.pick((b"0", b"1", b"13", b"18446744073709551615",
                                     b"18446744073709551616", b"-1", b"x", b""))
        if letter == "M":
            modes = (b"E", b"A", b"P", b"R", b"S", b"s", b"a", b"X", b"SS", b"") \
                if command == b"ms" else (b"I", b"+", b"D", b"-", b"i", b"X", b"")
            return flag + self.pick(modes)
        if letter == "O":
            size = rng.choice([0, 1, 8, 32, 33, 40])
            return flag + bytes(rng.choice(b"abcXYZ019") for _ in range(size))
        return flag

    def mg(self) -> bytes:
        flags: list[bytes] = []
        key = self.meta_key(flags)
        return self.line([b"mg", key, *flags, *self.meta_flags(b"mg")])

    def ms(self) -> bytes:
        flags: list[bytes] = []
        key = self.meta_key(flags)
        value = self.value()
        length, block = self.data_block(value)
        return self.line([b"ms", key, length, *flags, *self.meta_flags(b"ms")], block)

    def md(self) -> bytes:
        flags: list[bytes] = []
        key = self.meta_key(flags)
        return self.line([b"md", key, *flags, *self.meta_flags(b"md")])

    def ma(self) -> bytes:
        flags: list[bytes] = []
        key = self.meta_key(flags)
        return self.line([b"ma", key, *flags, *self.meta_flags(b"ma")])

    def me(self) -> bytes:
        flags: list[bytes] = []
        key = self.meta_key(flags)
        return self.line([b"me", key, *flags])

    def mn(self) -> bytes:
        return self.line([b"mn"], mutate=False)

    # --- rare shapes ----------------------------------------------------------------------------

    def binary_request(self) -> bytes:
        """A binary-protocol GET header (first byte 0x80) for key "a"."""
        return bytes([0x80, 0x00, 0x00, 0x01]) + bytes(4) + b"\x00\x00\x00\x01" + bytes(12) + b"a"

    def pipelined_case(self) -> list[bytes]:
        """Round six's reply path (replies sent inline as backends answer, multi-gets split
        per shard and joined in key order, reply shapes checked per key): sets of empty, small
        and big values under nine names (one a 250-byte key), then a pipelined run of get,
        gets, gat, gats and mg naming several of them, misses and repeats included, with
        noreply sets and deletes between the reads. The replies stay under PIPELINE_REPLY
        bytes (the runner cuts a reply at 8 MiB)."""
        rng = self.rng
        names = [self.prefix + b"p%d" % i for i in range(8)]
        names.append(self.prefix + b"k" * (250 - PREFIX_LENGTH))
        sizes: dict[bytes, int] = {}  # what each name holds, as far as the case knows
        reply = 0

        def stored(name: bytes, noreply: bytes = b"") -> bytes:
            value = self.pipelined_value()
            sizes[name] = len(value)
            return b"set %s %d 0 %d%s\r\n%s\r\n" % (
                name, rng.choice([0, 1, 4294967295]), len(value), noreply, value)

        commands = [stored(name) for name in rng.sample(names, rng.randint(2, len(names)))]
        for _ in range(rng.randint(8, 40)):
            roll = rng.random()
            keys = [rng.choice(names) for _ in range(rng.choice([1, 2, 3, 5, 8, 12]))]
            while sum(len(k) + 1 for k in keys) > 2000:  # no line past memcached's 2048
                keys.pop()
            size = sum(sizes.get(k, 0) + 300 for k in keys)
            if roll < 0.55 and reply + size > PIPELINE_REPLY:
                roll = 0.8  # a write instead of a read that would pass the bound
            if roll < 0.45:
                reply += size
                commands.append(b"%s %s\r\n" % (self.pick((b"get", b"gets")), b" ".join(keys)))
            elif roll < 0.55:
                reply += size
                commands.append(b"%s %s %s\r\n" % (self.pick((b"gat", b"gats")),
                                                    self.pick((b"0", b"1000")), b" ".join(keys)))
            elif roll < 0.75:
                reply += sizes.get(keys[0], 0) + 300
                letters = rng.sample([b"v", b"k", b"f", b"s", b"c", b"Oab1", b"q"],
                                     rng.randint(0, 4))
                if b"c" in letters and b"k" not in letters:
                    letters.append(b"k")  # a CAS is compared per key (canonical_cas)
                commands.append(b" ".join([b"mg", keys[0], *letters]) + b"\r\n")
            elif roll < 0.92:
                commands.append(stored(keys[0], b" noreply"))
            elif roll < 0.97:
                sizes.pop(keys[0], None)
                commands.append(b"delete %s noreply\r\n" % keys[0])
            else:
                commands.append(b"mn\r\n")
        return commands

    def cas_mode_case(self) -> list[bytes]:
        """Items of an empty, numeric or non-numeric value, then `ms` in every mode and `ma`,
        `md`, incr/decr with C of 0 or of a value no counter reaches (q, I, k, c among the
        flags), on them and on a miss, with `mg` reading back: the order in which memcached
        compares the CAS, the mode and the value (do_store_item, do_add_delta)."""
        rng = self.rng
        names = [*self.names[:2], self.prefix + b"m"]  # the last one is never stored first
        values = (b"", b"12", b"abc", b" 5", b"18446744073709551615", b"0")
        commands = []
        for name in names[:2]:
            value = self.pick(values)
            commands.append(b"set %s 0 0 %d\r\n%s\r\n" % (name, len(value), value))
        for _ in range(rng.randint(2, 6)):
            key = self.pick(names)
            cas = self.pick((b"C0", b"C0", b"C99999999999", b""))
            extra = rng.sample([b"q", b"I", b"k", b"c", b"O7", b"T0"], rng.randint(0, 2))
            roll = rng.random()
            if roll < 0.45:
                value = self.pick(values)
                mode = self.pick((b"ME", b"MA", b"MP", b"MR", b"MS", b"E", b"A", b"P", b""))
                tokens = [b"ms", key, b"%d" % len(value), mode, cas, *extra]
                commands.append(b" ".join(t for t in tokens if t) + b"\r\n" + value + b"\r\n")
            elif roll < 0.7:
                mode = self.pick((b"", b"MI", b"MD", b"M+", b"M-", b"MX"))
                tokens = [b"ma", key, mode, cas, self.pick((b"v", b"", b"D3", b"N0")), *extra]
                if b"N0" in tokens and b"q" in tokens:
                    tokens.remove(b"q")  # documented: ma_vivify_ignores_q
                commands.append(b" ".join(t for t in tokens if t) + b"\r\n")
            elif roll < 0.8:
                commands.append(b" ".join(t for t in [b"md", key, cas, *extra] if t) + b"\r\n")
            elif roll < 0.9:
                commands.append(b"%s %s %s\r\n" % (self.pick((b"incr", b"decr")), key,
                                                    self.pick((b"1", b"0", b"abc"))))
            else:
                commands.append(b"mg %s v f k c\r\n" % key)
        commands.append(b"mg %s v k\r\nmg %s v k\r\n" % (names[0], names[1]))
        return commands

    def pipelined_value(self) -> bytes:
        roll = self.rng.random()
        if roll < 0.2:
            return b""
        if roll < 0.9:
            return bytes(self.rng.choice(b"abEND\r\n") for _ in range(self.rng.randrange(1, 40)))
        if roll < 0.99:
            return b"w" * self.rng.choice([5000, 70000])
        return b"W" * 500_000

    def long_line_case(self) -> list[bytes]:
        """A line past memcached's 2048-byte limit; the case stays far below its 16 KiB read
        buffer, so memcached sees the whole line in one read, as memring does."""
        rng = self.rng
        size = rng.choice([2047, 2048, 2049, 3000, 8000])
        kind = rng.randrange(4)
        if kind == 0:
            line = b"set " + self.pick(self.names) + b" 0 0 1 " + b"x" * size + b"\r\nv\r\n"
        elif kind == 1:
            line = b"mg " + self.pick(self.names) + b" O" + b"o" * size + b"\r\n"
        elif kind == 2:
            line = b"bogus " + b"z" * size + b"\r\n"
        else:
            line = b"get " + b" ".join([self.pick(self.names)] * (size // 11)) + b"\r\n"
        first = self.line([b"set", self.pick(self.names), b"0", b"0", b"1"], b"v\r\n")
        return [first, line, self.mg()]
