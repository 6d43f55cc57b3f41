"""A multi-key get split per shard, reassembled in the client's key order (compiled).

Theory of operation: the session asks each distinct key once, one part per shard (each a
`Settling` slot, usually a compiled `DirectRead`); `poll()` answers once every part has
settled, cutting each shard's run of VALUE blocks (protocol.responses.Values) into the
client's key order at block boundaries (no object per key), or, past SLICE_SIZE, as a
`SlicedReply` sent a slice at a time (proxy/slots.py). The first failed part's error is the
whole get's, unless `on_shard_error = miss` makes it a miss.

Compiled with the session that makes it (build_support/hot_modules.txt): in the interpreted
proxy/slots.py a 10-key get paid about ten interpreted frames (its __init__, each poll, the
join). It answers the `Slot` protocol without subclassing `Slot`: a compiled class cannot
subclass an interpreted one (as proxy/direct_slots.py).
"""

from __future__ import annotations

from typing import Final

from memring.protocol.responses import End, Values, in_key_order
from memring.proxy.pending_reply import PendingReply
from memring.proxy.slots import (
    NEEDS_TASK,
    SLICE_SIZE,
    WAITING,
    Poll,
    Reply,
    Settling,
    SlicedReply,
    render,
    shard_failed,
)
from memring.proxy.stats import ProxyStats

# Final: native statics, not a module-dict lookup per poll
_WAITING: Final = WAITING
_NEEDS_TASK: Final = NEEDS_TASK
_SLICE_SIZE: Final = SLICE_SIZE


class SplitGet:
    """A multi-key get split per shard (each distinct key asked once); values reassembled in
    the client's key order, a big reply in slices."""

    __slots__ = ("distinct", "keys", "misses", "part_keys", "parts", "sliced", "sliced_bytes")

    def __init__(self, keys: list[bytes], distinct: int, parts: list[Settling],
                 part_keys: list[int], misses: ProxyStats | None = None) -> None:
        self.keys = keys
        self.distinct = distinct  # how many different keys `keys` names
        self.parts = parts
        self.part_keys = part_keys  # how many distinct keys each part asks for
        # on_shard_error = miss: where a part whose shard cannot answer is counted as misses
        self.misses = misses
        self.sliced: SlicedReply | None = None  # once rendered: the drainer sends it
        self.sliced_bytes = 0  # ... and the encoded blocks it holds until it is dropped

    def _missed(self, index: int, pending: PendingReply) -> bool:
        """Part `index` failed and answers its keys as misses (counted once: the reply
        is rendered once)."""
        if self.misses is None or not shard_failed(pending):
            return False
        self.misses.shard_error_misses += self.part_keys[index]
        return True

    def poll(self) -> Poll:
        if self.sliced is not None:
            return self.sliced
        # The parts in order, as reply() awaits them: the first error is the answer.
        settled: list[PendingReply] = []
        for part in self.parts:
            pending = part.settled_now()
            if not isinstance(pending, PendingReply):
                return pending
            settled.append(pending)
        return self._answer(settled)

    async def reply(self) -> Reply:
        if self.sliced is not None:
            return self.sliced
        return self._answer([await part.settle() for part in self.parts])

    def _answer(self, settled: list[PendingReply]) -> bytes | SlicedReply:
        """The first failed part's error is the whole get's (on_shard_error = error); with
        `miss`, a part whose shard cannot answer adds no values."""
        answered = []
        for index, pending in enumerate(settled):
            if _incomplete(pending):
                if self._missed(index, pending):
                    continue
                return render(pending)
            answered.append(pending)
        return self._join(answered)

    def _join(self, settled: list[PendingReply]) -> bytes | SlicedReply:
        keys = self.keys
        runs: list[Values] = []
        size = 0
        for pending in settled:
            for event in pending.events:
                if type(event) is Values:
                    runs.append(event)
                    size += len(event.wire)
        one_piece = size <= _SLICE_SIZE and len(keys) == self.distinct  # the common case
        if one_piece:  # each part's blocks cut from its run in stretches, no object per key
            pieces = in_key_order(keys, runs)
            if pieces is not None:
                pieces.append(b"END\r\n")
                return b"".join(pieces)
        blocks: dict[bytes, bytes] = {}
        for run in runs:
            for index, key in enumerate(run.keys):
                blocks[key] = run.block(index)
        if one_piece:  # (a run out of the keys' order)
            return b"".join([blocks[k] for k in keys if k in blocks]) + b"END\r\n"
        reply = SlicedReply(blocks, keys)
        if reply.rendered:
            return reply.next_slice()
        self.parts = []  # the encoded blocks are all the rest needs: let the replies go
        self.sliced = reply
        self.sliced_bytes = size
        return reply


def _incomplete(pending: PendingReply) -> bool:
    """A get's reply that is not values then END: an error."""
    events = pending.events
    return pending.error is not None or not events or type(events[-1]) is not End
