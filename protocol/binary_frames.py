"""The memcached binary protocol's frames: the 24-byte header, opcodes, statuses, encoding.

Theory of operation: every binary message is a header (magic, opcode, key length, extras
length, data type, vbucket id or status, total body length, opaque, CAS; network byte
order) followed by the body: extras, then key, then value. A request carries magic 0x80,
a response 0x81. `BinaryRequest` and `BinaryResponse` are one frame each, with the extras
still raw; the `*_extras` functions pack and unpack the extras of the opcodes that have
them, so the server role (backend) and the client role (the proxy towards its backends)
share one spelling of every field. Opcodes and statuses are those of memcached 1.6.18's
protocol_binary.h; error bodies are the texts of its proto_bin.c write_bin_error.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

MAGIC_REQUEST = 0x80
MAGIC_RESPONSE = 0x81
HEADER = struct.Struct(">BBHBBHIIQ")
HEADER_SIZE = HEADER.size  # 24
RAW_BYTES = 0x00  # the only data type memcached sends or reads


class Opcode(enum.IntEnum):
    GET = 0x00
    SET = 0x01
    ADD = 0x02
    REPLACE = 0x03
    DELETE = 0x04
    INCREMENT = 0x05
    DECREMENT = 0x06
    QUIT = 0x07
    FLUSH = 0x08
    GETQ = 0x09
    NOOP = 0x0A
    VERSION = 0x0B
    GETK = 0x0C
    GETKQ = 0x0D
    APPEND = 0x0E
    PREPEND = 0x0F
    STAT = 0x10
    SETQ = 0x11
    ADDQ = 0x12
    REPLACEQ = 0x13
    DELETEQ = 0x14
    INCREMENTQ = 0x15
    DECREMENTQ = 0x16
    QUITQ = 0x17
    FLUSHQ = 0x18
    APPENDQ = 0x19
    PREPENDQ = 0x1A
    VERBOSITY = 0x1B  # in protocol_binary.h, not implemented by 1.6.18: Unknown command
    TOUCH = 0x1C
    GAT = 0x1D
    GATQ = 0x1E
    SASL_LIST_MECHS = 0x20
    SASL_AUTH = 0x21
    SASL_STEP = 0x22
    GATK = 0x23
    GATKQ = 0x24


# A quiet opcode answers as its loud twin but omits the success (and, for gets, the miss)
# reply; errors are always sent (proto_bin.c dispatch_bin_command, write_bin_response).
QUIET_TWIN: dict[int, Opcode] = {
    Opcode.GETQ: Opcode.GET, Opcode.GETKQ: Opcode.GETK, Opcode.SETQ: Opcode.SET,
    Opcode.ADDQ: Opcode.ADD, Opcode.REPLACEQ: Opcode.REPLACE, Opcode.DELETEQ: Opcode.DELETE,
    Opcode.INCREMENTQ: Opcode.INCREMENT, Opcode.DECREMENTQ: Opcode.DECREMENT,
    Opcode.QUITQ: Opcode.QUIT, Opcode.FLUSHQ: Opcode.FLUSH, Opcode.APPENDQ: Opcode.APPEND,
    Opcode.PREPENDQ: Opcode.PREPEND, Opcode.GATQ: Opcode.GAT, Opcode.GATKQ: Opcode.GATK}


def loud(opcode: int) -> int:
    """The opcode a quiet variant behaves as (itself if it is not quiet)."""
    return QUIET_TWIN.get(opcode, opcode)


def is_quiet(opcode: int) -> bool:
    return opcode in QUIET_TWIN


class Status(enum.IntEnum):
    SUCCESS = 0x00
    KEY_ENOENT = 0x01
    KEY_EEXISTS = 0x02
    E2BIG = 0x03
    EINVAL = 0x04
    NOT_STORED = 0x05
    DELTA_BADVAL = 0x06
    AUTH_ERROR = 0x20
    AUTH_CONTINUE = 0x21
    UNKNOWN_COMMAND = 0x81
    ENOMEM = 0x82
    # Not sent by memcached 1.6.18; memring's cluster refusals (README "Compatibility
    # notes"): the write was not applied, the body says why (protocol.write_refusals).
    TEMPORARY_FAILURE = 0x86


ERROR_TEXT: dict[int, bytes] = {
    Status.ENOMEM: b"Out of memory",
    Status.UNKNOWN_COMMAND: b"Unknown command",
    Status.KEY_ENOENT: b"Not found",
    Status.EINVAL: b"Invalid arguments",
    Status.KEY_EEXISTS: b"Data exists for key.",
    Status.E2BIG: b"Too large.",
    Status.DELTA_BADVAL: b"Non-numeric server-side value for incr or decr",
    Status.NOT_STORED: b"Not stored.",
    Status.AUTH_ERROR: b"Auth failure.",
}

# incr/decr with this expiration fail on a miss instead of creating the key (protocol.txt).
NO_CREATE = 0xFFFFFFFF


@dataclass(slots=True)
class BinaryRequest:
    """One request frame (magic 0x80); `extras` raw, see the `*_extras` functions."""

    opcode: int
    key: bytes = b""
    extras: bytes = b""
    value: bytes = b""
    opaque: int = 0
    cas: int = 0
    vbucket: int = 0
    datatype: int = RAW_BYTES


@dataclass(slots=True)
class BinaryResponse:
    """One response frame (magic 0x81)."""

    opcode: int
    status: int = Status.SUCCESS
    key: bytes = b""
    extras: bytes = b""
    value: bytes = b""
    opaque: int = 0
    cas: int = 0
    datatype: int = RAW_BYTES


def _frame(magic: int, opcode: int, key: bytes, extras: bytes, value: bytes | memoryview,
           datatype: int, vbucket_or_status: int, opaque: int, cas: int) -> bytes:
    body = len(extras) + len(key) + len(value)
    return HEADER.pack(magic, opcode, len(key), len(extras), datatype, vbucket_or_status,
                       body, opaque, cas) + extras + key + value


def encode_request(request: BinaryRequest) -> bytes:
    return _frame(MAGIC_REQUEST, request.opcode, request.key, request.extras, request.value,
                  request.datatype, request.vbucket, request.opaque, request.cas)


def encode_response(response: BinaryResponse) -> bytes:
    return _frame(MAGIC_RESPONSE, response.opcode, response.key, response.extras,
                  response.value, response.datatype, response.status, response.opaque,
                  response.cas)


def error_response(opcode: int, status: int, opaque: int, text: bytes | None = None) -> bytes:
    """An error reply as memcached writes it: no extras or key, the status's text as body
    (or `text`), CAS 0, the request's opcode and opaque echoed."""
    body = ERROR_TEXT[status] if text is None else text
    return _frame(MAGIC_RESPONSE, opcode, b"", b"", body, RAW_BYTES, status, opaque, 0)


def value_response(opcode: int, key: bytes, flags: int, value: bytes | memoryview, opaque: int,
                   cas: int) -> bytes:
    """A get hit's reply (extras: the flags; `key` empty unless getk/gatk), packed at once:
    the hot path of a binary get."""
    return HEADER.pack(MAGIC_RESPONSE, opcode, len(key), 4, RAW_BYTES, 0,
                       4 + len(key) + len(value), opaque, cas) + _FLAGS.pack(flags) + key + value


# -- extras ------------------------------------------------------------------------------

_STORAGE = struct.Struct(">II")       # set/add/replace: flags, expiration
_ARITHMETIC = struct.Struct(">QQI")   # incr/decr: delta, initial, expiration
_EXPIRATION = struct.Struct(">I")     # touch/gat/flush: expiration
_FLAGS = _EXPIRATION                  # get replies: the item's flags
_COUNTER = struct.Struct(">Q")        # incr/decr replies: the new value


def storage_extras(flags: int, exptime: int) -> bytes:
    return _STORAGE.pack(flags, exptime & 0xFFFFFFFF)


def parse_storage_extras(extras: bytes) -> tuple[int, int]:
    """(flags, exptime); the expiration is unsigned, as proto_bin.c passes it to realtime()
    (a value past 30 days is an absolute time, 2**32-1 is in 2106)."""
    flags, exptime = _STORAGE.unpack(extras)
    return flags, exptime


def arithmetic_extras(delta: int, initial: int, exptime: int) -> bytes:
    return _ARITHMETIC.pack(delta, initial, exptime & 0xFFFFFFFF)


def parse_arithmetic_extras(extras: bytes) -> tuple[int, int, int]:
    """(delta, initial, expiration as sent: unsigned, NO_CREATE means no create)."""
    delta, initial, exptime = _ARITHMETIC.unpack(extras)
    return delta, initial, exptime


def expiration_extras(exptime: int) -> bytes:
    return _EXPIRATION.pack(exptime & 0xFFFFFFFF)


def parse_expiration_extras(extras: bytes) -> int:
    return int(_EXPIRATION.unpack(extras)[0])


def flags_extras(flags: int) -> bytes:
    """A get reply's extras: the item's flags."""
    return _FLAGS.pack(flags)


def parse_flags_extras(extras: bytes) -> int:
    return int(_FLAGS.unpack(extras)[0])


def counter_value(value: int) -> bytes:
    return _COUNTER.pack(value)


def parse_counter_value(value: bytes) -> int:
    return int(_COUNTER.unpack(value)[0])

