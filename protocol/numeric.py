"""Number tokens read the way memcached reads them.

memcached parses numbers with strtol/strtoul wrapped in its safe_strto* checks
(util.c): leading C whitespace and a sign are accepted, a trailing C whitespace
character ends the number, and a negative value is refused for unsigned fields
unless it is "-0". Python's int() differs (it takes "1_0" and surrounding
spaces), so every numeric field of the protocol goes through these functions.
Each returns None where memcached's parser would fail.
"""

from __future__ import annotations

import math
import re
from typing import Final

_C_SPACE = b" \t\n\v\f\r"
_DIGITS = frozenset(b"0123456789")

U32_MAX: Final = (1 << 32) - 1
U64_MAX: Final = (1 << 64) - 1
I32_MIN: Final = -(1 << 31)
I32_MAX: Final = (1 << 31) - 1


def _strto(token: bytes) -> tuple[int, bool] | None:
    """The value and whether a '-' sign was seen, or None if strto* fails."""
    s = token.lstrip(_C_SPACE)
    negative = False
    if s[:1] in (b"+", b"-"):
        negative = s[:1] == b"-"
        s = s[1:]
    end = 0
    n = len(s)
    while end < n and s[end] in _DIGITS:
        end += 1
    if end == 0:
        return None
    if end < n and s[end] not in _C_SPACE:
        return None
    value = int(s[:end])
    return (-value if negative else value), negative


def parse_i32(token: bytes) -> int | None:
    """safe_strtol: a signed 32-bit integer (exptime, lengths, meta TTLs).

    memcached 1.6.18 parses into a 64-bit long and keeps the low 32 bits, so an exptime
    of 4294967297 becomes 1 second; we refuse values outside int32 instead.
    """
    if token.isdigit() and len(token) < 10:
        return int(token)
    parsed = _strto(token)
    if parsed is None:
        return None
    value = parsed[0]
    if value < I32_MIN or value > I32_MAX:
        return None
    return value


def _unsigned(token: bytes, bits: int) -> int | None:
    parsed = _strto(token)
    if parsed is None:
        return None
    value, negative = parsed
    # strtoul negates in unsigned arithmetic; an out-of-range magnitude is ERANGE.
    if -value > U64_MAX or value > U64_MAX:
        return None
    if negative:
        value &= U64_MAX
        # safe_strtoul refuses a '-' only when the result looks negative as signed.
        if value >> 63:
            return None
    return value & ((1 << bits) - 1) if bits < 64 else value


def parse_u32_flags(token: bytes) -> int | None:
    """Client flags: an unsigned 32-bit integer.

    memcached 1.6.18 accepts 4294967296 and silently stores 0 (safe_strtoul on a
    64-bit long); we refuse anything above 2**32-1 instead, as the brief asks.
    """
    if token.isdigit() and len(token) < 10:
        return int(token)
    value = _unsigned(token, 64)
    if value is None or value > U32_MAX:
        return None
    return value


def parse_u64(token: bytes) -> int | None:
    """safe_strtoull: an unsigned 64-bit integer (deltas, CAS values)."""
    if token.isdigit() and len(token) < 20:
        return int(token)
    return _unsigned(token, 64)


def parse_u32_truncated(token: bytes) -> int | None:
    """safe_strtoul into a uint32_t (admin commands' numbers): memcached 1.6.18 reads an
    unsigned long and keeps its low 32 bits (`lru_crawler tocrawl 4294967296` sets 0)."""
    value = _unsigned(token, 64)
    return None if value is None else value & U32_MAX


def parse_stored_number(data: bytes) -> int | None:
    """An item's value read as a number by incr/decr (strtoull on the data)."""
    if not data:
        return None
    return _unsigned(data, 64)



_DOUBLE = re.compile(rb"[ \t\n\v\f\r]*[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?"
                     rb"|inf(?:inity)?|nan)(?:[ \t\n\v\f\r].*)?", re.IGNORECASE | re.DOTALL)


def parse_double(token: bytes) -> float | None:
    """safe_strtod (lru tune, slabs automove ratio): a decimal number as strtod reads it; an
    overflow is ERANGE (None), and hexadecimal floats, which strtod also takes, are refused."""
    if _DOUBLE.fullmatch(token) is None:
        return None
    value = float(token.split()[0])
    if math.isinf(value) and b"inf" not in token.lower():
        return None
    return value
