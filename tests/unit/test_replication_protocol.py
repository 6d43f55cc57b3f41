"""The peer-port replication codec: round trips, any split of a stream, garbage."""

from __future__ import annotations

import struct
from typing import get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.protocol.replication import (
    NEED_DATA,
    NONCE_SIZE,
    PROOF_SIZE,
    Ack,
    Challenge,
    Deletion,
    EpochStart,
    Error,
    ErrorCode,
    Event,
    Flush,
    Hello,
    ItemState,
    MalformedFrame,
    Message,
    Mutation,
    Position,
    ReplicationParser,
    SnapshotBegin,
    SnapshotEnd,
    SnapshotItem,
    Welcome,
    encode,
)

pytestmark = pytest.mark.unit

U64 = st.integers(0, 2**64 - 1)
I64 = st.integers(-(2**63), 2**63 - 1)
positions = st.builds(Position, U64, U64)
keys = st.binary(min_size=1, max_size=250)
states = st.builds(ItemState, keys, st.binary(max_size=300), st.integers(0, 2**32 - 1),
                   I64, U64, I64, st.booleans(), st.booleans())
changes = st.one_of(states, st.builds(Deletion, keys), st.builds(Flush, I64),
                    st.builds(EpochStart, positions))
nonces = st.binary(min_size=NONCE_SIZE, max_size=NONCE_SIZE)
proofs = st.one_of(st.just(b""), st.binary(min_size=PROOF_SIZE, max_size=PROOF_SIZE))
messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Challenge, nonces, st.integers(0, 2**16 - 1)),
    st.builds(Hello, st.text(max_size=40), U64, positions, nonces, proofs,
              st.integers(0, 2**16 - 1)),
    st.builds(Welcome, st.text(max_size=40), U64, U64, proofs),
    st.builds(SnapshotBegin, positions, I64),
    st.builds(SnapshotItem, states),
    st.builds(SnapshotEnd, positions, U64),
    st.builds(Mutation, U64, U64, changes),
    st.builds(Ack, positions),
    st.builds(Error, st.sampled_from(list(ErrorCode)), U64, st.text(max_size=40)),
)

NONCE = bytes(range(NONCE_SIZE))
PROOF = bytes(range(100, 100 + PROOF_SIZE))
EXAMPLES: list[Message] = [
    Challenge(NONCE),
    Hello("node-a", 7, Position(3, 120), NONCE, PROOF),
    Hello("node-é", 7, Position(3, 120), NONCE),  # plain mode: no proof
    Welcome("node-b", 0x1234, 77, PROOF),
    Welcome("node-b", 0x1234, 77),
    SnapshotBegin(Position(4, 9), 1_800_000_100),
    SnapshotItem(ItemState(b"k", b"value", 5, 1_800_000_060, 42, 1_800_000_000, True, True)),
    SnapshotEnd(Position(4, 9), 1000),
    Mutation(4, 10, ItemState(b"k", b"v", 0, 0, 43)),
    Mutation(4, 11, Deletion(b"k")),
    Mutation(4, 12, Flush(0)),
    Mutation(4, 13, Flush(1_800_000_500)),
    Mutation(5, 0, EpochStart(Position(4, 13))),
    Ack(Position(5, 0)),
    Error(ErrorCode.STALE_EPOCH, 6, "epoch 5 is older than 6"),
    Error(ErrorCode.UNAUTHENTICATED, 6, "wrong proof"),
    Error(ErrorCode.WRONG_IDENTITY, 6, "the certificate does not name this node id"),
]


def parse_all(parser: ReplicationParser, chunks: list[bytes]) -> list[Event]:
    events: list[Event] = []
    for chunk in chunks:
        parser.receive_data(chunk)
        for _ in range(10_000):
            event = parser.next_event()
            if event is NEED_DATA:
                break
            assert not isinstance(event, type(NEED_DATA))
            events.append(event)
            if isinstance(event, MalformedFrame):
                return events
    return events


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_each_message_round_trips_whole_bytewise_and_with_trailing_data(
        message: Message) -> None:
    wire = encode(message)
    assert parse_all(ReplicationParser(), [wire]) == [message]
    assert parse_all(ReplicationParser(), [wire[i:i + 1] for i in range(len(wire))]) == [
        message]
    parser = ReplicationParser()
    assert parse_all(parser, [wire + wire[:3]]) == [message]
    assert parser.buffered == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=8), st.data())
def test_any_split_of_a_stream_parses_the_same(stream: list[Message], data: st.DataObject
                                               ) -> None:
    wire = b"".join(encode(m) for m in stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)]
    assert parse_all(ReplicationParser(), chunks) == stream


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(1, 64))
def test_garbage_yields_events_or_malformed_never_raises(garbage: bytes, step: int) -> None:
    parser = ReplicationParser(max_frame=512)
    events = parse_all(parser, [garbage[i:i + step] for i in range(0, len(garbage), step)])
    assert all(isinstance(e, (*get_args(Message), MalformedFrame)) for e in events)


@settings(max_examples=200, deadline=None)
@given(messages, st.integers(0, 200), st.binary(min_size=1, max_size=4))
def test_a_corrupted_frame_never_raises(message: Message, at: int, noise: bytes) -> None:
    wire = bytearray(encode(message))
    at = at % len(wire)
    wire[at:at + len(noise)] = noise
    parse_all(ReplicationParser(), [bytes(wire)])


def test_frame_over_the_bound_is_malformed_and_the_parser_stays_dead() -> None:
    parser = ReplicationParser(max_frame=100)
    parser.receive_data(struct.pack(">I", 101))
    event = parser.next_event()
    assert isinstance(event, MalformedFrame)
    parser.receive_data(encode(Ack(Position(1, 1))))
    assert parser.next_event() == event
    assert parser.buffered == 0


def reframed(frame: bytes) -> bytes:
    """`frame` (type and body) with its length prefix."""
    return struct.pack(">I", len(frame)) + frame


@pytest.mark.parametrize("wire", [
    struct.pack(">IB", 1, 99),  # unknown type
    struct.pack(">I", 0),  # empty frame
    struct.pack(">IBQ", 9, 6, 1),  # ack too short
    struct.pack(">IBQQB", 18, 6, 1, 1, 0),  # ack with a trailing byte
    struct.pack(">IBQQB", 18, 5, 1, 1, 9),  # unknown mutation op
    struct.pack(">IBBQH", 12, 7, 99, 0, 0),  # unknown error code
    struct.pack(">IBBQH", 13, 7, 1, 0, 1) + b"\xff",  # bad utf-8
    struct.pack(">IBH", 3 + NONCE_SIZE - 1, 8, 2) + NONCE[:-1],  # challenge: short nonce
    struct.pack(">IBH", 3 + NONCE_SIZE + 1, 8, 2) + NONCE + b"x",  # challenge: trailing byte
    reframed(encode(Welcome("n", 1, 1))[4:-1] + b"\x05abcde"),  # a proof of 5 bytes
    reframed(encode(Hello("n", 1, Position(1, 1), NONCE))[4:-2]),  # no proof length
    reframed(encode(Welcome("n", 1, 1, PROOF))[4:-1]),  # the proof cut short
])
def test_malformed_frames(wire: bytes) -> None:
    events = parse_all(ReplicationParser(), [wire])
    assert len(events) == 1 and isinstance(events[0], MalformedFrame)


def test_a_large_item_fits_the_default_frame() -> None:
    message = Mutation(1, 1, ItemState(b"k" * 250, b"v" * (1 << 20), 1, 0, 1))
    assert parse_all(ReplicationParser(), [encode(message)]) == [message]


@pytest.mark.parametrize("message", [
    Challenge(b"short"),
    Hello("n", 1, Position(1, 1), NONCE[:-1]),
    Hello("n", 1, Position(1, 1), NONCE, b"x" * 31),
    Welcome("n", 1, 1, b"x" * 33),
], ids=["challenge-nonce", "hello-nonce", "hello-proof", "welcome-proof"])
def test_a_nonce_or_proof_of_the_wrong_size_is_not_encoded(message: Message) -> None:
    with pytest.raises(ValueError, match="bytes"):
        encode(message)


def test_the_handshake_frames_byte_for_byte() -> None:
    """The wire layout the module's docstring gives, pinned."""
    assert encode(Challenge(NONCE)) == struct.pack(">IBH", 35, 8, 2) + NONCE
    assert encode(Welcome("ab", 5, 6, PROOF)) == (
        struct.pack(">IBQQH", 54, 9, 5, 6, 2) + b"ab" + bytes([32]) + PROOF)
    assert encode(Hello("ab", 5, Position(1, 2), NONCE)) == (
        struct.pack(">IBHQQQH", 64, 1, 2, 5, 1, 2, 2) + b"ab" + NONCE + b"\x00")


def test_the_refusal_codes_byte_for_byte() -> None:
    """ERROR's code is the contract between two processes: each value pinned (a peer of
    the previous release reads code 9 as a malformed frame and hangs up, which is a refusal
    too)."""
    assert {code.name: code.value for code in ErrorCode} == {
        "STALE_EPOCH": 1, "GAP": 2, "MALFORMED": 3, "NOT_LEADER": 4, "VERSION": 5,
        "NOT_MEMBER": 6, "FULL": 7, "UNAUTHENTICATED": 8, "WRONG_IDENTITY": 9}
    assert encode(Error(ErrorCode.WRONG_IDENTITY, 3, "x")) == (
        struct.pack(">IBBQH", 13, 7, 9, 3, 1) + b"x")
