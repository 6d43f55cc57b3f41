"""The files of a secure local cluster (`memring up --secure`): its CA, certificates, users.

Why a CA of its own, apart from etcd's: with --client-cert-auth etcd takes a client
certificate's common name for a user name, so a node certificate named like an etcd user
would log in as it; no certificate of this CA is trusted by etcd. Every certificate names
127.0.0.1 and localhost (a local cluster) and serves both ends (cluster.certificates): a
backend shows its own to its clients and, asking its shard's members for `stats`, to them.
"""

from __future__ import annotations

import os
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

from memring.cluster.certificates import CertificateAuthority, Credential
from memring.cluster.etcd_process import HOST

TOOLS_CERT = "memring-tools"  # the cluster CA's certificate for memring up and status
SECURE_USER = "memring"  # the user of the auth file `memring up --secure` writes
SECURE_HOSTS = (HOST, "localhost")  # what every certificate of a local cluster names


def write_auth_file(path: Path, user: str = SECURE_USER) -> None:
    """memcached's auth file with one user and a new random password, readable by its owner
    only; FileExistsError if present."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(f"{user}:{secrets.token_urlsafe(24)}\n")


@dataclass(frozen=True)
class ClusterTls:
    """The cluster CA's files `memring up --secure` made: one credential per node id and
    proxy name, and memring's own tools'."""

    ca: Path
    credentials: dict[str, Credential]

    @classmethod
    def create(cls, directory: Path, names: list[str]) -> ClusterTls:
        authority = CertificateAuthority.create(directory, "memring cluster CA")
        return cls(authority.cert, {name: authority.issue(name, SECURE_HOSTS)
                                    for name in [*names, TOOLS_CERT]})

    @property
    def tools(self) -> Credential:
        return self.credentials[TOOLS_CERT]

    def server_flags(self, name: str, verify: str) -> list[str]:
        """A node's or proxy's --tls flags: its own certificate on its client port."""
        own = self.credentials[name]
        return ["--tls", "--tls-cert", str(own.cert), "--tls-key", str(own.key),
                "--tls-ca", str(self.ca), "--tls-verify", verify]

    def backend_link_flags(self, name: str) -> list[str]:
        own = self.credentials[name]
        return ["--backend-tls", "--backend-tls-ca", str(self.ca), "--backend-tls-cert",
                str(own.cert), "--backend-tls-key", str(own.key)]

    def tools_context(self) -> ssl.SSLContext:
        """What memring's tools connect with: verify the server, show the tools' certificate."""
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.tools.cert), str(self.tools.key))
        return context
