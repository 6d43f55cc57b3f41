"""The peer link's proofs (issue 13): each binds the secret, the role, the cluster, the shard,
the prover's incarnation and both nonces, so a proof made for anything else fails; the secret
file's checks; the backend flag."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memring.backend.replication.peer_auth import (
    MIN_SECRET,
    PeerKey,
    new_nonce,
    read_secret,
)
from memring.backend.settings import load_settings
from memring.cluster.coordinator import Incarnation
from memring.cluster.launcher import write_peer_secret
from memring.netio.settings import SettingsError, reachable_from_other_machines
from memring.protocol.replication import NONCE_SIZE, PROOF_SIZE, Position

pytestmark = pytest.mark.unit

SECRET = b"s" * MIN_SECRET
KEY = PeerKey(SECRET, "prod", "s1")
FOLLOWER = Incarnation("n2", 0x22)
LEADER = Incarnation("n1", 0x11)
NL, NF = b"L" * NONCE_SIZE, b"F" * NONCE_SIZE
AT = Position(3, 40)


def test_a_proof_is_an_hmac_sha256_the_other_side_recomputes() -> None:
    proof = KEY.follower_proof(FOLLOWER, AT, NL, NF)
    assert len(proof) == PROOF_SIZE
    assert KEY.verify(PeerKey(SECRET, "prod", "s1").follower_proof(FOLLOWER, AT, NL, NF),
                      proof)
    assert SECRET not in proof


@pytest.mark.parametrize("other", [
    pytest.param(PeerKey(b"t" * MIN_SECRET, "prod", "s1").follower_proof(FOLLOWER, AT, NL, NF),
                 id="another secret"),
    pytest.param(PeerKey(SECRET, "prod", "s2").follower_proof(FOLLOWER, AT, NL, NF),
                 id="another shard"),
    pytest.param(PeerKey(SECRET, "test", "s1").follower_proof(FOLLOWER, AT, NL, NF),
                 id="another cluster"),
    pytest.param(KEY.follower_proof(Incarnation("n2", 0x21), AT, NL, NF), id="an old lease"),
    pytest.param(KEY.follower_proof(Incarnation("n3", 0x22), AT, NL, NF), id="another node"),
    pytest.param(KEY.follower_proof(FOLLOWER, Position(3, 41), NL, NF), id="another position"),
    pytest.param(KEY.follower_proof(FOLLOWER, AT, b"l" * NONCE_SIZE, NF),
                 id="another leader nonce (a replay)"),
    pytest.param(KEY.follower_proof(FOLLOWER, AT, NF, NL), id="the nonces swapped"),
    pytest.param(KEY.leader_proof(FOLLOWER, 3, FOLLOWER, NF, NL), id="a leader's proof"),
    pytest.param(b"", id="none"),
])
def test_a_follower_proof_for_anything_else_fails(other: bytes) -> None:
    assert not KEY.verify(KEY.follower_proof(FOLLOWER, AT, NL, NF), other)


@pytest.mark.parametrize("other", [
    pytest.param(PeerKey(b"t" * MIN_SECRET, "prod", "s1").leader_proof(LEADER, 7, FOLLOWER,
                                                                        NF, NL),
                 id="another secret"),
    pytest.param(PeerKey(SECRET, "prod", "s2").leader_proof(LEADER, 7, FOLLOWER, NF, NL),
                 id="another shard"),
    pytest.param(KEY.leader_proof(Incarnation("n1", 0x12), 7, FOLLOWER, NF, NL),
                 id="another lease"),
    pytest.param(KEY.leader_proof(LEADER, 6, FOLLOWER, NF, NL), id="an older epoch"),
    pytest.param(KEY.leader_proof(LEADER, 7, Incarnation("n3", 0x22), NF, NL),
                 id="for another follower"),
    pytest.param(KEY.leader_proof(LEADER, 7, FOLLOWER, b"f" * NONCE_SIZE, NL),
                 id="another follower nonce (a replay)"),
    pytest.param(KEY.follower_proof(LEADER, Position(7, 0), NF, NL), id="a follower's proof"),
])
def test_a_leader_proof_for_anything_else_fails(other: bytes) -> None:
    assert not KEY.verify(KEY.leader_proof(LEADER, 7, FOLLOWER, NF, NL), other)


def test_plain_mode_makes_empty_proofs_and_checks_none() -> None:
    plain = PeerKey(b"", "prod", "s1")
    assert not plain.required
    assert plain.follower_proof(FOLLOWER, AT, NL, NF) == b""
    assert plain.verify(b"", b"x" * PROOF_SIZE)


def test_an_optional_secret_accepts_no_proof_but_never_a_wrong_one() -> None:
    optional = PeerKey(SECRET, "prod", "s1", optional=True)
    expected = optional.follower_proof(FOLLOWER, AT, NL, NF)
    assert expected == KEY.follower_proof(FOLLOWER, AT, NL, NF)  # it proves itself as usual
    assert optional.verify(expected, b"")
    assert optional.verify(expected, expected)
    assert not optional.verify(expected, PeerKey(b"t" * MIN_SECRET, "prod", "s1")
                               .follower_proof(FOLLOWER, AT, NL, NF))


def test_nonces_are_fresh() -> None:
    nonces = {new_nonce() for _ in range(100)}
    assert len(nonces) == 100 and all(len(n) == NONCE_SIZE for n in nonces)


def test_the_secret_file(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_peer_secret(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert len(read_secret(str(path))) == 2 * MIN_SECRET  # hex, its newline dropped
    path.write_bytes(b"x" * MIN_SECRET + b"\r\n")
    assert read_secret(str(path)) == b"x" * MIN_SECRET
    for short in (b"", b"\n", b"x" * (MIN_SECRET - 1) + b"\n"):
        path.write_bytes(short)
        with pytest.raises(SettingsError, match="at least 32 random bytes"):
            read_secret(str(path))
    with pytest.raises(SettingsError, match="No such file"):
        read_secret(str(tmp_path / "missing"))


def test_the_backend_flag_env_and_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    good, short = tmp_path / "good", tmp_path / "short"
    good.write_text(os.urandom(MIN_SECRET).hex())  # random bytes may end in a newline
    short.write_bytes(b"tiny\n")
    cluster = ["--etcd", "http://127.0.0.1:2379", "--shard", "s1",
               "--peer-listen", "127.0.0.1:0"]
    assert load_settings([*cluster, "--peer-secret-file", str(good)]).peer_secret_file == \
        str(good)
    with pytest.raises(SettingsError, match="4 bytes"):
        load_settings([*cluster, "--peer-secret-file", str(short)])
    config = tmp_path / "backend.toml"
    config.write_text(f'[backend]\npeer_secret_file = "{short}"\n')
    with pytest.raises(SettingsError, match="at least 32"):
        load_settings([*cluster, "--config", str(config)])
    monkeypatch.setenv("MEMRING_PEER_SECRET_FILE", str(short))
    with pytest.raises(SettingsError, match="at least 32"):
        load_settings(cluster)
    assert load_settings([*cluster, "--peer-secret-file", str(good)]).peer_secret_file == \
        str(good)  # the flag wins
    monkeypatch.delenv("MEMRING_PEER_SECRET_FILE")
    with pytest.raises(SettingsError, match="needs --peer-secret-file"):
        load_settings([*cluster, "--peer-secret-optional"])
    monkeypatch.setenv("MEMRING_PEER_SECRET_OPTIONAL", "true")
    assert load_settings([*cluster, "--peer-secret-file", str(good)]).peer_secret_optional
    monkeypatch.setenv("MEMRING_PEER_SECRET_OPTIONAL", "maybe")
    with pytest.raises(SettingsError, match="true or false"):
        load_settings([*cluster, "--peer-secret-file", str(good)])


@pytest.mark.parametrize(("host", "reachable"), [
    ("127.0.0.1", False), ("127.0.0.2", False), ("::1", False), ("localhost", False),
    ("0.0.0.0", True), ("::", True), ("10.0.0.7", True), ("peer.example", True)])
def test_which_peer_listen_hosts_other_machines_reach(host: str, reachable: bool) -> None:
    assert reachable_from_other_machines(host) is reachable
