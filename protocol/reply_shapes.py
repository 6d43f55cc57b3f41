"""Which replies can answer which request: how the proxy sees that a backend left its step.

Theory of operation: a pipelined backend connection matches replies to requests by order
alone, which holds only while every request gets exactly one reply (the encoder sees to
that; tests/unit/test_request_encoder.py checks it). This module is the second line: each
forwarded request carries the shape of the replies that can answer it (the status words of
its command, or values of the keys it asked for then END), and a reply of another shape
means the stream is out of step. The caller then closes that connection and fails only the
requests on it: a reply is never handed to a request it does not answer, so a client can
never receive another client's value.
"""

from __future__ import annotations

from collections.abc import Collection

from memring.protocol.responses import (
    End,
    ErrorReply,
    Line,
    MetaReply,
    Number,
    Response,
    Stat,
    Status,
    Values,
    VersionReply,
)


class ReplyShape:
    """The replies that answer one request; `multi`: events until END (or an error)."""

    __slots__ = ("codes", "continues", "kinds", "multi")

    def __init__(self, kinds: tuple[type, ...], codes: frozenset[bytes] = frozenset(),
                 multi: bool = False, continues: tuple[bytes, ...] = ()) -> None:
        self.kinds = (ErrorReply, *kinds)  # an error may answer anything
        self.codes = codes  # the status words or meta codes allowed (empty: any)
        self.multi = multi
        # a multi reply's lines that come before END (dump lines); any other line ends it
        self.continues = continues

    def ends(self, line: Line) -> bool:
        """Whether `line` ends a multi reply: a dump's lines do not, its refusals (BUSY,
        BADCLASS, NOTSTARTED: one line, no END) do."""
        return not line.line.startswith(self.continues)

    def accepts(self, event: Response) -> bool:
        if not isinstance(event, self.kinds):
            return False
        if self.codes:
            if type(event) is Status:
                return event.word in self.codes
            if type(event) is MetaReply:
                return event.code in self.codes
        return True


class ValuesOf(ReplyShape):
    """A retrieval: VALUE lines of the keys asked for (a `Values` run: each of its keys),
    then END."""

    __slots__ = ("keys",)

    def __init__(self, keys: list[bytes]) -> None:  # no super(): one is made per get
        self.multi = True
        # a list is faster to search for the few keys of most gets; a set for many
        self.keys: Collection[bytes] = keys if len(keys) <= 8 else frozenset(keys)

    def accepts(self, event: Response) -> bool:
        if type(event) is Values:  # (the response parser's only form of VALUE blocks)
            keys = self.keys
            return all(key in keys for key in event.keys)
        return type(event) is End or type(event) is ErrorReply


def _statuses(*words: bytes) -> ReplyShape:
    return ReplyShape((Status,), frozenset(words))


def _meta(*codes: bytes) -> ReplyShape:
    return ReplyShape((MetaReply,), frozenset(codes))


STORED = _statuses(b"STORED", b"NOT_STORED", b"EXISTS", b"NOT_FOUND")  # the storage commands
_OK = ReplyShape((Status, Line), frozenset({b"OK"}))  # cache_memlimit: MEMLIMIT_TOO_SMALL ...
_SHAPES = {
    b"set": STORED, b"add": STORED, b"replace": STORED, b"append": STORED,
    b"prepend": STORED, b"cas": STORED,
    b"delete": _statuses(b"DELETED", b"NOT_FOUND"),
    b"touch": _statuses(b"TOUCHED", b"NOT_FOUND"),
    b"incr": ReplyShape((Number, Status), frozenset({b"NOT_FOUND"})),
    b"decr": ReplyShape((Number, Status), frozenset({b"NOT_FOUND"})),
    b"flush_all": _OK, b"cache_memlimit": _OK, b"verbosity": _OK,
    b"version": ReplyShape((VersionReply,)),
    # STAT lines (cachedump: ITEM lines) then END; `stats reset`: RESET
    b"stats": ReplyShape((Stat, End, Line, Status), frozenset({b"RESET"}), multi=True,
                         continues=(b"ITEM ",)),
    # metadump: key=... lines then END, or one line saying why not (proto_text.c)
    b"lru_crawler": ReplyShape((Line, End), multi=True, continues=(b"key=",)),
    b"mg": _meta(b"VA", b"HD", b"EN"),
    b"ms": _meta(b"HD", b"NS", b"EX", b"NF"),
    b"md": _meta(b"HD", b"NF", b"EX"),
    b"ma": _meta(b"HD", b"VA", b"NF", b"NS", b"EX"),
    b"me": _meta(b"ME", b"EN"),
    b"mn": _meta(b"MN"),
}
_RETRIEVALS = (b"get", b"gets", b"gat", b"gats")


def reply_shape(request: bytes) -> ReplyShape:
    """The shape of the replies that answer `request` (one encoded request)."""
    line_end = request.find(b"\r\n")
    end = request.find(b" ", 0, line_end)
    command = request[:end if end >= 0 else line_end]
    shape = _SHAPES.get(command)
    if shape is not None:
        return shape
    if command == b"get" or command == b"gets":  # most requests: no exptime to skip
        return ValuesOf(request[end + 1:line_end].split(b" "))
    if command in _RETRIEVALS:  # gat, gats: their exptime first
        return ValuesOf(request[end + 1:line_end].split(b" ")[1:])
    raise ValueError(f"no reply shape for {command!r}")
