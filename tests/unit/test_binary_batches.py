"""The proxy's batching of consecutive binary gets (proxy/binary_batches.py), sans I/O: the
same events in the same order whether the bytes come whole or one at a time."""

from __future__ import annotations

import pytest

from memring.protocol.binary_frames import BinaryRequest, Opcode
from memring.protocol.binary_parser import BinaryRequestParser
from memring.protocol.negotiation import NegotiatingParser
from memring.protocol.request_parser import RequestParser
from memring.protocol.sentinels import NEED_DATA
from memring.proxy.binary_batches import MAX_BATCH, BatchingParser, GetBatch
from tests.helpers.binary_cases import frame, get, set_

pytestmark = pytest.mark.unit


def parser() -> BatchingParser:
    return BatchingParser(NegotiatingParser(RequestParser, BinaryRequestParser))


def events(chunks: list[bytes]) -> list[object]:
    found: list[object] = []
    batching = parser()
    for chunk in chunks:
        batching.receive_data(chunk)
        while (event := batching.next_event()) is not NEED_DATA:
            found.append(event)
    return found


def shape(found: list[object]) -> list[object]:
    """Batches as lists of (opcode, key); other requests as (opcode, key)."""
    out: list[object] = []
    for event in found:
        if isinstance(event, GetBatch):
            out.append([(r.opcode, r.key) for r in event.requests])
        else:
            assert isinstance(event, BinaryRequest)
            out.append((event.opcode, event.key))
    return out


STREAM = (get(b"a", Opcode.GETKQ) + get(b"b", Opcode.GETQ) + get(b"c", Opcode.GETK)
          + get(b"d") + frame(Opcode.NOOP) + set_(b"e", b"v") + get(b"sp ace", Opcode.GETKQ)
          + get(b"f", Opcode.GETKQ) + frame(Opcode.NOOP))


def test_consecutive_gets_form_one_batch_in_order() -> None:
    assert shape(events([STREAM])) == [
        [(Opcode.GETKQ, b"a"), (Opcode.GETQ, b"b"), (Opcode.GETK, b"c"), (Opcode.GET, b"d")],
        (Opcode.NOOP, b""), (Opcode.SET, b"e"),
        (Opcode.GETKQ, b"sp ace"),  # a key text cannot carry goes alone (meta, base64)
        [(Opcode.GETKQ, b"f")], (Opcode.NOOP, b"")]


def test_byte_at_a_time_keeps_the_order_and_never_waits_for_more() -> None:
    found = events([STREAM[i: i + 1] for i in range(len(STREAM))])
    flat = [item for entry in shape(found)
            for item in (entry if isinstance(entry, list) else [entry])]
    assert flat == [item for entry in shape(events([STREAM]))
                    for item in (entry if isinstance(entry, list) else [entry])]
    # fed a byte at a time, no batch can hold a frame that had not arrived when it was cut
    assert all(len(e.requests) == 1 for e in found if isinstance(e, GetBatch))


def test_a_batch_holds_at_most_max_batch_frames() -> None:
    found = events([b"".join(get(b"k%d" % i, Opcode.GETKQ) for i in range(MAX_BATCH * 2 + 1))])
    assert [len(e.requests) for e in found if isinstance(e, GetBatch)] == [
        MAX_BATCH, MAX_BATCH, 1]


def test_text_connections_are_not_touched() -> None:
    assert [type(e).__name__ for e in events([b"get a\r\nget b\r\n"])] == ["Get", "Get"]
