"""What a client's unsent replies hold in the proxy's memory, for the buffer budget.

Theory of operation: a reply that has come from the backends but has not left for its client
is held as its parsed events (a `PendingReply`'s VALUE runs, a split get's parts until all
have come, then its encoded blocks) or as rendered bytes. `ReplyStream` asks `held_bytes` of
each slot in its queue only while its drainer owns the queue (a client behind on its replies,
or a big reply sent in slices): the hot path, a client whose replies leave as they come,
never counts. Only the value bytes are counted (the headers' and events' objects are small
next to them): the budget bounds megabytes, not objects.
"""

from __future__ import annotations

from memring.protocol.responses import Values
from memring.proxy.pending_reply import PendingReply
from memring.proxy.slots import Ready
from memring.proxy.split_get import SplitGet


def events_bytes(pending: PendingReply) -> int:
    """The value bytes a forwarded request's reply holds so far."""
    return sum([len(event.wire) for event in pending.events if type(event) is Values])


def held_bytes(slot: object) -> int:
    """The bytes `slot` (a queued request's slot) holds for its client."""
    if isinstance(slot, PendingReply):  # the one-object slots (proxy/direct_slots.py)
        return events_bytes(slot)
    if isinstance(slot, SplitGet):  # its parts' values so far, or once sliced its blocks
        return slot.sliced_bytes if slot.sliced is not None else \
            sum([held_bytes(part) for part in slot.parts])
    if isinstance(slot, Ready):
        return len(slot.data)
    pending = getattr(slot, "pending", None)  # a Forwarded, a read with failover, ...
    return events_bytes(pending) if isinstance(pending, PendingReply) else 0
