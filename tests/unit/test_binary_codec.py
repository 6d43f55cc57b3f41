"""The binary codec: encode -> parse round trips, framing fed whole, byte by byte and with
trailing data, SASL PLAIN, the first-byte negotiation, and a fuzz invariant."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.protocol.ascii_auth import Authenticator, Credentials
from memring.protocol.binary_frames import (
    HEADER,
    BinaryRequest,
    BinaryResponse,
    Opcode,
    Status,
    arithmetic_extras,
    encode_request,
    encode_response,
    error_response,
    expiration_extras,
    parse_arithmetic_extras,
    parse_storage_extras,
    storage_extras,
)
from memring.protocol.binary_parser import (
    BinaryReply,
    BinaryRequestParser,
    BinaryResponseError,
    BinaryResponseParser,
)
from memring.protocol.negotiation import NegotiatingParser
from memring.protocol.request_parser import RequestParser
from memring.protocol.requests import Get, ProtocolError
from memring.protocol.sentinels import NEED_DATA

pytestmark = pytest.mark.unit

keys = st.binary(min_size=1, max_size=250)
values = st.binary(max_size=300)
u32 = st.integers(min_value=0, max_value=2**32 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def requests(draw: st.DrawFn) -> BinaryRequest:
    """A well-formed request of any opcode memcached 1.6.18 serves without SASL."""
    opcode = draw(st.sampled_from([
        Opcode.GET, Opcode.GETQ, Opcode.GETK, Opcode.GETKQ, Opcode.SET, Opcode.SETQ,
        Opcode.ADD, Opcode.REPLACEQ, Opcode.APPEND, Opcode.PREPENDQ, Opcode.DELETE,
        Opcode.DELETEQ, Opcode.INCREMENT, Opcode.DECREMENTQ, Opcode.TOUCH, Opcode.GAT,
        Opcode.GATKQ, Opcode.FLUSH, Opcode.FLUSHQ, Opcode.NOOP, Opcode.VERSION, Opcode.STAT,
        Opcode.QUIT]))
    key = extras = value = b""
    if opcode in (Opcode.SET, Opcode.SETQ, Opcode.ADD, Opcode.REPLACEQ):
        key, extras, value = draw(keys), storage_extras(draw(u32), draw(u32)), draw(values)
    elif opcode in (Opcode.APPEND, Opcode.PREPENDQ):
        key, value = draw(keys), draw(values)
    elif opcode in (Opcode.INCREMENT, Opcode.DECREMENTQ):
        key, extras = draw(keys), arithmetic_extras(draw(u64), draw(u64), draw(u32))
    elif opcode in (Opcode.TOUCH, Opcode.GAT, Opcode.GATKQ):
        key, extras = draw(keys), expiration_extras(draw(u32))
    elif opcode == Opcode.FLUSH:
        extras = draw(st.sampled_from([b"", expiration_extras(draw(u32))]))
    elif opcode == Opcode.STAT:
        key = draw(st.sampled_from([b"", b"items", b"settings"]))
    elif opcode not in (Opcode.FLUSHQ, Opcode.NOOP, Opcode.VERSION, Opcode.QUIT):
        key = draw(keys)
    return BinaryRequest(opcode, key, extras, value, opaque=draw(u32), cas=draw(u64),
                         vbucket=draw(st.integers(0, 0xFFFF)))


def parse(data: bytes, step: int | None = None, **options: object) -> list[object]:
    parser = BinaryRequestParser(**options)  # type: ignore[arg-type]
    events: list[object] = []
    pieces = [data] if step is None else [data[i: i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        parser.receive_data(piece)
        events.extend(parser)
    return events


@settings(max_examples=300, deadline=None)
@given(st.lists(requests(), min_size=1, max_size=5))
def test_requests_round_trip_whole_and_byte_by_byte(batch: list[BinaryRequest]) -> None:
    data = b"".join(map(encode_request, batch))
    assert parse(data) == batch
    assert parse(data, step=1) == batch
    # a partial next frame stays buffered, nothing is made of it yet
    assert parse(data + data[:23]) == batch


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(BinaryResponse, st.integers(0, 255), st.integers(0, 0xFFFF),
                          st.binary(max_size=250), st.binary(max_size=20), values, u32, u64),
                min_size=1, max_size=5))
def test_responses_round_trip(batch: list[BinaryResponse]) -> None:
    data = b"".join(map(encode_response, batch))
    for step in (len(data), 1, 5):
        parser = BinaryResponseParser()
        got: list[BinaryResponse] = []
        for i in range(0, len(data), step):
            parser.receive_data(data[i: i + step])
            got.extend(parser)
        assert got == batch
        assert parser.buffered == 0


def test_extras_round_trip() -> None:
    assert parse_storage_extras(storage_extras(7, 2**32 - 1)) == (7, 2**32 - 1)
    assert parse_arithmetic_extras(arithmetic_extras(2**64 - 1, 3, 0xFFFFFFFF)) == (
        2**64 - 1, 3, 0xFFFFFFFF)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), st.integers(1, 30))
def test_any_bytes_give_events_or_need_data(tail: bytes, step: int) -> None:
    """The fuzz invariant: requests, codec replies or protocol errors, never an exception;
    fed in pieces it finds what it finds fed whole."""
    data = b"\x80" + tail
    whole = parse(data)
    assert all(isinstance(e, BinaryRequest | BinaryReply | ProtocolError) for e in whole)
    assert parse(data, step=step) == whole


def test_bad_magic_closes_silently() -> None:
    good = encode_request(BinaryRequest(Opcode.NOOP))
    events = parse(good + b"\x81" + bytes(23) + good)
    assert events == [BinaryRequest(Opcode.NOOP), ProtocolError(b"", close=True)]


def test_errors_echo_opcode_and_opaque() -> None:
    [event] = parse(HEADER.pack(0x80, Opcode.GET, 0, 0, 0, 0, 0, 77, 0))
    assert event == ProtocolError(error_response(Opcode.GET, Status.EINVAL, 77), close=True)
    assert event.reply.endswith(b"Invalid arguments")


def test_value_over_the_item_limit_is_swallowed() -> None:
    frame = encode_request(BinaryRequest(Opcode.SET, b"k", storage_extras(0, 0), b"v" * 2000))
    noop = encode_request(BinaryRequest(Opcode.NOOP))
    events = parse(frame + noop, step=100, max_item_size=1024)
    assert events == [ProtocolError(error_response(Opcode.SET, Status.E2BIG, 0), drop_key=b"k"),
                      BinaryRequest(Opcode.NOOP)]


def test_unknown_opcode_swallows_its_body_length_after_the_key() -> None:
    unknown = HEADER.pack(0x80, 0x40, 3, 0, 0, 0, 6, 0, 0) + b"abc" + b"xyzJJJ"
    events = parse(unknown + encode_request(BinaryRequest(Opcode.NOOP)))
    assert events == [ProtocolError(error_response(0x40, Status.UNKNOWN_COMMAND, 0)),
                      BinaryRequest(Opcode.NOOP)]


# -- SASL PLAIN ---------------------------------------------------------------------------

def sasl(opcode: int, mechanism: bytes = b"", value: bytes = b"") -> bytes:
    return encode_request(BinaryRequest(opcode, mechanism, value=value))


def test_sasl_plain_against_the_auth_file() -> None:
    auth = Authenticator(Credentials.parse(b"alice:secret\n"))
    parser = BinaryRequestParser(auth=auth)
    parser.receive_data(sasl(Opcode.VERSION) + sasl(Opcode.SASL_LIST_MECHS)
                        + sasl(Opcode.SASL_AUTH, b"PLAIN", b"\0alice\0wrong")
                        + sasl(Opcode.SASL_AUTH, b"PLAIN", b"\0alice\0secret")
                        + sasl(Opcode.GET, b"k"))
    events = list(parser)
    assert events == [
        BinaryRequest(Opcode.VERSION),  # allowed before authentication, as memcached -S
        BinaryReply(encode_response(BinaryResponse(Opcode.SASL_LIST_MECHS, value=b"PLAIN"))),
        ProtocolError(error_response(Opcode.SASL_AUTH, Status.AUTH_ERROR, 0)),
        BinaryReply(encode_response(BinaryResponse(Opcode.SASL_AUTH, value=b"Authenticated"))),
        BinaryRequest(Opcode.GET, b"k")]
    assert (auth.auth_cmds, auth.auth_errors) == (2, 1)


def test_commands_before_sasl_are_refused_and_close() -> None:
    auth = Authenticator(Credentials.parse(b"alice:secret\n"))
    parser = BinaryRequestParser(auth=auth)
    parser.receive_data(sasl(Opcode.GET, b"k"))
    assert list(parser) == [ProtocolError(
        error_response(Opcode.GET, Status.AUTH_ERROR, 0), close=True)]


def test_other_mechanisms_and_steps_fail() -> None:
    auth = Authenticator(Credentials.parse(b"alice:secret\n"))
    parser = BinaryRequestParser(auth=auth)
    parser.receive_data(sasl(Opcode.SASL_AUTH, b"CRAM-MD5", b"x")
                        + sasl(Opcode.SASL_STEP, b"PLAIN", b"\0alice\0secret"))
    assert [e.reply[1] for e in parser if isinstance(e, ProtocolError)] == [
        Opcode.SASL_AUTH, Opcode.SASL_STEP]
    assert (auth.auth_cmds, auth.auth_errors) == (2, 2)


# -- negotiation ---------------------------------------------------------------------------

def negotiated(first: bytes) -> NegotiatingParser:
    parser = NegotiatingParser(RequestParser, BinaryRequestParser)
    parser.receive_data(first)
    return parser


def test_first_byte_chooses_the_protocol() -> None:
    text = negotiated(b"get k\r\n")
    assert not text.binary and text.next_event() == Get(b"get", [b"k"])
    binary = negotiated(encode_request(BinaryRequest(Opcode.GETK, b"k")))
    assert binary.binary and binary.next_event() == BinaryRequest(Opcode.GETK, b"k")
    assert NegotiatingParser(RequestParser, BinaryRequestParser).next_event() is NEED_DATA


def test_response_parser_refuses_bad_magic_and_oversized_bodies() -> None:
    parser = BinaryResponseParser(max_body=10)
    parser.receive_data(encode_request(BinaryRequest(Opcode.NOOP)))
    with pytest.raises(BinaryResponseError):
        parser.next_event()
    parser = BinaryResponseParser(max_body=10)
    parser.receive_data(encode_response(BinaryResponse(Opcode.GET, value=b"v" * 11)))
    with pytest.raises(BinaryResponseError):
        parser.next_event()
