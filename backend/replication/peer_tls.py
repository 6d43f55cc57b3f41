"""Mutual TLS on the replication peer link, and the identity a certificate binds (issue 13).

Theory of operation: with `--peer-tls` the peer port serves TLS and followers dial it with
TLS; both ends present a certificate from the cluster's CA (`--peer-tls-cert/-key/-ca`, by
default the client listener's `--tls-cert/-key/-ca`, so one node certificate serves both).
The leader requires a follower certificate and the follower verifies the leader's chain.
Neither checks a host name: what a peer claims to be is its node id (in HELLO, or the leader
record etcd names), and its certificate must name that node id as its common name or as a
DNS subject alternative name (`certifies`). A host name check would add nothing: the address
a follower dials comes from the same etcd record as the node id, every member of a machine
shares its address, and a certificate naming the node id ties it to one member where an
address cannot. A certificate of another member (a valid one from the same CA) is refused
with ERROR WRONG_IDENTITY after the TLS handshake and before any data.

`PeerTls` holds both contexts, built once from the files and rebuilt by `reload()` (SIGHUP),
which keeps the old ones when the new files do not load: connections made after it use the
new certificates, the ones established keep theirs. The replication frames then travel
through the connection's `netio.streams` stream, plain or TLS; the HMAC handshake of
`peer_auth` still runs inside TLS when a peer secret is configured (defence in depth).
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass

from memring.netio.tls import TlsConfigError, TlsSettings, client_context, server_context

log = logging.getLogger("memring.backend.replication")


@dataclass(frozen=True)
class PeerTlsFiles:
    """The peer link's certificate chain, key and CA (PEM files)."""

    cert: str
    key: str
    ca: str

    def settings(self) -> TlsSettings:
        return TlsSettings(cert=self.cert, key=self.key, ca=self.ca, verify="require")


def _contexts(files: PeerTlsFiles) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(the peer port's context, the follower's), both requiring the other's certificate."""
    if not files.cert:
        raise TlsConfigError("peer TLS needs this node's certificate (--peer-tls-cert or "
                             "--tls-cert)")
    if not files.ca:
        raise TlsConfigError("peer TLS needs a CA file (--peer-tls-ca or --tls-ca)")
    settings = files.settings()
    server = server_context(settings)  # verify=require: no follower without a certificate
    client = client_context(settings)
    # the chain is verified against the CA; the identity is the node id (`certifies`)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_REQUIRED
    return server, client


class PeerTls:
    """The contexts of both ends of this node's peer links."""

    def __init__(self, files: PeerTlsFiles) -> None:
        self.files = files
        self.server, self.client = _contexts(files)

    def reload(self) -> str | None:
        """Read the files again; None when the new contexts are in place, else why not (the
        old ones stay)."""
        try:
            self.server, self.client = _contexts(self.files)
        except TlsConfigError as exc:
            log.error("peer TLS certificates not reloaded, the previous ones stay: %s", exc)
            return str(exc)
        log.info("peer TLS certificates reloaded from %s", self.files.cert)
        return None


def names(certificate: dict[str, object] | None) -> list[str]:
    """The common names and DNS alternative names of a peer's (verified) certificate."""
    if not certificate:
        return []
    found: list[str] = []
    subject = certificate.get("subject", ())
    for rdn in subject if isinstance(subject, tuple) else ():
        found += [value for name, value in rdn if name == "commonName"]
    alt = certificate.get("subjectAltName", ())
    found += [value for kind, value in (alt if isinstance(alt, tuple) else ()) if kind == "DNS"]
    return found


def certifies(certificate: dict[str, object] | None, node_id: str) -> bool:
    """Whether the certificate names `node_id` (its common name or a DNS alternative name)."""
    return bool(node_id) and node_id in names(certificate)


def described(certificate: dict[str, object] | None) -> str:
    """What a refusal says the certificate names."""
    found = names(certificate)
    return ", ".join(found) if found else "no name"
