"""The private CA's certificates, checked by the standard library's TLS in memory (no sockets):
one it issued passes a mutual handshake, an expired one and one from another CA fail it."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from memring.cluster.certificates import CertificateAuthority, Credential

pytestmark = pytest.mark.unit


def _handshake(server: Credential, client: Credential, trusted_ca: Path) -> None:
    """A mutual TLS handshake between two SSLObjects over memory BIOs; raises SSLError."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(trusted_ca))
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(server.cert, server.key)
    client_ctx = ssl.create_default_context(cafile=str(trusted_ca))
    client_ctx.load_cert_chain(client.cert, client.key)
    pipes = [ssl.MemoryBIO() for _ in range(4)]
    s = server_ctx.wrap_bio(pipes[0], pipes[1], server_side=True)
    c = client_ctx.wrap_bio(pipes[2], pipes[3], server_hostname="127.0.0.1")
    done = {s: False, c: False}
    for _ in range(10):
        for end in (c, s):
            if not done[end]:
                try:
                    end.do_handshake()
                    done[end] = True
                except ssl.SSLWantReadError:
                    pass
        pipes[0].write(pipes[3].read())  # client -> server
        pipes[2].write(pipes[1].read())  # server -> client
        if all(done.values()):
            # TLS 1.3: the server checks the client's certificate after its own handshake
            c.write(b"x")
            pipes[0].write(pipes[3].read())
            assert s.read(1) == b"x"
            return
    raise AssertionError("the handshake did not finish")


def test_issued_certificates_pass_a_mutual_handshake(private_ca: CertificateAuthority) -> None:
    _handshake(private_ca.issue("node-a"), private_ca.issue("proxy"), private_ca.cert)


def test_expired_and_foreign_certificates_fail(private_ca: CertificateAuthority,
                                               tmp_path: Path) -> None:
    good = private_ca.issue("node-b")
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        _handshake(private_ca.issue("old", days=-1), good, private_ca.cert)
    other = CertificateAuthority.create(tmp_path / "other")
    with pytest.raises(ssl.SSLError):
        _handshake(good, other.issue("stranger"), private_ca.cert)


def test_an_existing_authority_is_kept(private_ca: CertificateAuthority) -> None:
    before = private_ca.cert.read_bytes()
    assert CertificateAuthority.create(private_ca.directory).cert.read_bytes() == before
    assert oct(private_ca.key.stat().st_mode & 0o777) == "0o600"
