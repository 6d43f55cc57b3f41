"""Binary requests through the proxy: each frame becomes the request the text path routes.

Theory of operation: a binary client's frame (protocol.binary_parser has checked it) is
translated into the meta command that asks the same question and answers with what the
binary reply carries (flags, CAS, the new counter): get -> `mg <key> f c v`, set -> `ms
<key> <len> F T c M<mode> [C<cas>]`, delete -> `md`, incr/decr -> `ma ... v c` with `N`/`J`
for the create on a miss. Those go through the session's own routing (`ClientSession.meta`:
the ring, leader writes, failover, the read policy, back-pressure), so a binary client gets
exactly what a text client gets; only the rendering differs (proxy/binary_replies.py). The
backend always answers (no meta `q` is sent): quiet opcodes are quiet at the proxy, so no
reply can shift between requests or clients. Runs of get frames come batched
(proxy/binary_batches.py). flush and stat ask what the text `flush_all`
and `stats` ask and translate their replies; noop, version and quit are answered here, in
request order like every reply.

A key that the text protocol cannot carry (a space, a control byte) travels base64 (meta
`b`); its encoded form must fit memcached's 250 bytes, so such a key is at most 186 bytes
through the proxy (README "Compatibility notes").
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterable
from typing import Protocol

from memring.protocol.binary_frames import (
    NO_CREATE,
    BinaryRequest,
    BinaryResponse,
    Opcode,
    Status,
    encode_response,
    error_response,
    is_quiet,
    loud,
    parse_arithmetic_extras,
    parse_expiration_extras,
    parse_storage_extras,
)
from memring.protocol.request_encoder import encode_request
from memring.protocol.requests import (
    FlushAll,
    MetaArithmetic,
    MetaDelete,
    MetaFlags,
    MetaGet,
    MetaSet,
    Request,
    Stats,
)
from memring.protocol.sizes import KEY_MAX_LENGTH
from memring.proxy.binary_replies import (
    ArithmeticRenderer,
    DeleteRenderer,
    RetrievalRenderer,
    StorageRenderer,
    text_reply_frames,
)
from memring.proxy.pending_reply import PendingReply
from memring.proxy.slots import Ready, Settling, Slot, Translated
from memring.proxy.state import ProxyState


class ClientSession(Protocol):
    """What a translated frame needs of its client's session (proxy.session)."""

    @property
    def state(self) -> ProxyState: ...

    def issue(self, request: Request) -> Slot: ...

    def meta(self, request: MetaGet | MetaSet | MetaDelete | MetaArithmetic,
             renderer: Callable[[PendingReply], bytes]) -> Slot: ...

    def close_after(self, reply: bytes) -> Slot: ...

    def split_get(self, keys: Iterable[bytes]) -> list[tuple[list[bytes], Settling]]: ...


# Bytes the text protocol cannot carry in a key: its separators and line ends (and the
# other control bytes, which no text client sends: base64 keeps them exact).
_UNSAFE = frozenset(range(0x21)) | {0x7F}
# A binary expiration is unsigned 32-bit, meta's T/N tokens signed: past 2**31-1 both are
# absolute times decades away, so the largest the text protocol takes stands for them.
_TTL_MAX = 2**31 - 1
_MODES = {Opcode.SET: b"MS", Opcode.ADD: b"ME", Opcode.REPLACE: b"MR",
          Opcode.APPEND: b"MA", Opcode.PREPEND: b"MP"}


def _ttl(exptime: int) -> int:
    return min(exptime, _TTL_MAX)


def text_safe(key: bytes) -> bool:
    """Whether the text protocol carries `key` as it is (else: base64, meta only)."""
    return _UNSAFE.isdisjoint(key)


def _flags(tokens: list[bytes], key: bytes) -> MetaFlags | None:
    """Meta flags of `tokens`, base64 for a key text cannot carry (None: too long then)."""
    if text_safe(key):
        return MetaFlags(tokens=tokens, order="".join(chr(t[0]) for t in tokens))
    if len(base64.b64encode(key)) > KEY_MAX_LENGTH:
        return None
    tokens = [*tokens, b"b"]
    return MetaFlags(tokens=tokens, order="".join(chr(t[0]) for t in tokens), base64=True)


def delete_request(key: bytes) -> bytes | None:
    """The encoded delete of `key`, whatever bytes it holds (None: it cannot be sent)."""
    flags = _flags([], key)
    return None if flags is None else encode_request(MetaDelete(key, flags))


def _unsendable(request: BinaryRequest) -> Slot:
    return Ready(error_response(request.opcode, Status.EINVAL, request.opaque))


def _retrieval(session: ClientSession, request: BinaryRequest) -> Slot:
    command = loud(request.opcode)
    tokens = [b"f", b"c"]
    if command != Opcode.TOUCH:
        tokens.append(b"v")
    if command in (Opcode.TOUCH, Opcode.GAT, Opcode.GATK):
        tokens.insert(0, b"T%d" % _ttl(parse_expiration_extras(request.extras)))
    flags = _flags(tokens, request.key)
    if flags is None:
        return _unsendable(request)
    state = session.state  # on_shard_error = miss: reads of a shard that cannot answer
    misses = state.stats if state.router.miss_on_shard_error and command != Opcode.TOUCH \
        else None
    return session.meta(MetaGet(request.key, flags),
                        RetrievalRenderer(request.opcode, request.opaque, request.key, misses))


def _storage(session: ClientSession, request: BinaryRequest) -> Slot:
    command = loud(request.opcode)
    tokens = []
    if command in (Opcode.APPEND, Opcode.PREPEND):
        mode = _MODES[Opcode(command)]
    else:
        client_flags, exptime = parse_storage_extras(request.extras)
        tokens += [b"F%d" % client_flags, b"T%d" % _ttl(exptime)]
        # any set/add/replace with a CAS is memcached's cas (proto_bin.c process_bin_update)
        mode = b"MS" if request.cas else _MODES[Opcode(command)]
    tokens += [b"c", mode]
    if request.cas:
        tokens.append(b"C%d" % request.cas)
    flags = _flags(tokens, request.key)
    if flags is None:
        return _unsendable(request)
    return session.meta(MetaSet(request.key, flags, request.value),
                        StorageRenderer(request.opcode, request.opaque, request.key))


def _delete(session: ClientSession, request: BinaryRequest) -> Slot:
    flags = _flags([b"C%d" % request.cas] if request.cas else [], request.key)
    if flags is None:
        return _unsendable(request)
    return session.meta(MetaDelete(request.key, flags),
                        DeleteRenderer(request.opcode, request.opaque, request.key))


def _arithmetic(session: ClientSession, request: BinaryRequest) -> Slot:
    delta, initial, exptime = parse_arithmetic_extras(request.extras)
    tokens = [b"MI" if loud(request.opcode) == Opcode.INCREMENT else b"MD", b"D%d" % delta]
    if exptime != NO_CREATE:  # a miss creates the counter at `initial`
        tokens += [b"N%d" % _ttl(exptime), b"J%d" % initial]
    if request.cas:
        tokens.append(b"C%d" % request.cas)
    tokens += [b"v", b"c"]
    flags = _flags(tokens, request.key)
    if flags is None:
        return _unsendable(request)
    return session.meta(MetaArithmetic(request.key, flags),
                        ArithmeticRenderer(request.opcode, request.opaque, request.key))


def _in_binary(request: BinaryRequest) -> Callable[[bytes], bytes]:
    opcode, opaque = request.opcode, request.opaque
    return lambda reply: text_reply_frames(opcode, opaque, reply)


def _flush(session: ClientSession, request: BinaryRequest) -> Slot:
    delay = parse_expiration_extras(request.extras) if request.extras else 0
    return Translated(session.issue(FlushAll(_ttl(delay))), _in_binary(request))


def _stat(session: ClientSession, request: BinaryRequest) -> Slot:
    """What the text `stats <group>` through the proxy answers, frame by frame."""
    args = request.key.split(b" ") if request.key else []
    return Translated(session.issue(Stats(args)), _in_binary(request))


def _success(request: BinaryRequest, value: bytes = b"") -> bytes:
    if is_quiet(request.opcode):
        return b""
    return encode_response(BinaryResponse(request.opcode, value=value,
                                          opaque=request.opaque))


def _noop(session: ClientSession, request: BinaryRequest) -> Slot:
    # answered in request order: after every reply before it (the reply stream's queue)
    return Ready(_success(request))


def _version(session: ClientSession, request: BinaryRequest) -> Slot:
    return Ready(_success(request, session.state.settings.version.encode()))


def _quit(session: ClientSession, request: BinaryRequest) -> Slot:
    return session.close_after(_success(request))


_BY_OPCODE: dict[int, Callable[[ClientSession, BinaryRequest], Slot]] = {
    Opcode.GET: _retrieval, Opcode.GETK: _retrieval, Opcode.GAT: _retrieval,
    Opcode.GATK: _retrieval, Opcode.TOUCH: _retrieval,
    Opcode.SET: _storage, Opcode.ADD: _storage, Opcode.REPLACE: _storage,
    Opcode.APPEND: _storage, Opcode.PREPEND: _storage,
    Opcode.DELETE: _delete, Opcode.INCREMENT: _arithmetic, Opcode.DECREMENT: _arithmetic,
    Opcode.FLUSH: _flush, Opcode.STAT: _stat, Opcode.NOOP: _noop, Opcode.VERSION: _version,
    Opcode.QUIT: _quit,
}


def issue_binary(session: ClientSession, request: BinaryRequest) -> Slot:
    """The slot of one checked binary frame (the codec answered the ones it refused)."""
    handler = _BY_OPCODE.get(loud(request.opcode))
    if handler is None:  # the codec lets through only the opcodes above
        return Ready(error_response(request.opcode, Status.UNKNOWN_COMMAND, request.opaque))
    return handler(session, request)
