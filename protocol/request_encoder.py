"""Request events back to wire bytes: the client role (the proxy talking to backends).

`encode_request` writes the request a backend must answer in full: `noreply` and the meta
`q` flag are left out, so every request sent gets exactly one reply and a pipelined
backend connection can match replies to requests by order alone. The proxy then hides
the replies the client asked not to see.
"""

from __future__ import annotations

import base64

from memring.protocol.requests import (
    Arithmetic,
    CacheMemlimit,
    Delete,
    FlushAll,
    Get,
    LruCrawler,
    MetaArithmetic,
    MetaDebug,
    MetaDelete,
    MetaFlags,
    MetaGet,
    MetaNoop,
    MetaSet,
    Request,
    Stats,
    Store,
    Touch,
    Verbosity,
    Version,
)


def encode_get(command: bytes, keys: list[bytes], exptime: int = 0) -> bytes:
    if command in (b"gat", b"gats"):
        return b"%s %d %s\r\n" % (command, exptime, b" ".join(keys))
    return b"%s %s\r\n" % (command, b" ".join(keys))


def _meta_key(key: bytes, flags: MetaFlags) -> bytes:
    return base64.b64encode(key) if flags.base64 else key


_Q = ord("q")


def _meta_tokens(flags: MetaFlags) -> bytes:
    # memcached reads a meta flag by its first character: `qz` and `q1` are `q` too.
    tokens = [t for t in flags.tokens if t[0] != _Q]
    return b" " + b" ".join(tokens) if tokens else b""


def encode_request(request: Request) -> bytes:
    """The wire form of `request`, always asking for a reply (see module docstring)."""
    kind = type(request)
    if kind is Get:
        assert isinstance(request, Get)
        return encode_get(request.command, request.keys, request.exptime)
    if kind is Store:
        assert isinstance(request, Store)
        cas = b" %d" % request.cas_unique if request.command == b"cas" else b""
        return b"%s %s %d %d %d%s\r\n%s\r\n" % (request.command, request.key, request.flags,
                                               request.exptime, len(request.value), cas,
                                               request.value)
    if kind is MetaGet or kind is MetaDelete or kind is MetaArithmetic:
        assert isinstance(request, MetaGet | MetaDelete | MetaArithmetic)
        command = {MetaGet: b"mg", MetaDelete: b"md", MetaArithmetic: b"ma"}[kind]
        return b"%s %s%s\r\n" % (command, _meta_key(request.key, request.flags),
                                 _meta_tokens(request.flags))
    if kind is MetaSet:
        assert isinstance(request, MetaSet)
        return b"ms %s %d%s\r\n%s\r\n" % (_meta_key(request.key, request.flags),
                                          len(request.value), _meta_tokens(request.flags),
                                          request.value)
    if kind is Delete:
        assert isinstance(request, Delete)
        return b"delete %s\r\n" % request.key
    if kind is Arithmetic:
        assert isinstance(request, Arithmetic)
        return b"%s %s %d\r\n" % (request.command, request.key, request.delta)
    if kind is Touch:
        assert isinstance(request, Touch)
        return b"touch %s %d\r\n" % (request.key, request.exptime)
    if kind is FlushAll:
        assert isinstance(request, FlushAll)
        return b"flush_all %d\r\n" % request.delay if request.delay else b"flush_all\r\n"
    if kind is MetaDebug:
        assert isinstance(request, MetaDebug)
        if request.base64:
            return b"me %s b\r\n" % base64.b64encode(request.key)
        return b"me %s\r\n" % request.key
    if kind is Stats:
        assert isinstance(request, Stats)
        return b" ".join([b"stats", *request.args]) + b"\r\n"
    if kind is LruCrawler:
        assert isinstance(request, LruCrawler)
        return b" ".join([b"lru_crawler", *request.args]) + b"\r\n"
    if kind is Version:
        return b"version\r\n"
    if kind is MetaNoop:
        return b"mn\r\n"
    if kind is Verbosity:
        assert isinstance(request, Verbosity)
        return b"verbosity %d\r\n" % request.level
    if kind is CacheMemlimit:
        assert isinstance(request, CacheMemlimit)
        return b"cache_memlimit %d\r\n" % request.megabytes
    raise ValueError(f"{kind.__name__} is not forwarded to a backend")
