"""The authenticated peer link (issue 13): with a peer secret, no one without it is served a
byte of data or enters the ISR, and a follower takes nothing from a leader that cannot prove
it. A sync shard of 2 on a real etcd, sharing a secret file; the impostors are raw sockets
(tests/helpers/peer_impostor) and a fake leader thread. For each refused client the test
checks every byte received before the leader hung up: its CHALLENGE and one ERROR.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from memring.backend.replication.peer_auth import MIN_SECRET, PeerKey, new_nonce
from memring.cluster.coordinator import ClusterView, Incarnation
from memring.cluster.etcd_process import EtcdProcess
from memring.protocol.replication import (
    Challenge,
    Error,
    ErrorCode,
    Event,
    ReplicationParser,
    encode,
)
from memring.protocol.sentinels import NEED_DATA
from tests.helpers import replicas, servers, wire
from tests.helpers.cluster import (
    SHARD,
    ReplicatedShard,
    node_id,
    peer_secret_in,
    wait_for,
    wait_in_sync,
)
from tests.helpers.peer_impostor import (
    Acknowledger,
    FakeLeader,
    forge_leader_address,
    handshake,
    leader_peer,
    read_challenge,
    received_until_close,
    silent_crowd,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

_clusters = itertools.count(1)
KEYS = [b"k%03d" % i for i in range(200)]
UNAUTHENTICATED = ErrorCode.UNAUTHENTICATED, "proof missing or wrong"
NOT_MEMBER = ErrorCode.NOT_MEMBER, "not a current member"


class SecureShard(ReplicatedShard):
    mode = "sync"

    def current(self, view: ClusterView, name: str) -> Incarnation:
        return Incarnation(name, view.lease_of(view.keyspace.node(name)))

    def isr(self, view: ClusterView) -> set[Incarnation]:
        isr = view.shards[SHARD].isr
        return set(isr.members) if isr is not None else set()

    def key(self, secret: bytes | None = None, shard: str = SHARD) -> PeerKey:
        """The key a member of `shard` makes proofs with (`secret`: the shard's own)."""
        if secret is None:
            secret = Path(self.peer_secret_file).read_bytes().rstrip(b"\n")
        return PeerKey(secret, self.cluster, shard)


@contextlib.contextmanager
def secure_shard(etcd: EtcdProcess, tmp_path: Path) -> Iterator[tuple[
        SecureShard, servers.RunningServer, servers.RunningServer]]:
    """A settled sync shard of 2 sharing a peer secret, with KEYS written: (shard, leader,
    follower)."""
    with contextlib.ExitStack() as stack:
        shard = SecureShard(etcd, stack, f"pa{next(_clusters)}", {})
        shard.peer_secret_file = peer_secret_in(tmp_path)
        for _ in range(2):
            shard.start()
        leader = shard.leader()
        trio.run(wait_in_sync, shard, 10.0)
        (follower,) = [n for n in shard.live() if n is not leader]
        with wire.connect(leader) as sock:
            replicas.pipeline(sock, [b"set %s 0 0 5 q\r\nvalue\r\n" % k for k in KEYS])
        replicas.wait_identical(leader, follower, KEYS, 5.0)
        yield shard, leader, follower


def frames(data: bytes) -> list[Event]:
    parser = ReplicationParser()
    parser.receive_data(data)
    events: list[Event] = []
    while (event := parser.next_event()) is not NEED_DATA:
        assert not isinstance(event, type(NEED_DATA))
        events.append(event)
    return events


def refused_with_nothing_else(peer: tuple[str, int], epoch: int, name: str, lease: int,
                              key: PeerKey | None, refusal: tuple[ErrorCode, str]) -> None:
    """A HELLO as (`name`, `lease`) with a proof made with `key` gets exactly CHALLENGE and
    the ERROR `refusal`, then the end of the connection."""
    sock, challenge = handshake(peer, name, lease, key=key)
    with sock:
        rest = received_until_close(sock)
    assert rest == encode(Error(refusal[0], epoch, refusal[1])), (name, lease, rest[:200])
    events = frames(challenge + rest)
    assert [type(e) for e in events] == [Challenge, Error], events


def test_the_shard_replicates_with_a_secret_and_refuses_everyone_without_it(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    with secure_shard(etcd, tmp_path) as (shard, leader, follower):
        view = trio.run(shard.view)
        peer, epoch = leader_peer(view), view.shards[SHARD].epoch
        real = shard.current(view, node_id(follower))
        isr = shard.isr(view)
        assert isr == {shard.current(view, node_id(leader)), real}
        wrong = shard.key(os.urandom(MIN_SECRET))
        # (1) a plain client: HELLO without a proof, naming the follower's current lease
        refused_with_nothing_else(peer, epoch, real.node_id, real.lease_id, None,
                                  UNAUTHENTICATED)
        # (2) the wrong secret, naming a real member's current node id and lease
        refused_with_nothing_else(peer, epoch, real.node_id, real.lease_id, wrong,
                                  UNAUTHENTICATED)
        # a memcached client on the wrong port
        with socket.create_connection(peer, timeout=5) as sock:
            read_challenge(sock)
            sock.sendall(b"version\r\n")
            rest = received_until_close(sock)
        assert rest == encode(Error(ErrorCode.MALFORMED, epoch, "expected HELLO")), rest
        # a node nobody registered, with the wrong secret
        refused_with_nothing_else(peer, epoch, "evil", 0x1234, wrong, UNAUTHENTICATED)
        # posing as the follower with the wrong secret, acking: refused at once
        impostor = Acknowledger(peer, real.node_id, real.lease_id, acking=0.3, silent=0.3,
                                key=wrong)
        impostor.start()
        time.sleep(0.5)
        impostor.stop()
        assert impostor.closed_by_leader and impostor.acks == 0
        # the real follower was never dropped and the ISR never changed
        view = trio.run(shard.view)
        assert shard.isr(view) == isr
        leader_stats = wire.stats(leader)
        assert leader_stats["memring_repl_followers"] == "1"
        assert leader_stats["memring_repl_peer_auth"] == "secret"
        # the refused proofs: 3 HELLOs and the acker (a text client is not a refused proof)
        assert int(leader_stats["memring_repl_peers_refused"]) == 4
        print(f"\nrefused (no proof, a wrong secret): each received CHALLENGE "
              f"({len(encode(Challenge(new_nonce())))} bytes) and one ERROR")


def test_an_old_session_and_another_shards_member_are_refused(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    with secure_shard(etcd, tmp_path) as (shard, leader, follower):
        # (4) the follower's previous session: restart it (a new lease), then say HELLO
        # under the old one, with the secret
        old = shard.current(trio.run(shard.view), node_id(follower))
        servers.stop(follower.process)
        restarted = shard.start(follower.port)
        view = trio.run(wait_in_sync, shard, 10.0)
        new = shard.current(view, node_id(restarted))
        assert new.lease_id != old.lease_id
        peer, epoch = leader_peer(view), view.shards[SHARD].epoch
        refused_with_nothing_else(peer, epoch, old.node_id, old.lease_id, shard.key(),
                                  NOT_MEMBER)
        # (3) a registered member of another shard of this cluster, with the secret
        other = shard.stack.enter_context(servers.running("memring-backend", servers.backend_argv(
            "--etcd", shard.etcd.url, "--cluster", shard.cluster, "--shard", "other",
            "--peer-listen", f"{servers.HOST}:{servers.free_port()}",
            "--peer-secret-file", shard.peer_secret_file)))

        def registered() -> Incarnation | None:
            me = shard.current(trio.run(shard.view), node_id(other))
            return me if me.lease_id else None
        foreign = wait_for(registered, 10.0, "the other shard's node registered")
        # its own proof binds its shard, not this one
        refused_with_nothing_else(peer, epoch, foreign.node_id, foreign.lease_id,
                                  shard.key(shard="other"), UNAUTHENTICATED)
        # a proof for this shard (whoever knows the secret): not a member of this shard
        refused_with_nothing_else(peer, epoch, foreign.node_id, foreign.lease_id, shard.key(),
                                  NOT_MEMBER)
        time.sleep(0.3)
        view = trio.run(shard.view)
        members = shard.isr(view)
        assert members == {shard.current(view, node_id(leader)), new}, members


def test_a_follower_without_the_secret_never_enters_the_isr(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    with secure_shard(etcd, tmp_path) as (shard, leader, _):
        wrong = tmp_path / "wrong-secret"
        # hex: random bytes end in a newline 1 time in 256, which read_secret drops
        wrong.write_text(os.urandom(MIN_SECRET).hex())
        shard.peer_secret_file, right = str(wrong), shard.peer_secret_file
        stranger = shard.start()
        shard.peer_secret_file = right
        time.sleep(1.5)
        view = trio.run(shard.view)
        assert node_id(stranger) in view.nodes  # registered in etcd, and refused
        assert {m.node_id for m in shard.isr(view)} == {node_id(leader), node_id(_)}
        replicas.assert_holds_nothing(stranger, KEYS[:5])
        assert "refused this node's proof" in stranger.log_text()
        assert "wrong proof (not the peer secret)" in leader.log_text()


@pytest.mark.parametrize("claim", ["the real leader's identity", "another identity"])
def test_a_follower_refuses_a_fake_leader_etcd_points_it_at(
        etcd: EtcdProcess, tmp_path: Path, claim: str) -> None:
    with secure_shard(etcd, tmp_path) as (shard, _, follower):
        view = trio.run(shard.view)
        shard_view = view.shards[SHARD]
        assert shard_view.leader is not None
        leader_key = shard_view.leader
        identity = (leader_key.node_id, leader_key.lease_id, shard_view.epoch)
        if claim != "the real leader's identity":
            identity = ("fake", 0x99, shard_view.epoch + 1)
        before = replicas.dump(follower, KEYS)
        snapshots = wire.stats(follower)["memring_repl_snapshots_received"]
        fake = FakeLeader(identity)
        fake.start()
        try:
            forge_leader_address(shard.etcd.url, shard.cluster, view, leader_key, fake.address)
            wait_for(lambda: any(isinstance(e, Error) for e in fake.received), 5.0,
                     "the follower's refusal of the fake leader")
            time.sleep(0.5)  # it may try again meanwhile
        finally:
            fake.stop()
        errors = [e for e in fake.received if isinstance(e, Error)]
        expected = ErrorCode.UNAUTHENTICATED if claim == "the real leader's identity" else \
            ErrorCode.NOT_LEADER
        assert errors and {e.code for e in errors} == {expected}, errors
        assert replicas.dump(follower, KEYS) == before
        assert replicas.dump(follower, [b"planted"]) == {b"planted": None}
        follower_stats = wire.stats(follower)
        assert follower_stats["memring_repl_snapshots_received"] == snapshots
        assert int(follower_stats["memring_repl_leaders_refused"]) == len(errors)
        print(f"\nfake leader ({claim}): {len(errors)} connection(s) refused with "
              f"{expected.name}; the follower's {len(KEYS)} keys kept")


def test_an_optional_secret_lets_a_running_cluster_move_to_one(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    """--peer-secret-optional (one rolling restart): a node with the secret and one without
    replicate both ways, while a wrong proof is still refused."""
    with contextlib.ExitStack() as stack:
        shard = SecureShard(etcd, stack, f"pa{next(_clusters)}", {})
        secret = peer_secret_in(tmp_path)
        shard.peer_secret_file, shard.extra = secret, ("--peer-secret-optional",)
        upgraded = shard.start()  # leads: the first member of a new shard
        shard.peer_secret_file, shard.extra = "", ()
        plain = shard.start()
        view = trio.run(wait_in_sync, shard, 10.0)
        assert shard.leader() is upgraded
        wrong = shard.key(os.urandom(MIN_SECRET))
        current = shard.current(view, node_id(plain))
        refused_with_nothing_else(leader_peer(view), view.shards[SHARD].epoch,
                                  current.node_id, current.lease_id, wrong, UNAUTHENTICATED)
        # the other way round: the plain node leads, the upgraded one (restarted) follows
        servers.stop(upgraded.process)
        wait_for(lambda: shard.role(plain) == "leader", 10.0, "the plain node leading")
        shard.peer_secret_file, shard.extra = secret, ("--peer-secret-optional",)
        restarted = shard.start(upgraded.port)
        trio.run(wait_in_sync, shard, 10.0)
        with wire.connect(plain) as sock:
            replicas.pipeline(sock, [b"set %s 0 0 5 q\r\nvalue\r\n" % k for k in KEYS])
        replicas.wait_identical(plain, restarted, KEYS, 5.0)
        assert "following" in restarted.log_text() and "without its proof" in \
            restarted.log_text()


def test_unauthenticated_connections_are_closed_and_never_lock_a_follower_out(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    """A connection that completes no handshake is closed after HANDSHAKE_TIMEOUT (2 s) with
    CHALLENGE and one ERROR; 80 of them, reopened as they close, do not keep a restarting
    follower out (only 8 unauthenticated connections are kept, the oldest evicted)."""
    with secure_shard(etcd, tmp_path) as (shard, leader, follower):
        view = trio.run(shard.view)
        peer, epoch = leader_peer(view), view.shards[SHARD].epoch
        with socket.create_connection(peer, timeout=5) as sock:
            started = time.monotonic()
            received = received_until_close(sock)
            took = time.monotonic() - started
        assert 1.8 < took < 3.5, took
        closed_after = took
        assert [type(e) for e in frames(received)] == [Challenge, Error]
        assert frames(received)[1] == Error(ErrorCode.MALFORMED, epoch, "no HELLO within 2 s")
        with silent_crowd(peer, 80) as crowd:
            time.sleep(0.5)
            servers.stop(follower.process)
            started = time.monotonic()
            shard.start(follower.port)
            trio.run(wait_in_sync, shard, 10.0)
            took = time.monotonic() - started
        print(f"\nsilent peer closed after {closed_after:.2f} s; with 80 silent connections "
              f"({crowd.closed} closed by the leader) the restarted follower was in sync "
              f"{took:.1f} s after its start")
        with wire.connect(leader) as sock:
            sock.sendall(b"set after 0 0 1\r\nx\r\n")
            assert wire.read_until(sock, b"\r\n") == b"STORED\r\n"
