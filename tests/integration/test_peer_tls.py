"""Mutual TLS on the replication peer link (issue 13): a sync shard whose members present
certificates from the session's private CA naming their node ids replicates and fails over;
a follower with a certificate from another CA, with none, with a valid certificate of
another node, and a plain-text client are refused before any data and never enter the ISR;
a follower takes nothing from a "leader" (an etcd record pointing at it) whose certificate
names another node. Real backends on a real etcd; impostors are stdlib TLS sockets
(tests/helpers/peer_impostor).
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.coordinator import ClusterView, Incarnation
from memring.cluster.etcd_process import EtcdProcess
from memring.protocol.replication import Challenge, Error, ErrorCode, encode
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
    FakeLeader,
    connect,
    forge_leader_address,
    handshake,
    leader_peer,
    plaintext_until_close,
    received_until_close,
    silent_crowd,
    tls_context,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

_clusters = itertools.count(1)
KEYS = [b"k%03d" % i for i in range(300)]


class TlsShard(ReplicatedShard):
    mode = "sync"

    def current(self, view: ClusterView, name: str) -> Incarnation:
        return Incarnation(name, view.lease_of(view.keyspace.node(name)))

    def isr(self, view: ClusterView) -> set[str]:
        isr = view.shards[SHARD].isr
        return {m.node_id for m in isr.members} if isr is not None else set()


@contextlib.contextmanager
def tls_shard(etcd: EtcdProcess, ca: CertificateAuthority, size: int, secret: str = "",
              from_client_flags: bool = False
              ) -> Iterator[tuple[TlsShard, servers.RunningServer, list[servers.RunningServer]]]:
    """A settled sync shard of `size` with peer TLS (and the peer `secret` file, if any),
    KEYS written (acknowledged) on the leader and on every follower: (shard, leader,
    followers)."""
    with contextlib.ExitStack() as stack:
        shard = TlsShard(etcd, stack, f"pt{next(_clusters)}", {})
        shard.peer_ca = ca
        shard.peer_secret_file = secret
        shard.peer_tls_from_client_flags = from_client_flags
        for _ in range(size):
            shard.start()
        leader = shard.leader()
        trio.run(wait_in_sync, shard, 15.0)
        followers = [n for n in shard.live() if n is not leader]
        with wire.connect(leader) as sock:  # no noreply: each STORED is acknowledged
            reply = replicas.pipeline(sock, [b"set %s 0 0 5\r\nvalue\r\n" % k for k in KEYS])
        assert reply == b"STORED\r\n" * len(KEYS)
        for follower in followers:
            replicas.wait_identical(leader, follower, KEYS, 5.0)
        yield shard, leader, followers


def test_a_tls_shard_replicates_and_its_new_leader_has_every_acknowledged_key(
        etcd: EtcdProcess, private_ca: CertificateAuthority) -> None:
    # the files as --tls-cert/-key/-ca, which the peer link defaults to (memring up --secure)
    with tls_shard(etcd, private_ca, 3, from_client_flags=True) as (shard, leader, followers):
        for node in (leader, *followers):
            stats = wire.stats(node)
            assert stats["memring_repl_peer_tls"] == "yes"
            assert stats["memring_repl_peers_refused"] == "0"
        assert wire.stats(leader)["memring_repl_followers"] == "2"
        assert "mutual TLS" in leader.log_text()
        leader.process.kill()  # kill -9
        started = time.monotonic()
        new = wait_for(lambda: [n for n in followers if shard.role(n) == "leader"] or None,
                       15.0, "a new leader")[0]
        took = time.monotonic() - started
        held = replicas.dump(new, KEYS)
        missing = [k for k, item in held.items() if item is None]
        assert not missing, missing[:5]
        assert all(item is not None and item[:2] == (b"value", 0) for item in held.values())
        # the new leader serves the other follower over TLS
        (other,) = [n for n in followers if n is not new]
        with wire.connect(new) as sock:
            sock.sendall(b"set after 0 0 1\r\nx\r\n")
            assert wire.read_until(sock, b"\r\n", timeout=10) == b"STORED\r\n"
        replicas.wait_identical(new, other, [*KEYS, b"after"], 10.0)
        print(f"\npeer TLS 1x3: {len(KEYS)} acknowledged keys all on the new leader, elected "
              f"{took:.1f} s after kill -9")


def test_followers_without_a_certificate_of_their_own_are_refused_before_any_data(
        etcd: EtcdProcess, private_ca: CertificateAuthority, tmp_path: Path) -> None:
    with tls_shard(etcd, private_ca, 2) as (shard, leader, (follower,)):
        view = trio.run(shard.view)
        peer, epoch = leader_peer(view), view.shards[SHARD].epoch
        real = shard.current(view, node_id(follower))
        isr = shard.isr(view)
        ca = str(private_ca.cert)
        stranger_ca = CertificateAuthority.create(tmp_path / "stranger-ca")
        stranger = stranger_ca.issue(real.node_id)  # the follower's name, the wrong CA
        other = private_ca.issue("intruder")  # a valid certificate of another node
        refusals = 0
        # (1) a certificate from another CA, naming the real follower
        for context in (tls_context(ca, str(stranger.cert), str(stranger.key)),
                        tls_context(ca)):  # (2) no certificate at all
            with contextlib.suppress(ssl.SSLError, ConnectionResetError), \
                    connect(peer, context) as sock:
                received, ending = plaintext_until_close(sock)
                assert received == b"", received[:200]
                print(f"\nrefused at the TLS handshake: {ending}")
            refusals += 1
        # (3) a valid certificate of another node, saying HELLO as the real follower
        sock, challenge = handshake(peer, real.node_id, real.lease_id,
                                    context=tls_context(ca, str(other.cert), str(other.key)))
        with sock:
            rest, _ = plaintext_until_close(sock)
        assert challenge == encode(Challenge(challenge[7:]))  # CHALLENGE, through TLS
        assert rest == encode(Error(ErrorCode.WRONG_IDENTITY, epoch,
                                    "the certificate does not name this node id")), rest[:200]
        refusals += 1
        # (4) a plain-text client: neither CHALLENGE nor anything else in clear
        with socket.create_connection(peer, timeout=5) as plain:
            plain.sendall(b"version\r\n")
            plain.settimeout(5)
            received = b""
            with contextlib.suppress(ConnectionResetError):
                while data := plain.recv(65536):
                    received += data
        assert not received or received[:1] == b"\x15", received[:200]  # a TLS alert at most
        refusals += 1
        wait_for(lambda: int(wire.stats(leader)["memring_repl_peers_refused"]) >= refusals,
                 5.0, "the refusals counted")
        assert int(wire.stats(leader)["memring_repl_peers_refused"]) == refusals
        log = leader.log_text()  # the first refusal (then every 100th: rate-limited)
        assert "certificate verify failed: unable to get local issuer certificate" in log
        assert "TLS handshake with 127.0.0.1:" in log
        assert shard.isr(trio.run(shard.view)) == isr
        assert wire.stats(leader)["memring_repl_followers"] == "1"


@pytest.mark.parametrize("stranger", ["another CA", "another node's certificate"])
def test_a_registered_member_with_the_wrong_certificate_never_enters_the_isr(
        etcd: EtcdProcess, private_ca: CertificateAuthority, tmp_path: Path,
        stranger: str) -> None:
    """A real backend, registered in etcd as a member of the shard (the etcd checks pass):
    its certificate alone keeps it out."""
    with tls_shard(etcd, private_ca, 2) as (shard, leader, (follower,)):
        port = servers.free_port()
        if stranger == "another CA":
            other_ca = CertificateAuthority.create(tmp_path / "other-ca")
            shard.peer_credential = other_ca.issue(f"{servers.HOST}:{port}")
        else:
            shard.peer_credential = private_ca.issue("someone-else")
        intruder = shard.start(port)
        shard.peer_credential = None
        wait_for(lambda: node_id(intruder) in trio.run(shard.view).nodes, 10.0,
                 "the intruder registered")
        time.sleep(1.5)  # several attempts
        view = trio.run(shard.view)
        assert shard.isr(view) == {node_id(leader), node_id(follower)}
        replicas.assert_holds_nothing(intruder, KEYS[:5])
        stats = wire.stats(leader)
        assert stats["memring_repl_followers"] == "1"
        assert int(stats["memring_repl_peers_refused"]) >= 1
        expected = "TLS handshake with" if stranger == "another CA" else \
            "its certificate names someone-else"
        assert expected in leader.log_text()
        print(f"\n{stranger}: refused {stats['memring_repl_peers_refused']} times, "
              f"never in the ISR")


def test_a_follower_refuses_a_leader_whose_certificate_names_another_node(
        etcd: EtcdProcess, private_ca: CertificateAuthority) -> None:
    with tls_shard(etcd, private_ca, 2) as (shard, _, (follower,)):
        view = trio.run(shard.view)
        shard_view = view.shards[SHARD]
        assert shard_view.leader is not None
        leader_key = shard_view.leader
        before = replicas.dump(follower, KEYS)
        snapshots = wire.stats(follower)["memring_repl_snapshots_received"]
        impostor = private_ca.issue("impostor")  # valid, from the cluster's CA
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(impostor.cert), str(impostor.key))
        fake = FakeLeader((leader_key.node_id, leader_key.lease_id, shard_view.epoch),
                          context)
        fake.start()
        try:
            forge_leader_address(shard.etcd.url, shard.cluster, view, leader_key, fake.address)
            wait_for(lambda: any(isinstance(e, Error) for e in fake.received), 5.0,
                     "the follower's refusal of the fake leader")
            time.sleep(0.5)
        finally:
            fake.stop()
        errors = [e for e in fake.received if isinstance(e, Error)]
        assert errors and {e.code for e in errors} == {ErrorCode.WRONG_IDENTITY}, errors
        assert "the certificate names impostor" in errors[0].message
        assert replicas.dump(follower, KEYS) == before
        assert replicas.dump(follower, [b"planted"]) == {b"planted": None}
        stats = wire.stats(follower)
        assert stats["memring_repl_snapshots_received"] == snapshots
        assert int(stats["memring_repl_leaders_refused"]) == len(errors)
        print(f"\nfake leader with another node's certificate: {len(errors)} connection(s) "
              f"refused with WRONG_IDENTITY; the follower's {len(KEYS)} keys kept")


def test_silent_connections_are_closed_in_2_s_and_never_lock_a_follower_out(
        etcd: EtcdProcess, private_ca: CertificateAuthority) -> None:
    """A connection that never starts its TLS handshake is closed after the peer handshake's
    2 s (not the client listeners' 10 s), sent nothing; 80 of them, reopened as they close,
    do not keep a restarting follower out (the pending cap covers the TLS handshake)."""
    with tls_shard(etcd, private_ca, 2) as (shard, leader, (follower,)):
        peer = leader_peer(trio.run(shard.view))
        with socket.create_connection(peer, timeout=5) as sock:
            started = time.monotonic()
            received = received_until_close(sock)
            took = time.monotonic() - started
        assert received == b"" and 1.8 < took < 3.5, (received[:100], took)
        assert "no handshake within 2 s" in leader.log_text()
        with silent_crowd(peer, 80) as crowd:
            time.sleep(0.5)
            servers.stop(follower.process)
            started = time.monotonic()
            shard.start(follower.port)
            trio.run(wait_in_sync, shard, 10.0)
            took = time.monotonic() - started
        print(f"\nsilent TLS peer closed after 2 s; with 80 silent connections ({crowd.closed} "
              f"closed by the leader) the restarted follower was in sync {took:.1f} s after "
              f"its start")


def test_a_secret_still_counts_inside_tls_and_sighup_reloads_the_certificates(
        etcd: EtcdProcess, tmp_path: Path) -> None:
    """Defence in depth: with TLS and a peer secret, a member with a valid certificate of its
    own but not the secret is refused (wrong proof) and stays out of the ISR. SIGHUP reads the
    peer certificate files again: a broken file keeps the old contexts, a renewed certificate
    is taken, and followers connect with it."""
    ca = CertificateAuthority.create(tmp_path / "ca")  # this test rewrites node certificates
    with tls_shard(etcd, ca, 2, peer_secret_in(tmp_path)) as (shard, leader, (follower,)):
        assert wire.stats(leader)["memring_repl_peer_auth"] == "secret"
        right = shard.peer_secret_file
        shard.peer_secret_file = peer_secret_in(tmp_path)  # another secret
        stranger = shard.start()  # its own valid certificate, naming its node id
        shard.peer_secret_file = right
        time.sleep(1.5)
        assert shard.isr(trio.run(shard.view)) == {node_id(leader), node_id(follower)}
        replicas.assert_holds_nothing(stranger, KEYS[:5])
        assert "wrong proof (not the peer secret)" in leader.log_text()
        servers.stop(stranger.process)
        # a renewal gone wrong: the certificate file is not a certificate
        credential = Path(f"{ca.directory}/{node_id(leader)}.crt")
        good = credential.read_bytes()
        credential.write_text("not a certificate\n")
        leader.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "peer TLS certificates not reloaded" in leader.log_text(), 5.0,
                 "the failed reload logged")
        credential.write_bytes(good)
        ca.issue(node_id(leader))  # renewed: a new key and certificate, same name
        leader.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "peer TLS certificates reloaded from" in leader.log_text(), 5.0,
                 "the reload logged")
        servers.stop(follower.process)  # its next connection meets the renewed certificate
        restarted = shard.start(follower.port)
        trio.run(wait_in_sync, shard, 10.0)
        with wire.connect(leader) as sock:
            sock.sendall(b"set renewed 0 0 1\r\nx\r\n")
            assert wire.read_until(sock, b"\r\n", timeout=10) == b"STORED\r\n"
        replicas.wait_identical(leader, restarted, [*KEYS, b"renewed"], 10.0)
