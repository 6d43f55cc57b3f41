"""Request events: what a client asked for, one small class per wire command.

Events are plain slotted dataclasses named after the wire (`Get`, `Store`, `MetaGet`).
Keys are bytes exactly as memcached stores them (meta `b` keys already decoded).
Numbers are already validated the way memcached validates them; what they *mean*
(relative or absolute expiry, CAS rules) is the store's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# Get and Store (one per request) write their own `__init__` (init=False): the one
# `dataclass` generates is interpreted even when this module is compiled (~230 ns each).
@dataclass(slots=True, init=False)
class Get:
    """get / gets / gat / gats: `command` is the wire token, `exptime` only for gat/gats."""

    command: bytes
    keys: list[bytes]
    exptime: int = 0

    def __init__(self, command: bytes, keys: list[bytes], exptime: int = 0) -> None:
        self.command = command
        self.keys = keys
        self.exptime = exptime

    @property
    def with_cas(self) -> bool:
        return self.command in (b"gets", b"gats")

    @property
    def touches(self) -> bool:
        return self.command in (b"gat", b"gats")


@dataclass(slots=True, init=False)
class Store:
    """set / add / replace / append / prepend / cas, with its data block."""

    command: bytes
    key: bytes
    flags: int
    exptime: int
    value: bytes
    cas_unique: int = 0
    noreply: bool = False

    def __init__(self, command: bytes, key: bytes, flags: int, exptime: int, value: bytes,
                 cas_unique: int = 0, noreply: bool = False) -> None:
        self.command = command
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.value = value
        self.cas_unique = cas_unique
        self.noreply = noreply


@dataclass(slots=True)
class Delete:
    key: bytes
    noreply: bool = False


@dataclass(slots=True)
class Arithmetic:
    """incr / decr."""

    command: bytes
    key: bytes
    delta: int
    noreply: bool = False


@dataclass(slots=True)
class Touch:
    key: bytes
    exptime: int
    noreply: bool = False


@dataclass(slots=True)
class FlushAll:
    delay: int = 0
    noreply: bool = False


@dataclass(slots=True)
class Stats:
    args: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class LruCrawler:
    """lru_crawler <crawl|metadump|tocrawl|sleep|enable|disable> ...: the tokens after it (the
    proxy forwards `metadump` to the shard leaders)."""

    args: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Lru:
    """lru <tune|mode|temp_ttl> ...: the tokens after it."""

    args: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Slabs:
    """slabs <automove|reassign> ...: the tokens after it."""

    args: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Watch:
    """watch [log types]: the tokens after it (the last may be noreply)."""

    args: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class Version:
    pass


@dataclass(slots=True)
class Verbosity:
    level: int
    noreply: bool = False


@dataclass(slots=True)
class Quit:
    pass


@dataclass(slots=True)
class Shutdown:
    args: list[bytes] = field(default_factory=list)


@dataclass(slots=True)
class RefreshCerts:
    """memcached's refresh_certs: reload the TLS certificates (answered where it arrives)."""

    noreply: bool = False


@dataclass(slots=True)
class CacheMemlimit:
    megabytes: int
    noreply: bool = False


@dataclass(slots=True)
class MetaFlags:
    """The flags of a meta command, validated as memcached's preparse does.

    `order` keeps the flag characters in request order, because memcached answers
    the return flags in the order they were asked for.
    """

    order: str = ""
    tokens: list[bytes] = field(default_factory=list)  # the flag tokens as sent, for forwarding
    opaque: bytes = b""          # the whole O token, e.g. b"Oabc", echoed verbatim
    base64: bool = False         # b: the key travelled base64-encoded
    quiet: bool = False          # q
    ttl: int | None = None       # T
    vivify_ttl: int | None = None  # N
    recache_ttl: int | None = None  # R
    cas: int | None = None       # C
    explicit_cas: int | None = None  # E: the CAS value to give the item
    client_flags: int = 0        # F
    mode: int = 0                # M, the mode byte (0 = none)
    delta: int = 1               # D
    initial: int = 0             # J
    invalidate: bool = False     # I
    no_bump: bool = False        # u

    def __contains__(self, flag: str) -> bool:
        return flag in self.order


@dataclass(slots=True)
class MetaGet:
    key: bytes
    flags: MetaFlags


@dataclass(slots=True)
class MetaSet:
    key: bytes
    flags: MetaFlags
    value: bytes


@dataclass(slots=True)
class MetaDelete:
    key: bytes
    flags: MetaFlags


@dataclass(slots=True)
class MetaArithmetic:
    key: bytes
    flags: MetaFlags


@dataclass(slots=True)
class MetaNoop:
    pass


@dataclass(slots=True)
class MetaDebug:
    key: bytes
    base64: bool = False


@dataclass(slots=True)
class ProtocolError:
    """Bad input: what to send back (may be empty) and whether to close afterwards.

    The parser has already swallowed whatever memcached would swallow, so the I/O
    layer only sends `reply` and, if `close`, closes the connection.
    """

    reply: bytes
    close: bool = False
    # A `set` too large for the cache also removes the key's old item (memcached does,
    # so no stale value outlives a failed overwrite).
    drop_key: bytes | None = None
    # A bad data chunk: the size of the block it ends (memcached reads a block past its read
    # buffer from the socket, and writes what it holds at its end: protocol.write_points).
    block: int = field(default=0, compare=False)  # framing, not what the error is


@dataclass(slots=True)
class Authenticated:
    """The `set` of memcached's ASCII authentication, accepted (protocol.ascii_auth)."""

    user: bytes

    @property
    def reply(self) -> bytes:  # a property, not a ClassVar: mypyc made that a constructor field
        return b"STORED\r\n"


Request = (Get | Store | Delete | Arithmetic | Touch | FlushAll | Stats | LruCrawler | Lru
           | Slabs | Watch | Version | Verbosity | Quit | Shutdown | RefreshCerts | CacheMemlimit
           | MetaGet | MetaSet
           | MetaDelete | MetaArithmetic | MetaNoop | MetaDebug | ProtocolError | Authenticated)
