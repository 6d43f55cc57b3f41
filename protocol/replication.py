"""The leader <-> follower replication protocol on the peer port, sans I/O.

Theory of operation: both ends exchange length-prefixed binary frames; `encode(event)`
turns one event into one frame and `ReplicationParser` turns bytes back into events
(`receive_data(chunk)`, then `next_event()` until it returns NEED_DATA). The stream is
trusted only as far as its framing: a frame that is too long, too short, of an unknown
type or with a body that does not parse becomes a `MalformedFrame` event, after which the
parser is dead (it repeats the same event) and the connection must close. Nothing raises.

A follower opens the connection; the two ends authenticate each other, then the leader
streams. The handshake (issue 13), before the leader sends a byte of data and before the
follower applies anything:

1. leader -> follower  CHALLENGE  the protocol version and a fresh random nonce Nl, sent on
                                   accept (the only thing an unauthenticated peer ever gets)
2. follower -> leader  HELLO      its node id, lease (the incarnation registered in etcd), its
                                   position, a fresh nonce Nf and its proof:
                                   HMAC-SHA256(secret, "follower", cluster, shard, node id,
                                   lease, position, Nl, Nf)
3. leader -> follower  WELCOME    its node id, lease and epoch (its leader key in etcd) and its
                                   proof: HMAC-SHA256(secret, "leader", cluster, shard, node
                                   id, lease, epoch, the follower's node id and lease, Nf, Nl)

The leader checks the proof (ERROR UNAUTHENTICATED), then that the HELLO names a registered
member of its shard under its current lease (ERROR NOT_MEMBER); the follower checks that
WELCOME names the shard's current leader record and epoch in its view (ERROR NOT_LEADER),
then the proof (ERROR UNAUTHENTICATED). Each proof is bound to the other side's fresh nonce,
so a recorded exchange replays nowhere, and to the role, cluster, shard and incarnation, so a
member of another shard or an old session cannot pass for this one. The secret never travels.
Without a secret (plain mode, one machine) the messages are the same with empty proofs and
only the etcd checks apply. The proofs are made and checked by backend.replication.peer_auth;
this module only frames them. The handshake authenticates the two ends; it does not encrypt
or sign the frames after it (that is TLS's part: with peer TLS the same frames travel inside a
mutual TLS connection, and each side also checks that the other's certificate names the node
id it claims, HELLO's or WELCOME's, else ERROR WRONG_IDENTITY; backend.replication.peer_tls).
Version 1 peers (no handshake) cannot talk to version 2 ones: each side sees a frame it does
not expect and closes with ERROR.

Then the leader sends either the MUTATIONs after the follower's position (its backlog still
holds it) or SNAPSHOT_BEGIN, one SNAPSHOT_ITEM per live item and SNAPSHOT_END, then the
MUTATIONs after the snapshot's position. The follower ACKs positions it has applied; either
side sends ERROR before hanging up (stale epoch, gap, bad frame, a refused handshake).

Wire format (all integers big-endian, unsigned unless marked i64)::

    frame      = length:u32 type:u8 body        length counts type+body, 1..max_frame
    position   = epoch:u64 seq:u64
    item       = key_len:u16 key value_len:u32 value flags:u32 expires:i64 cas:u64
                 updated:i64 bits:u8            bits: 1 = stale, 2 = key was base64 (meta b)
    0x01 HELLO           version:u16 incarnation:u64 position node_len:u16 node_id(utf-8)
                         nonce:32 proof_len:u8 proof       proof_len 0 (plain) or 32
    0x02 SNAPSHOT_BEGIN  position flush_before:i64
    0x03 SNAPSHOT_ITEM   item
    0x04 SNAPSHOT_END    position count:u64
    0x05 MUTATION        position op:u8 payload
                           op 1 SET    item          the resulting item state
                           op 2 DELETE key_len:u16 key
                           op 3 FLUSH  flush_before:i64   0 = flush now, else the deadline
                           op 4 EPOCH  position       previous epoch's last position
    0x06 ACK             position
    0x07 ERROR           code:u8 epoch:u64 msg_len:u16 message(utf-8)
    0x08 CHALLENGE       version:u16 nonce:32
    0x09 WELCOME         lease:u64 epoch:u64 node_len:u16 node_id(utf-8) proof_len:u8 proof

Positions order as tuples. Seq restarts per epoch: a new leader's log opens with an EPOCH
mutation at (epoch, 0) naming the position it continues from, so a follower can tell a
clean continuation from a gap across a change of leader.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, NamedTuple

from memring.protocol.receive_buffer import ReceiveBuffer
from memring.protocol.sentinels import NEED_DATA, NeedData

PROTOCOL_VERSION = 2  # 2: the authenticated handshake (CHALLENGE, HELLO's proof, WELCOME)
NONCE_SIZE = 32  # bytes of each side's fresh nonce
PROOF_SIZE = 32  # an HMAC-SHA256 proof; 0 bytes in plain mode (no peer secret)
DEFAULT_MAX_FRAME = (1 << 20) + 4096  # a 1 MiB item plus its key and header


class Position(NamedTuple):
    """(epoch, seq) of a mutation; (0, 0) is an empty store that has applied nothing."""

    epoch: int
    seq: int


ORIGIN: Final = Position(0, 0)


def parse_position(text: str) -> Position | None:
    """A position as `stats` shows it, `epoch:seq`; None if `text` is not one."""
    epoch, _, seq = text.partition(":")
    return Position(int(epoch), int(seq)) if epoch.isdecimal() and seq.isdecimal() else None


# -- what a mutation changes ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ItemState:
    """An item exactly as the leader holds it; `expires` and `updated` are unix seconds."""

    key: bytes
    value: bytes | memoryview  # a long value is a view of the store's record: no copy
    flags: int
    expires: int
    cas: int
    updated: int = 0
    stale: bool = False
    key_binary: bool = False


@dataclass(frozen=True, slots=True)
class Deletion:
    key: bytes


@dataclass(frozen=True, slots=True)
class Flush:
    """flush_all: 0 empties the store now, else items updated up to this time go then."""

    flush_before: int = 0


@dataclass(frozen=True, slots=True)
class EpochStart:
    """A new leader's first entry, at (epoch, 0): it continues from `previous`."""

    previous: Position


Change = ItemState | Deletion | Flush | EpochStart


class ErrorCode(IntEnum):
    STALE_EPOCH = 1  # the sender's epoch is older than one the receiver has seen
    GAP = 2  # a mutation does not follow the receiver's position
    MALFORMED = 3
    NOT_LEADER = 4
    VERSION = 5
    NOT_MEMBER = 6  # HELLO's node id + lease is not a current member of the leader's shard
    FULL = 7  # the leader's peer port has no room for another follower
    UNAUTHENTICATED = 8  # the handshake's proof is missing or wrong (not the peer secret)
    WRONG_IDENTITY = 9  # peer TLS: the certificate does not name the node the peer claims


# -- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Challenge:
    """The leader's first frame on a peer connection: its fresh nonce."""

    nonce: bytes
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Hello:
    """The follower's answer to CHALLENGE: who it is, where it is, its nonce and proof."""

    node_id: str
    incarnation: int
    position: Position
    nonce: bytes
    proof: bytes = b""
    version: int = PROTOCOL_VERSION


@dataclass(frozen=True, slots=True)
class Welcome:
    """The leader accepted HELLO: who it is (its leader key in etcd) and its proof."""

    node_id: str
    lease_id: int
    epoch: int
    proof: bytes = b""


@dataclass(frozen=True, slots=True)
class SnapshotBegin:
    position: Position
    flush_before: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    state: ItemState


@dataclass(frozen=True, slots=True)
class SnapshotEnd:
    position: Position
    count: int


@dataclass(frozen=True, slots=True)
class Mutation:
    epoch: int
    seq: int
    change: Change

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq)


@dataclass(frozen=True, slots=True)
class Ack:
    position: Position


@dataclass(frozen=True, slots=True)
class Error:
    code: ErrorCode
    epoch: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class MalformedFrame:
    """The stream broke its framing; send ERROR MALFORMED and close."""

    reason: str


Message = (Challenge | Hello | Welcome | SnapshotBegin | SnapshotItem | SnapshotEnd | Mutation
           | Ack | Error)
Event = Message | MalformedFrame


# -- encoding -------------------------------------------------------------------------

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_POSITION = struct.Struct(">QQ")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_ITEM_TAIL = struct.Struct(">IqQqB")  # flags expires cas updated bits
_HELLO_HEAD = struct.Struct(">HQQQ")  # version incarnation epoch seq
_ERROR_HEAD = struct.Struct(">BQ")
_WELCOME_HEAD = struct.Struct(">QQ")  # lease epoch

(_HELLO, _SNAPSHOT_BEGIN, _SNAPSHOT_ITEM, _SNAPSHOT_END, _MUTATION, _ACK, _ERROR, _CHALLENGE,
 _WELCOME) = range(1, 10)
_OP_SET, _OP_DELETE, _OP_FLUSH, _OP_EPOCH = range(1, 5)
_STALE, _KEY_BINARY = 1, 2


def _item(state: ItemState) -> bytes:
    bits = (_STALE if state.stale else 0) | (_KEY_BINARY if state.key_binary else 0)
    return b"".join((_U16.pack(len(state.key)), state.key, _U32.pack(len(state.value)),
                     state.value, _ITEM_TAIL.pack(state.flags, state.expires, state.cas,
                                                  state.updated, bits)))


def _change(change: Change) -> bytes:
    if isinstance(change, ItemState):
        return _U8.pack(_OP_SET) + _item(change)
    if isinstance(change, Deletion):
        return _U8.pack(_OP_DELETE) + _U16.pack(len(change.key)) + change.key
    if isinstance(change, Flush):
        return _U8.pack(_OP_FLUSH) + _I64.pack(change.flush_before)
    return _U8.pack(_OP_EPOCH) + _POSITION.pack(*change.previous)


def _nonce(nonce: bytes) -> bytes:
    if len(nonce) != NONCE_SIZE:
        raise ValueError(f"a nonce is {NONCE_SIZE} bytes, got {len(nonce)}")
    return nonce


def _proof(proof: bytes) -> bytes:
    if len(proof) not in (0, PROOF_SIZE):
        raise ValueError(f"a proof is 0 or {PROOF_SIZE} bytes, got {len(proof)}")
    return _U8.pack(len(proof)) + proof


def _text(text: str) -> bytes:
    data = text.encode()
    return _U16.pack(len(data)) + data


def _body(message: Message) -> tuple[int, bytes]:
    if isinstance(message, Mutation):
        return _MUTATION, _POSITION.pack(message.epoch, message.seq) + _change(message.change)
    if isinstance(message, Ack):
        return _ACK, _POSITION.pack(*message.position)
    if isinstance(message, SnapshotItem):
        return _SNAPSHOT_ITEM, _item(message.state)
    if isinstance(message, Hello):
        return _HELLO, (_HELLO_HEAD.pack(message.version, message.incarnation,
                                         *message.position) + _text(message.node_id)
                        + _nonce(message.nonce) + _proof(message.proof))
    if isinstance(message, Challenge):
        return _CHALLENGE, _U16.pack(message.version) + _nonce(message.nonce)
    if isinstance(message, Welcome):
        return _WELCOME, (_WELCOME_HEAD.pack(message.lease_id, message.epoch)
                          + _text(message.node_id) + _proof(message.proof))
    if isinstance(message, SnapshotBegin):
        return _SNAPSHOT_BEGIN, (_POSITION.pack(*message.position)
                                 + _I64.pack(message.flush_before))
    if isinstance(message, SnapshotEnd):
        return _SNAPSHOT_END, _POSITION.pack(*message.position) + _U64.pack(message.count)
    return _ERROR, _ERROR_HEAD.pack(message.code, message.epoch) + _text(message.message)


def encode(message: Message) -> bytes:
    """One frame; raises struct.error/ValueError only for out-of-range fields (a bug)."""
    kind, body = _body(message)
    return _U32.pack(len(body) + 1) + _U8.pack(kind) + body


# -- parsing --------------------------------------------------------------------------


class _BadBody(Exception):
    """A frame body that does not parse; becomes MalformedFrame, never leaves the module."""


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise _BadBody("truncated")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[int, ...]:
        return tuple(fmt.unpack(self.take(fmt.size)))

    def one(self, fmt: struct.Struct) -> int:
        return int(fmt.unpack(self.take(fmt.size))[0])

    def position(self) -> Position:
        epoch, seq = self.unpack(_POSITION)
        return Position(epoch, seq)

    def item(self) -> ItemState:
        key = self.take(self.one(_U16))
        value = self.take(self.one(_U32))
        flags, expires, cas, updated, bits = self.unpack(_ITEM_TAIL)
        if bits & ~(_STALE | _KEY_BINARY):
            raise _BadBody("unknown item bits")
        return ItemState(key, value, flags, expires, cas, updated,
                         bool(bits & _STALE), bool(bits & _KEY_BINARY))

    def text(self) -> str:
        try:
            return self.take(self.one(_U16)).decode()
        except UnicodeDecodeError as error:
            raise _BadBody("bad utf-8") from error

    def nonce(self) -> bytes:
        return self.take(NONCE_SIZE)

    def proof(self) -> bytes:
        size = self.one(_U8)
        if size not in (0, PROOF_SIZE):
            raise _BadBody(f"proof of {size} bytes")
        return self.take(size)

    def done(self) -> None:
        if self.offset != len(self.data):
            raise _BadBody("trailing bytes in frame")


def _parse_change(reader: _Reader) -> Change:
    op = reader.one(_U8)
    if op == _OP_SET:
        return reader.item()
    if op == _OP_DELETE:
        return Deletion(reader.take(reader.one(_U16)))
    if op == _OP_FLUSH:
        return Flush(reader.one(_I64))
    if op == _OP_EPOCH:
        return EpochStart(reader.position())
    raise _BadBody(f"unknown mutation op {op}")


def _parse_frame(kind: int, reader: _Reader) -> Message:
    message: Message
    if kind == _MUTATION:
        epoch, seq = reader.unpack(_POSITION)
        message = Mutation(epoch, seq, _parse_change(reader))
    elif kind == _ACK:
        message = Ack(reader.position())
    elif kind == _SNAPSHOT_ITEM:
        message = SnapshotItem(reader.item())
    elif kind == _HELLO:
        version, incarnation, epoch, seq = reader.unpack(_HELLO_HEAD)
        message = Hello(reader.text(), incarnation, Position(epoch, seq), reader.nonce(),
                        reader.proof(), version)
    elif kind == _CHALLENGE:
        version = reader.one(_U16)
        message = Challenge(reader.nonce(), version)
    elif kind == _WELCOME:
        lease, epoch = reader.unpack(_WELCOME_HEAD)
        message = Welcome(reader.text(), lease, epoch, reader.proof())
    elif kind == _SNAPSHOT_BEGIN:
        message = SnapshotBegin(reader.position(), reader.one(_I64))
    elif kind == _SNAPSHOT_END:
        message = SnapshotEnd(reader.position(), reader.one(_U64))
    elif kind == _ERROR:
        code, epoch = reader.unpack(_ERROR_HEAD)
        try:
            error_code = ErrorCode(code)
        except ValueError as error:
            raise _BadBody(f"unknown error code {code}") from error
        message = Error(error_code, epoch, reader.text())
    else:
        raise _BadBody(f"unknown frame type {kind}")
    reader.done()
    return message


class ReplicationParser:
    """Frames in, events out; one per peer connection, used by both ends."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = ReceiveBuffer()
        self._broken: MalformedFrame | None = None

    def receive_data(self, data: bytes) -> None:
        if self._broken is None:
            self._buffer += data

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def next_event(self) -> Event | NeedData:
        if self._broken is not None:
            return self._broken
        buffer = self._buffer
        if len(buffer) < 4:
            return NEED_DATA
        length = _U32.unpack_from(buffer.peek(4))[0]
        if length < 1 or length > self.max_frame:
            return self._break(f"frame length {length} outside 1..{self.max_frame}")
        if len(buffer) < 4 + length:
            return NEED_DATA
        kind = buffer.peek(5)[4]
        buffer.skip(5)
        body = buffer.take(length - 1)
        assert body is not None  # the whole frame is buffered
        try:
            message = _parse_frame(kind, _Reader(body))
        except _BadBody as error:
            return self._break(str(error))
        return message

    def _break(self, reason: str) -> MalformedFrame:
        self._broken = MalformedFrame(reason)
        self._buffer.clear()
        return self._broken
