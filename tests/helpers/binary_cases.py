"""The binary-protocol differential corpus: frames built with the codec's encoder.

A case is a sequence of steps; each step's bytes go out in one write and, unless the step
is the last of a closing case, end with a NOOP sentinel (opaque SENTINEL_OPAQUE) whose reply
marks the end of the step's replies. A closing case's last step is read until the server
closes (memcached drops the replies of the read that closes, so the closing frame gets a
step of its own).
"""

from __future__ import annotations

from dataclasses import dataclass

from memring.protocol.binary_frames import (
    HEADER,
    MAGIC_REQUEST,
    BinaryRequest,
    BinaryResponse,
    Opcode,
    arithmetic_extras,
    encode_request,
    encode_response,
    expiration_extras,
    storage_extras,
)

SENTINEL_OPAQUE = 0x5E471E
SENTINEL = encode_request(BinaryRequest(Opcode.NOOP, opaque=SENTINEL_OPAQUE))
SENTINEL_REPLY = encode_response(BinaryResponse(Opcode.NOOP, opaque=SENTINEL_OPAQUE))
NO_CREATE = 0xFFFFFFFF


@dataclass(frozen=True)
class BinaryCase:
    name: str
    steps: tuple[bytes, ...]
    closes: bool = False  # the last step ends with the server closing the connection


def frame(opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"",
          *, opaque: int = 0, cas: int = 0) -> bytes:
    return encode_request(BinaryRequest(opcode, key, extras, value, opaque, cas))


def raw(opcode: int, key: bytes = b"", extras: bytes = b"", value: bytes = b"", *,
        bodylen: int | None = None, magic: int = MAGIC_REQUEST, opaque: int = 0) -> bytes:
    """A frame whose header may lie about its body length or magic."""
    body = len(extras) + len(key) + len(value) if bodylen is None else bodylen
    return HEADER.pack(magic, opcode, len(key), len(extras), 0, 0, body, opaque, 0) \
        + extras + key + value


def set_(key: bytes, value: bytes, flags: int = 0, exptime: int = 0, *, opcode: int = Opcode.SET,
         cas: int = 0, opaque: int = 0) -> bytes:
    return frame(opcode, key, storage_extras(flags, exptime), value, cas=cas, opaque=opaque)


def get(key: bytes, opcode: int = Opcode.GET, opaque: int = 0) -> bytes:
    return frame(opcode, key, opaque=opaque)


def incr(key: bytes, delta: int, initial: int = 0, exptime: int = 0, *,
         opcode: int = Opcode.INCREMENT, cas: int = 0) -> bytes:
    return frame(opcode, key, arithmetic_extras(delta, initial, exptime), cas=cas)


def touch(key: bytes, exptime: int, opcode: int = Opcode.TOUCH) -> bytes:
    return frame(opcode, key, expiration_extras(exptime))


def case(name: str, *steps: bytes, closes: bool = False) -> BinaryCase:
    return BinaryCase(name, steps, closes)


K251 = b"k" * 251
MAX_VALUE = 1048576 - 59 - 1  # largest value of a 1-byte key with flags 0 (sizes.item_size)

CASES: tuple[BinaryCase, ...] = (
    # --- retrieval ------------------------------------------------------------------------
    case("get_family", set_(b"k", b"hello", 7, opaque=1) + get(b"k", opaque=2)
         + get(b"k", Opcode.GETK, 3) + get(b"nope", opaque=4) + get(b"nope", Opcode.GETK, 5)
         + get(b"nope", Opcode.GETQ) + get(b"nope", Opcode.GETKQ) + get(b"k", Opcode.GETQ, 6)
         + get(b"k", Opcode.GETKQ, 7)),
    case("getkq_batch", set_(b"a", b"1") + set_(b"c", b"3", 9)
         + b"".join(get(k, Opcode.GETKQ, i) for i, k in enumerate([b"a", b"b", b"c", b"a", b"d"]))),
    case("empty_value", set_(b"k", b"") + get(b"k") + get(b"k", Opcode.GETK)),
    # --- storage --------------------------------------------------------------------------
    case("add_replace", frame(Opcode.ADD, b"k", storage_extras(0, 0), b"a")
         + frame(Opcode.ADD, b"k", storage_extras(0, 0), b"b")
         + frame(Opcode.REPLACE, b"nope", storage_extras(0, 0), b"c")
         + frame(Opcode.REPLACE, b"k", storage_extras(3, 0), b"d") + get(b"k")),
    case("quiet_pipeline", set_(b"a", b"1", opcode=Opcode.SETQ)
         + set_(b"b", b"2", opcode=Opcode.SETQ)
         + set_(b"a", b"x", opcode=Opcode.ADDQ) + set_(b"z", b"x", opcode=Opcode.REPLACEQ)
         + set_(b"c", b"3", opcode=Opcode.ADDQ) + set_(b"b", b"22", opcode=Opcode.REPLACEQ)
         + frame(Opcode.DELETEQ, b"a") + frame(Opcode.DELETEQ, b"a")
         + get(b"a", Opcode.GETKQ) + get(b"b", Opcode.GETKQ) + get(b"c", Opcode.GETKQ)),
    case("cas", set_(b"k", b"a") + get(b"k") + set_(b"k", b"b", cas=999) + set_(b"k", b"c", cas=1)
         + set_(b"nope", b"d", cas=1) + frame(Opcode.ADD, b"k", storage_extras(0, 0), b"e", cas=2)
         + frame(Opcode.REPLACE, b"k", storage_extras(0, 0), b"f", cas=2)
         + frame(Opcode.REPLACE, b"k", storage_extras(0, 0), b"g", cas=3) + get(b"k")),
    case("append_prepend", frame(Opcode.APPEND, b"k", value=b"x") + set_(b"k", b"mid", 5)
         + frame(Opcode.APPEND, b"k", value=b">") + frame(Opcode.PREPEND, b"k", value=b"<")
         + frame(Opcode.APPENDQ, b"k", value=b")") + frame(Opcode.PREPENDQ, b"k", value=b"(")
         + frame(Opcode.APPEND, b"k", value=b"!", cas=99)
         + frame(Opcode.APPENDQ, b"nope", value=b"!") + get(b"k")),
    case("append_matching_cas", set_(b"k", b"a") + frame(Opcode.APPEND, b"k", value=b"b", cas=1)
         + get(b"k")),
    case("expiry", set_(b"k", b"v", exptime=-1 & 0xFFFFFFFF) + get(b"k")
         + set_(b"j", b"v", exptime=1000) + get(b"j") + set_(b"i", b"v", exptime=1)
         + get(b"i")),
    case("large_values", set_(b"k", b"v" * MAX_VALUE) + get(b"k", Opcode.GETK)
         + set_(b"j", b"w" * (MAX_VALUE - 4), 1) + get(b"j")),
    case("too_large", set_(b"k", b"old") + set_(b"k", b"v" * (MAX_VALUE + 1)) + get(b"k")
         + set_(b"j", b"old") + frame(Opcode.ADD, b"j", storage_extras(0, 0), b"v" * 2_000_000)
         + get(b"j") + set_(b"j", b"v" * (MAX_VALUE - 3), 1)
         + frame(Opcode.APPEND, b"j", value=b"v" * 2_000_000) + get(b"i")),
    case("too_large_quiet", set_(b"k", b"old")
         + set_(b"k", b"v" * 1_100_000, opcode=Opcode.SETQ) + get(b"k")),
    # --- delete ---------------------------------------------------------------------------
    case("delete", frame(Opcode.DELETE, b"nope") + set_(b"k", b"v")
         + frame(Opcode.DELETE, b"k", cas=77) + frame(Opcode.DELETE, b"k", cas=1)
         + set_(b"j", b"v") + frame(Opcode.DELETEQ, b"j") + frame(Opcode.DELETEQ, b"j")
         + get(b"j")),
    # --- incr / decr ----------------------------------------------------------------------
    case("incr_create", incr(b"n", 5, 10) + incr(b"n", 5, 10) + get(b"n")
         + frame(Opcode.DECREMENT, b"m", arithmetic_extras(1, 3, 0)) + get(b"m")),
    case("incr_no_create", incr(b"n", 1, 10, NO_CREATE)
         + frame(Opcode.DECREMENT, b"n", arithmetic_extras(1, 10, NO_CREATE))
         + incr(b"n", 1, 10, NO_CREATE, opcode=Opcode.INCREMENTQ) + get(b"n")),
    # (a get's reply holds its item until written, and memcached's incr then makes a new
    # item instead of rewriting in place: steps keep gets apart from later incrs)
    case("incr_decr", set_(b"n", b"100") + incr(b"n", 5)
         + frame(Opcode.DECREMENT, b"n", arithmetic_extras(200, 0, 0)) + get(b"n"),
         set_(b"w", b"18446744073709551615") + incr(b"w", 2) + get(b"w"),
         incr(b"w", 1, opcode=Opcode.INCREMENTQ)
         + frame(Opcode.DECREMENTQ, b"w", arithmetic_extras(1, 0, 0)) + get(b"w")),
    case("incr_non_numeric", set_(b"s", b"abc") + incr(b"s", 1)
         + incr(b"s", 1, opcode=Opcode.INCREMENTQ) + set_(b"e", b"") + incr(b"e", 1)),
    case("incr_cas", set_(b"n", b"1") + incr(b"n", 1, cas=5) + incr(b"n", 1, cas=1) + get(b"n")),
    case("incr_shrinks_in_place", set_(b"n", b"100") + frame(
        Opcode.DECREMENT, b"n", arithmetic_extras(95, 0, 0)) + get(b"n")),
    # --- touch / gat ----------------------------------------------------------------------
    case("touch_gat", set_(b"k", b"v", 3) + touch(b"k", 100) + touch(b"nope", 100)
         + touch(b"k", 100, Opcode.GAT) + touch(b"k", 100, Opcode.GATK)
         + touch(b"nope", 100, Opcode.GAT) + touch(b"nope", 100, Opcode.GATK)
         + touch(b"nope", 100, Opcode.GATQ) + touch(b"nope", 100, Opcode.GATKQ)
         + touch(b"k", 100, Opcode.GATQ) + touch(b"k", 100, Opcode.GATKQ)),
    case("touch_expires", set_(b"k", b"v") + touch(b"k", -1 & 0xFFFFFFFF) + get(b"k")),
    # --- administration -------------------------------------------------------------------
    case("flush", set_(b"k", b"v") + frame(Opcode.FLUSH) + get(b"k") + set_(b"j", b"v")
         + frame(Opcode.FLUSHQ) + get(b"j") + set_(b"i", b"v")
         + frame(Opcode.FLUSH, extras=expiration_extras(100)) + get(b"i")),
    case("noop_version", frame(Opcode.NOOP, opaque=3) + frame(Opcode.VERSION, opaque=4)),
    case("quit", set_(b"k", b"v"), frame(Opcode.QUIT, opaque=9), closes=True),
    case("quitq", set_(b"k", b"v"), frame(Opcode.QUITQ), closes=True),
    case("stat_subgroups", frame(Opcode.STAT, b"reset", opaque=1)
         + frame(Opcode.STAT, b"nonsense", opaque=2) + frame(Opcode.STAT, b"detail on")
         + frame(Opcode.STAT, b"detail off") + frame(Opcode.STAT, b"detail x")
         + frame(Opcode.STAT, b"detail dump") + frame(Opcode.STAT, b"sizes")),
    # --- unknown and unimplemented opcodes ------------------------------------------------
    # memcached swallows the whole body length after reading extras and key: 3 more bytes
    case("unknown_opcode_swallows_body", raw(0x40, b"abc", value=b"xyz") + b"JJJ"
         + frame(Opcode.NOOP)),
    case("verbosity_is_unknown",
         frame(Opcode.VERBOSITY, extras=b"\0\0\0\1") + b"\0\0\0\0" + frame(Opcode.VERSION)),
    case("sasl_without_auth", frame(Opcode.SASL_LIST_MECHS)
         + frame(Opcode.SASL_AUTH, b"PLAIN", value=b"\0a\0b") + frame(Opcode.NOOP)),
    # --- frames longer than their command reads (the rest is the next frame) ---------------
    case("stat_body_past_key", raw(Opcode.STAT, b"nonsense", bodylen=8 + 24)
         + frame(Opcode.NOOP, opaque=5)),
    case("touch_body_past_key", set_(b"k", b"v")
         + raw(Opcode.TOUCH, b"k", expiration_extras(10), bodylen=5 + 24)
         + frame(Opcode.NOOP, opaque=5)),
    # --- bad frames -----------------------------------------------------------------------
    case("bad_magic", set_(b"k", b"v"), raw(Opcode.GET, b"k", magic=0x81), closes=True),
    case("text_after_binary", set_(b"k", b"v"), b"get k\r\n" + b"\0" * 20, closes=True),
    case("get_with_extras", set_(b"k", b"v"), frame(Opcode.GET, b"k", b"\0\0\0\0"),
         closes=True),
    case("set_without_extras", frame(Opcode.NOOP), frame(Opcode.SET, b"k", value=b"v"),
         closes=True),
    case("incr_bad_extras", frame(Opcode.NOOP), frame(Opcode.INCREMENT, b"k", b"\0" * 8),
         closes=True),
    case("flush_with_key", frame(Opcode.NOOP), frame(Opcode.FLUSH, b"k"), closes=True),
    case("noop_with_body", frame(Opcode.NOOP), frame(Opcode.NOOP, value=b"x"), closes=True),
    case("get_no_key", frame(Opcode.NOOP), frame(Opcode.GET), closes=True),
    case("key_too_long", frame(Opcode.NOOP), get(K251), closes=True),
    case("key_longer_than_body", frame(Opcode.NOOP), raw(Opcode.GET, b"abc", bodylen=2)
         + b"\0" * 10, closes=True),
    case("unknown_key_longer_than_body", frame(Opcode.NOOP),
         raw(0x40, b"abcd", bodylen=1) + b"\0" * 10, closes=True),
)
