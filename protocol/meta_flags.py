"""Meta command flags, validated as memcached's `_meta_flag_preparse` does.

Every meta command (mg, ms, md, ma) accepts every known flag at parse time; what a
flag does is up to the command. Duplicate and unknown flags stop the scan at once;
a malformed numeric token is remembered and the scan goes on, so the *last* such
error is the one reported (proto_text.c). md and ma report any of these as
`invalid or duplicate flag`; mg and ms give the specific message.
"""

from __future__ import annotations

from typing import Final

from memring.protocol.numeric import parse_i32, parse_u32_flags, parse_u64
from memring.protocol.requests import MetaFlags

# protocol.txt: "The flags are limited to 32 bytes" for the opaque (O) token.
MAX_OPAQUE_LENGTH: Final = 32
# mg/ms/md/ma refuse a line of 20 or more tokens (MFLAG_MAX_OPT_LENGTH, counted with
# memcached's terminal token).
MAX_META_TOKENS: Final = 19

BAD_FORMAT: Final = b"CLIENT_ERROR bad command line format"
BAD_TOKEN: Final = b"CLIENT_ERROR bad token in command line format"
DUPLICATE_FLAG: Final = b"CLIENT_ERROR duplicate flag"
INVALID_FLAG: Final = b"CLIENT_ERROR invalid flag"
DECODE_ERROR: Final = b"CLIENT_ERROR error decoding key"

# Flags memcached knows, for any meta command (1.6.18 plus E and x from later releases).
_NO_TOKEN_FLAGS = frozenset("lOPLkstcfvhuqIxb")


class MetaFlagError(Exception):
    """A flag the command cannot take; `message` is what memcached answers."""

    def __init__(self, message: bytes) -> None:
        super().__init__(message)
        self.message = message


_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# memcached's base64.c decode table: '=' reads as 0 (and counts as padding); any other byte
# outside the alphabet is skipped, not refused (fuzzer: `mg Z\x01jA= b` is a miss in 1.6.18).
_BASE64_VALUE = {c: i for i, c in enumerate(_BASE64_ALPHABET)} | {ord("="): 0}


def decode_key(token: bytes) -> bytes | None:
    """The key a base64 token stands for, read as memcached's base64_decode reads it
    (None where it returns 0: no symbols, a count not a multiple of 4, bad padding)."""
    symbols = [c for c in token if c in _BASE64_VALUE]
    if not symbols or len(symbols) % 4:
        return None
    out = bytearray()
    for i in range(0, len(symbols), 4):
        block = symbols[i:i + 4]
        a, b, c, d = (_BASE64_VALUE[s] for s in block)
        out += bytes(((a << 2 | b >> 4) & 0xFF, (b << 4 | c >> 2) & 0xFF, (c << 6 | d) & 0xFF))
        pad = block.count(ord("="))
        if pad:  # decoding stops after the first block with padding in it
            if pad > 2:
                return None
            del out[-pad:]
            break
    return bytes(out) or None


def parse_meta_flags(tokens: list[bytes], start: int, *, allow_x: bool = False
                     ) -> tuple[MetaFlags, bytes, bytes | None]:
    """Parse tokens[start:] into MetaFlags, the key (tokens[1], decoded where `b` says so)
    and the error message memcached would give.

    Raises MetaFlagError for duplicate or unknown flags (the scan stops there);
    returns a soft error (or None) for bad values, where memcached keeps scanning.
    """
    flags = MetaFlags()
    seen: set[int] = set()
    order: list[str] = []
    error: bytes | None = None
    key = tokens[1]
    for i in range(start, len(tokens)):
        token = tokens[i]
        code = token[0]
        if code >= 127 or code in seen:
            raise MetaFlagError(DUPLICATE_FLAG)
        seen.add(code)
        flag = chr(code)
        rest = token[1:]
        if flag == "x" and not allow_x:  # md's, from a later release: unknown elsewhere
            raise MetaFlagError(INVALID_FLAG)
        if flag in _NO_TOKEN_FLAGS:
            if flag == "O":
                flags.opaque = token
            elif flag == "q":
                flags.quiet = True
            elif flag == "I":
                flags.invalidate = True
            elif flag == "u":
                flags.no_bump = True
            elif flag == "b":
                # decoded where the scan meets `b`, so a later flag's error wins over it
                flags.base64 = True
                decoded = decode_key(key)
                if decoded is None:
                    error = DECODE_ERROR
                else:
                    key = decoded
        elif flag in "NTR":
            value = parse_i32(rest)
            if value is None:
                error = BAD_TOKEN
            elif flag == "N":
                flags.vivify_ttl = value
            elif flag == "T":
                flags.ttl = value
            else:
                flags.recache_ttl = value
        elif flag in "CE":
            cas = parse_u64(rest)
            if cas is None:
                error = BAD_TOKEN
            elif flag == "C":
                flags.cas = cas
            else:
                flags.explicit_cas = cas
        elif flag == "F":
            client_flags = parse_u32_flags(rest)
            if client_flags is None:
                error = error or BAD_FORMAT  # memcached sets no message of its own here
            else:
                flags.client_flags = client_flags
        elif flag == "M":
            if len(token) != 2:
                error = b"CLIENT_ERROR incorrect length for M token"
            else:
                flags.mode = token[1]
        elif flag == "J":
            initial = parse_u64(rest)
            if initial is None:
                error = b"CLIENT_ERROR invalid numeric initial value"
            else:
                flags.initial = initial
        elif flag == "D":
            delta = parse_u64(rest)
            if delta is None:
                error = b"CLIENT_ERROR invalid numeric delta value"
            else:
                flags.delta = delta
        else:
            raise MetaFlagError(INVALID_FLAG)
        order.append(flag)
    flags.order = "".join(order)
    flags.tokens = tokens[start:]
    return flags, key, error
