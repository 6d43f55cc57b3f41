"""Backend replies rendered as the binary frames a binary client expects.

Theory of operation: the proxy forwards each binary request as the meta command that asks
the same question (proxy/binary_requests.py), and backends always answer; so a settled
`PendingReply` holds one meta reply (`VA`, `HD`, `EN`, `NS`, `EX`, `NF`), an error line,
or the proxy's own failure. A renderer is the slot's filter: it knows the client's opcode,
opaque and key, and writes the frame memcached 1.6.18's proto_bin.c writes for that outcome
(backend/binary_commands.py makes the same choices from its store; the differential test
tests/compat/test_binary_proxy_differential.py pins both). A quiet opcode's success, and a
quiet get's miss, render as nothing: the backend answered, the client asked not to see it.
"""

from __future__ import annotations

from memring.protocol.binary_frames import (
    BinaryRequest,
    BinaryResponse,
    Opcode,
    Status,
    counter_value,
    encode_response,
    error_response,
    flags_extras,
    is_quiet,
    loud,
)
from memring.protocol.responses import End, ErrorReply, MetaReply, Response, Value, Values
from memring.protocol.write_refusals import refusal_reason
from memring.proxy.pending_reply import PendingReply
from memring.proxy.slots import NEEDS_TASK, WAITING, Poll, Settling, Slot, shard_failed
from memring.proxy.stats import ProxyStats

# memcached's text errors that have a binary status of their own (proto_bin.c's statuses
# for the same store outcomes); any other SERVER_ERROR is a cluster refusal or the proxy's
# failure: status 0x86 with the reason as its body, as the backend's binary refusals.
_SERVER_ERRORS = {b"out of memory storing object": Status.ENOMEM,
                  b"object too large for cache": Status.E2BIG}
NON_NUMERIC = b"cannot increment or decrement non-numeric value"


def _numbers(reply: MetaReply) -> dict[int, int]:
    """The numeric return flags of a meta reply (`f7 c12` -> {ord('f'): 7, ord('c'): 12})."""
    found = {}
    for token in reply.flags:
        if len(token) > 1 and token[1:].isdigit():
            found[token[0]] = int(token[1:])
    return found


_F = ord("f")
_C = ord("c")


class BinaryRenderer:
    """Renders one settled reply for one binary request; a subclass per opcode family
    implements `success` (the meta reply that is not an error)."""

    __slots__ = ("key", "opaque", "opcode", "quiet")

    def __init__(self, opcode: int, opaque: int, key: bytes) -> None:
        self.opcode = opcode
        self.opaque = opaque
        self.key = key
        self.quiet = is_quiet(opcode)

    def __call__(self, pending: PendingReply) -> bytes:
        if pending.error is not None:
            return self.error(Status.TEMPORARY_FAILURE, pending.error.encode())
        events = pending.events
        if len(events) == 1 and type(events[0]) is MetaReply:
            return self.success(events[0])
        return self.failure(events)

    def success(self, reply: MetaReply) -> bytes:
        raise NotImplementedError

    def frame(self, *, status: int = Status.SUCCESS, key: bytes = b"", extras: bytes = b"",
              value: bytes = b"", cas: int = 0) -> bytes:
        return encode_response(BinaryResponse(self.opcode, status, key, extras, value,
                                              self.opaque, cas))

    def done(self, *, extras: bytes = b"", value: bytes = b"", cas: int = 0) -> bytes:
        """A success: nothing for a quiet opcode."""
        return b"" if self.quiet else self.frame(extras=extras, value=value, cas=cas)

    def error(self, status: int, text: bytes | None = None) -> bytes:
        """Errors are sent even for quiet opcodes (proto_bin.c write_bin_error)."""
        return error_response(self.opcode, status, self.opaque, text)

    def failure(self, events: list[Response]) -> bytes:
        """An error line from the backend in binary: its status, or 0x86 with its text."""
        event = events[0] if events else None
        if type(event) is ErrorReply:
            if event.kind == b"SERVER_ERROR":
                status = _SERVER_ERRORS.get(event.message)
                if status is not None:
                    return self.error(status)
                return self.error(Status.TEMPORARY_FAILURE, event.message)
            if event.kind == b"CLIENT_ERROR":
                return self.error(Status.DELTA_BADVAL if event.message == NON_NUMERIC
                                  else Status.EINVAL)
            return self.error(Status.UNKNOWN_COMMAND)
        return self.error(Status.TEMPORARY_FAILURE, b"unexpected reply from the backend")


class RetrievalRenderer(BinaryRenderer):
    """get/getq/getk/getkq, gat/gatq/gatk/gatkq and touch, asked as `mg <key> f c [v]`: a
    hit carries the item's flags and CAS (and its value, but not for touch; the key for
    the K variants), sent even by the quiet variants; a miss is hidden by them. With
    `misses` (on_shard_error = miss, given for reads) a shard that cannot answer is a miss,
    counted there, as the text path's slots.MissOnShardError does."""

    __slots__ = ("misses",)

    def __init__(self, opcode: int, opaque: int, key: bytes,
                 misses: ProxyStats | None = None) -> None:
        super().__init__(opcode, opaque, key)
        self.misses = misses

    def __call__(self, pending: PendingReply) -> bytes:
        if self.misses is not None and shard_failed(pending):
            self.misses.shard_error_misses += 1
            return self.miss()
        return super().__call__(pending)

    def success(self, reply: MetaReply) -> bytes:
        if reply.code == b"EN":
            return self.miss()
        numbers = _numbers(reply)
        return self.hit(numbers.get(_F, 0), reply.value or b"", numbers.get(_C, 0))

    def hit(self, flags: int, value: bytes, cas: int) -> bytes:
        with_key = loud(self.opcode) in (Opcode.GETK, Opcode.GATK)
        return self.frame(key=self.key if with_key else b"", extras=flags_extras(flags),
                          value=value, cas=cas)

    def miss(self) -> bytes:
        if self.quiet:
            return b""
        if loud(self.opcode) in (Opcode.GETK, Opcode.GATK):  # the key, no text
            return self.frame(status=Status.KEY_ENOENT, key=self.key)
        return self.error(Status.KEY_ENOENT)


class BatchReplies(Slot):
    """Consecutive get frames asked as one `gets` per shard (proxy/binary_batches.py):
    each frame answered in the client's order from its shard's values; a shard that
    failed answers each of its frames with the error, quiet or not."""

    __slots__ = ("misses", "parts", "requests")

    def __init__(self, requests: list[BinaryRequest],
                 parts: list[tuple[list[bytes], Settling]],
                 misses: ProxyStats | None = None) -> None:
        self.requests = requests
        self.parts = parts
        self.misses = misses  # on_shard_error = miss: a failed shard's frames are misses

    def poll(self) -> Poll:
        settled = []
        for keys, part in self.parts:
            pending = part.settled_now()
            if pending is WAITING or pending is NEEDS_TASK:
                return pending
            assert isinstance(pending, PendingReply)
            settled.append((keys, pending))
        return self._render(settled)

    async def reply(self) -> bytes:
        return self._render([(keys, await part.settle()) for keys, part in self.parts])

    def _render(self, settled: list[tuple[list[bytes], PendingReply]]) -> bytes:
        values: dict[bytes, Value] = {}
        failed: dict[bytes, PendingReply] = {}
        for keys, pending in settled:
            events = pending.events
            if pending.error is not None or not events or type(events[-1]) is not End:
                failed.update(dict.fromkeys(keys, pending))
                continue
            for event in events:
                if type(event) is Values:
                    for each in event.values():
                        values[each.key] = each
        out = []
        for request in self.requests:
            key = request.key
            renderer = RetrievalRenderer(request.opcode, request.opaque, key, self.misses)
            value = values.get(key)
            if value is not None:
                out.append(renderer.hit(value.flags, value.value, value.cas or 0))
            elif key in failed:
                out.append(renderer(failed[key]))
            else:
                out.append(renderer.miss())
        return b"".join(out)


class StorageRenderer(BinaryRenderer):
    """set/add/replace/append/prepend (and their quiet twins), asked as `ms ... c`."""

    __slots__ = ()

    def success(self, reply: MetaReply) -> bytes:
        code = reply.code
        if code == b"HD":
            return self.done(cas=_numbers(reply).get(_C, 0))
        if code == b"EX":
            return self.error(Status.KEY_EEXISTS)
        if code == b"NF":
            return self.error(Status.KEY_ENOENT)
        # NS: a store that did not happen answers by what was asked (complete_update_bin)
        command = loud(self.opcode)
        return self.error(Status.KEY_EEXISTS if command == Opcode.ADD else
                          Status.KEY_ENOENT if command == Opcode.REPLACE else
                          Status.NOT_STORED)


class DeleteRenderer(BinaryRenderer):
    """delete/deleteq, asked as `md <key> [C<cas>]`."""

    __slots__ = ()

    def success(self, reply: MetaReply) -> bytes:
        if reply.code == b"HD":
            return self.done()
        return self.error(Status.KEY_EEXISTS if reply.code == b"EX" else Status.KEY_ENOENT)


class ArithmeticRenderer(BinaryRenderer):
    """incr/decr and their quiet twins, asked as `ma <key> ... v c`: the new value as
    8 bytes, and the item's CAS."""

    __slots__ = ()

    def success(self, reply: MetaReply) -> bytes:
        code = reply.code
        if code == b"VA":
            number = (reply.value or b"").strip()
            if not number.isdigit():
                return self.error(Status.TEMPORARY_FAILURE, b"bad counter from the backend")
            return self.done(value=counter_value(int(number)), cas=_numbers(reply).get(_C, 0))
        if code == b"EX":
            return self.error(Status.KEY_EEXISTS)
        if code == b"NS":  # the create on a miss did not store
            return self.error(Status.NOT_STORED)
        return self.error(Status.KEY_ENOENT)


def text_reply_frames(opcode: int, opaque: int, reply: bytes) -> bytes:
    """A reply the proxy made in the text protocol (flush_all's OK, stats' STAT lines) in
    binary: STAT lines become one frame each then the empty terminator (proto_bin.c
    process_bin_stat), OK and RESET a success, ERROR an unknown stats group's "Not found",
    SERVER_ERROR the proxy's failure (0x86)."""
    quiet = is_quiet(opcode)
    if reply in (b"OK\r\n", b"RESET\r\n"):
        return b"" if quiet else encode_response(BinaryResponse(opcode, opaque=opaque))
    if reply == b"ERROR\r\n":
        return error_response(opcode, Status.KEY_ENOENT, opaque)
    if reply.startswith(b"SERVER_ERROR "):
        return error_response(opcode, Status.TEMPORARY_FAILURE, opaque,
                              refusal_reason(reply))
    if reply.startswith(b"STAT ") or reply == b"END\r\n":
        out = []
        for line in reply.split(b"\r\n"):
            if line.startswith(b"STAT "):
                name, _, value = line[5:].partition(b" ")
                out.append(encode_response(BinaryResponse(opcode, key=name, value=value,
                                                          opaque=opaque)))
        out.append(encode_response(BinaryResponse(opcode, opaque=opaque)))
        return b"".join(out)
    return error_response(opcode, Status.TEMPORARY_FAILURE, opaque,
                          reply.removesuffix(b"\r\n"))
