"""Peer TLS (issue 13): the flags and their defaults, and what a certificate names. The
handshakes over real processes are in tests/integration/test_peer_tls.py."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from memring.backend.replication.peer_tls import PeerTls, PeerTlsFiles, certifies, names
from memring.backend.settings import load_settings
from memring.cluster.certificates import CertificateAuthority, Credential
from memring.netio.settings import SettingsError
from memring.netio.streams import TlsStream

pytestmark = pytest.mark.unit

CLUSTER = ["--etcd", "http://127.0.0.1:2379", "--shard", "s1", "--peer-listen",
           "127.0.0.1:0"]


def test_the_peer_files_default_to_the_client_listeners(private_ca: CertificateAuthority,
                                                        tmp_path: Path) -> None:
    node = private_ca.issue("n1")
    other = private_ca.issue("n1-peer")
    client = ["--tls-cert", str(node.cert), "--tls-key", str(node.key), "--tls-ca",
              str(node.ca)]
    settings = load_settings([*CLUSTER, "--peer-tls", *client])
    assert settings.peer_tls_files == PeerTlsFiles(str(node.cert), str(node.key), str(node.ca))
    # its own certificate: not the client listener's key with it
    settings = load_settings([*CLUSTER, "--peer-tls", *client, "--peer-tls-cert",
                              str(other.cert), "--peer-tls-key", str(other.key)])
    assert settings.peer_tls_files == PeerTlsFiles(str(other.cert), str(other.key),
                                                   str(node.ca))
    assert not load_settings([*CLUSTER, *client]).peer_tls


@pytest.mark.parametrize(("flags", "message"), [
    (["--peer-tls"], "peer TLS needs this node's certificate"),
    (["--peer-tls", "--peer-tls-cert", "{cert}", "--peer-tls-key", "{key}"],
     "peer TLS needs a CA file"),
    (["--peer-tls-ca", "{ca}"], "need --peer-tls"),
    (["--peer-tls", "--peer-tls-cert", "{cert}", "--peer-tls-key", "{ca}", "--peer-tls-ca",
      "{ca}"], "Error loading the key"),
])
def test_bad_peer_tls_flags_are_bad_usage(flags: list[str], message: str,
                                          private_ca: CertificateAuthority) -> None:
    node = private_ca.issue("n1")
    files = {"cert": str(node.cert), "key": str(node.key), "ca": str(node.ca)}
    with pytest.raises(SettingsError, match=message):
        load_settings([*CLUSTER, *(f.format(**files) for f in flags)])


def test_environment_and_file(private_ca: CertificateAuthority, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    node = private_ca.issue("n1")
    config = tmp_path / "memring.toml"
    config.write_text(f'[backend]\npeer_tls_cert = "{node.cert}"\npeer_tls_key = '
                      f'"{node.key}"\npeer_tls_ca = "{node.ca}"\n')
    monkeypatch.setenv("MEMRING_PEER_TLS", "yes")
    settings = load_settings([*CLUSTER, "--config", str(config)])
    assert settings.peer_tls and settings.peer_tls_files.cert == str(node.cert)


def test_the_group_sits_before_etcd_security() -> None:
    text = subprocess.run([sys.executable, "-m", "memring.backend", "--help"],
                          capture_output=True, text=True, timeout=30, check=True).stdout
    assert text.index("peer TLS:") < text.index("etcd security:")
    assert text.index("\nTLS:") < text.index("peer TLS:")


def test_names_are_the_common_name_and_dns_alternative_names(
        private_ca: CertificateAuthority) -> None:
    certificate: dict[str, object] = {
        "subject": ((("organizationName", "x"),), (("commonName", "127.0.0.1:7001"),)),
        "subjectAltName": (("DNS", "node-a"), ("IP Address", "127.0.0.1"))}
    assert names(certificate) == ["127.0.0.1:7001", "node-a"]
    assert certifies(certificate, "127.0.0.1:7001") and certifies(certificate, "node-a")
    assert not certifies(certificate, "127.0.0.1")  # an IP alternative name is a host
    assert not certifies(certificate, "") and not certifies(None, "node-a")
    assert not certifies({}, "node-a")


async def test_both_ends_verify_each_other_and_see_the_node_ids(
        private_ca: CertificateAuthority, tmp_path: Path) -> None:
    """The leader's and the follower's contexts over a socket pair: each sees the other's
    node id; a follower certificate from another CA fails the leader's handshake."""
    def peer_tls(credential: Credential) -> PeerTls:
        return PeerTls(PeerTlsFiles(str(credential.cert), str(credential.key),
                                    str(credential.ca)))

    leader = peer_tls(private_ca.issue("leader-node", hosts=()))
    follower = peer_tls(private_ca.issue("follower-node"))
    stranger = peer_tls(CertificateAuthority.create(tmp_path / "other-ca").issue("follower-node"))

    async def pair(client: PeerTls) -> tuple[TlsStream, TlsStream, list[BaseException]]:
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        server = TlsStream(a, leader.server, server_side=True)
        follower_end = TlsStream(b, client.client, server_side=False)
        errors: list[BaseException] = []

        async def shake(stream: TlsStream) -> None:
            try:
                await stream.handshake()
            except (ssl.SSLError, EOFError, OSError) as exc:
                errors.append(exc)
                stream.sock.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(shake, server)
            nursery.start_soon(shake, follower_end)
        return server, follower_end, errors

    with trio.fail_after(5):
        server, client, errors = await pair(follower)
        assert not errors
        assert names(server.peer_certificate) == ["follower-node", "localhost"]
        assert certifies(client.peer_certificate, "leader-node")  # no host name checked
        server, client, errors = await pair(stranger)
        assert errors
