"""The peer link's shared secret and the handshake's proofs (issue 13).

Theory of operation: every member of a cluster reads the same secret from
`--peer-secret-file` (at least MIN_SECRET bytes; `read_secret`). A `PeerKey` holds it with the
cluster and shard this node serves, which every proof binds. A proof is HMAC-SHA256 over a
transcript of length-prefixed fields: a role label (so a leader's proof is never a
follower's), the cluster and shard, the prover's incarnation as etcd registers it (node id +
lease, and for the leader its epoch; for the follower its position), and both sides' fresh
nonces (`new_nonce`), the verifier's own included, so nothing recorded on one connection
passes on another. Proofs are compared with `hmac.compare_digest`. Without a secret (plain
mode) proofs are empty and `verify` accepts anything: only the etcd identity checks of
leader_side and follower_side apply. With `--peer-secret-optional` (only while a running
cluster moves to a secret) a node proves itself but also accepts a peer that sends no proof;
a wrong proof is still refused. The message order is in protocol.replication.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

from memring.cluster.coordinator import Incarnation
from memring.netio.settings import SettingsError
from memring.protocol.replication import NONCE_SIZE, Position

MIN_SECRET = 32  # bytes: a 256-bit key for HMAC-SHA256
_FOLLOWER = b"memring peer v2 follower"
_LEADER = b"memring peer v2 leader"
_U64 = struct.Struct(">Q")


def read_secret(path: str) -> bytes:
    """The secret in `path` (one trailing newline dropped, so `openssl rand -hex 32 > FILE`
    and an editor's newline agree); SettingsError if unreadable or shorter than MIN_SECRET."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SettingsError(f"--peer-secret-file {path}: {exc.strerror}") from None
    secret = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") \
        else data
    if len(secret) < MIN_SECRET:
        raise SettingsError(f"--peer-secret-file {path}: {len(secret)} bytes; the peer secret "
                            f"must be at least {MIN_SECRET} random bytes (e.g. `openssl rand "
                            f"-hex 32 > {path}`)")
    return secret


def readable_by_others(path: str) -> bool:
    """Whether the group or others may read the secret file (worth a warning)."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_SIZE)


def _transcript(label: bytes, *fields: str | int | bytes) -> bytes:
    """An unambiguous encoding: integers as u64, text and bytes with a u64 length first."""
    parts = [label]
    for value in fields:
        if isinstance(value, int):
            parts.append(_U64.pack(value))
        else:
            data = value.encode() if isinstance(value, str) else value
            parts += (_U64.pack(len(data)), data)
    return b"".join(parts)


@dataclass(frozen=True)
class PeerKey:
    """The cluster's peer secret (b"": plain mode) and what this node's proofs bind."""

    secret: bytes = field(repr=False)
    cluster: str
    shard: str
    optional: bool = False  # --peer-secret-optional: a peer with no proof passes (migration)

    @property
    def required(self) -> bool:
        return bool(self.secret)

    def _mac(self, transcript: bytes) -> bytes:
        if not self.secret:
            return b""
        return hmac.new(self.secret, transcript, hashlib.sha256).digest()

    def follower_proof(self, follower: Incarnation, position: Position, leader_nonce: bytes,
                       follower_nonce: bytes) -> bytes:
        """HELLO's proof: this follower's incarnation and position, bound to both nonces."""
        return self._mac(_transcript(
            _FOLLOWER, self.cluster, self.shard, follower.node_id, follower.lease_id,
            position.epoch, position.seq, leader_nonce, follower_nonce))

    def leader_proof(self, leader: Incarnation, epoch: int, follower: Incarnation,
                     follower_nonce: bytes, leader_nonce: bytes) -> bytes:
        """WELCOME's proof: the leader's incarnation and epoch, for this follower's HELLO."""
        return self._mac(_transcript(
            _LEADER, self.cluster, self.shard, leader.node_id, leader.lease_id, epoch,
            follower.node_id, follower.lease_id, follower_nonce, leader_nonce))

    def verify(self, expected: bytes, given: bytes) -> bool:
        """Plain mode accepts anything, and `optional` a missing proof (a peer without the
        secret yet); else the proofs must match (constant time)."""
        if not self.secret or (self.optional and not given):
            return True
        return hmac.compare_digest(expected, given)
