"""Hypothesis invariants of the request parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.protocol import NEED_DATA, RequestParser
from memring.protocol.requests import ProtocolError, Request

pytestmark = pytest.mark.unit

keys = st.binary(min_size=1, max_size=40).filter(
    lambda k: b" " not in k and b"\n" not in k and b"\r" not in k and b"\x00" not in k)
values = st.binary(max_size=300)
numbers = st.integers(min_value=0, max_value=2**31 - 1)


@st.composite
def request_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["get", "gets", "gat", "set", "add", "append", "cas", "delete",
                                 "incr", "touch", "mg", "ms", "md", "ma", "mn", "version"]))
    key = draw(keys)
    if kind in ("get", "gets"):
        return b"%s %s\r\n" % (kind.encode(), b" ".join(draw(st.lists(keys, min_size=1,
                                                                     max_size=5))))
    if kind == "gat":
        return b"gat %d %s\r\n" % (draw(numbers), key)
    if kind in ("set", "add", "append"):
        value = draw(values)
        noreply = b" noreply" if draw(st.booleans()) else b""
        return b"%s %s %d %d %d%s\r\n%s\r\n" % (kind.encode(), key, draw(numbers),
                                                draw(numbers), len(value), noreply, value)
    if kind == "cas":
        value = draw(values)
        return b"cas %s 0 0 %d %d\r\n%s\r\n" % (key, len(value), draw(numbers), value)
    if kind == "delete":
        return b"delete %s\r\n" % key
    if kind == "incr":
        return b"incr %s %d\r\n" % (key, draw(numbers))
    if kind == "touch":
        return b"touch %s %d\r\n" % (key, draw(numbers))
    if kind == "mg":
        flags = draw(st.lists(st.sampled_from(list("vtcfkshlqu")), unique=True, max_size=6))
        return b"mg %s %s\r\n" % (key, " ".join(flags).encode())
    if kind == "ms":
        value = draw(values)
        return b"ms %s %d T%d F%d\r\n%s\r\n" % (key, len(value), draw(numbers), draw(numbers),
                                                value)
    if kind == "md":
        return b"md %s q\r\n" % key
    if kind == "ma":
        return b"ma %s D%d N0 v\r\n" % (key, draw(numbers))
    return b"%s\r\n" % kind.encode()


def parse(chunks: list[bytes]) -> list[Request]:
    parser = RequestParser()
    events: list[Request] = []
    for chunk in chunks:
        parser.receive_data(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            events.append(event)  # type: ignore[arg-type]
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(request_bytes(), min_size=1, max_size=12), st.data())
def test_any_split_parses_to_the_same_events(requests: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(requests)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = parse([stream])
    assert parse(chunks) == whole
    assert len(whole) == len(requests)
    assert not any(isinstance(e, ProtocolError) for e in whole)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=10))
def test_garbage_yields_events_never_exceptions(chunks: list[bytes]) -> None:
    parser = RequestParser(max_line=4096, max_item_size=4096)
    for chunk in chunks:
        parser.receive_data(chunk)
        for _ in range(10_000):
            event = parser.next_event()
            if event is NEED_DATA:
                break
            assert isinstance(event, Request)
        # Bounded: never more than a line (or a data block) plus one chunk is kept.
        assert parser.buffered <= 4096 + 2 + 200
