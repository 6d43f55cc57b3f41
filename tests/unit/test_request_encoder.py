"""encode_request is the parser's inverse, less noreply and q.

This is what keeps a pipelined backend connection in step (issue 11): the proxy forwards
`encode_request(event)` and matches replies by order, so the backend, parsing those bytes
with the same codec, must read exactly one request that asks for a reply. The property test
draws hostile lines (keys named `noreply`, `q`-like flag spellings, tokens in every position)
and checks that for every request the proxy would forward.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.protocol import NEED_DATA, RequestParser
from memring.protocol.request_encoder import encode_request
from memring.protocol.requests import (
    Lru,
    LruCrawler,
    MetaArithmetic,
    MetaDelete,
    MetaGet,
    MetaSet,
    ProtocolError,
    Quit,
    Request,
    Shutdown,
    Slabs,
    Stats,
    Verbosity,
    Version,
    Watch,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("sent", "forwarded"), [
    (b"get a b\r\n", b"get a b\r\n"),
    (b"gats 10 a\r\n", b"gats 10 a\r\n"),
    (b"set k 5 100 3 noreply\r\nabc\r\n", b"set k 5 100 3\r\nabc\r\n"),
    (b"cas k 0 0 1 77\r\nx\r\n", b"cas k 0 0 1 77\r\nx\r\n"),
    (b"append k 0 0 1\r\nx\r\n", b"append k 0 0 1\r\nx\r\n"),
    (b"delete k noreply\r\n", b"delete k\r\n"),
    (b"incr k 5\r\n", b"incr k 5\r\n"),
    (b"touch k 10 noreply\r\n", b"touch k 10\r\n"),
    (b"flush_all 5\r\n", b"flush_all 5\r\n"),
    (b"mg k v q Oabc k\r\n", b"mg k v Oabc k\r\n"),
    (b"mg a2V5 b v\r\n", b"mg a2V5 b v\r\n"),
    (b"ms k 2 T10 q\r\nhi\r\n", b"ms k 2 T10\r\nhi\r\n"),
    (b"md k q\r\n", b"md k\r\n"),
    (b"ma k N0 J5 v\r\n", b"ma k N0 J5 v\r\n"),
    (b"me k\r\n", b"me k\r\n"),
    (b"mn\r\n", b"mn\r\n"),
])
def test_round_trip(sent: bytes, forwarded: bytes) -> None:
    parser = RequestParser()
    parser.receive_data(sent)
    event = parser.next_event()
    assert event is not NEED_DATA
    assert encode_request(event) == forwarded
    parser.receive_data(forwarded)
    assert parser.next_event() == event or b"noreply" in sent or b" q" in sent


# --- the property: a forwarded request is read back as one request that asks for a reply ----

# answered by the proxy itself, never forwarded as they are
_NOT_FORWARDED = (ProtocolError, Quit, Shutdown, Stats, Version, Verbosity, LruCrawler, Lru,
                  Slabs, Watch)
_META = (MetaGet, MetaSet, MetaDelete, MetaArithmetic)

words = st.sampled_from([b"noreply", b"q", b"qz", b"q1", b"0", b"1", b"-1", b"10", b"k",
                         b"v", b"T10", b"N5", b"Oab", b"b", b"s", b"4294967296", b"a2V5"])
tokens = st.one_of(words, st.binary(min_size=1, max_size=6).filter(
    lambda t: not any(c in t for c in b" \r\n")))
commands = st.sampled_from([b"get", b"gets", b"gat", b"gats", b"set", b"add", b"replace",
                            b"append", b"prepend", b"cas", b"delete", b"incr", b"decr",
                            b"touch", b"flush_all", b"cache_memlimit", b"verbosity", b"mg",
                            b"ms", b"md", b"ma", b"me", b"mn"])


@st.composite
def hostile_lines(draw: st.DrawFn) -> bytes:
    line = b" ".join([draw(commands), *draw(st.lists(tokens, max_size=6))]) + b"\r\n"
    if draw(st.booleans()):  # a data block, in case the line announced one
        line += draw(st.binary(max_size=12)) + b"\r\n"
    return line


def asking_for_reply(event: Request) -> Request:
    """`event` as the backend must read it: noreply and q dropped, nothing else changed."""
    if isinstance(event, _META):
        flags = dataclasses.replace(event.flags, quiet=False, tokens=[
            t for t in event.flags.tokens if not t.startswith(b"q")])
        flags.order = flags.order.replace("q", "")
        return dataclasses.replace(event, flags=flags)
    if hasattr(event, "noreply"):
        return dataclasses.replace(event, noreply=False)
    return event


@settings(max_examples=2000, deadline=None)
@given(hostile_lines())
def test_every_forwarded_request_is_read_back_as_one_that_asks_for_a_reply(line: bytes) -> None:
    parser = RequestParser()
    parser.receive_data(line)
    for event in parser:
        if isinstance(event, _NOT_FORWARDED):
            continue
        forwarded = encode_request(event)
        backend = RequestParser()
        backend.receive_data(forwarded)
        read = list(backend)
        assert len(read) == 1, (line, forwarded, read)
        assert backend.buffered == 0
        assert read[0] == asking_for_reply(event), (line, forwarded)
