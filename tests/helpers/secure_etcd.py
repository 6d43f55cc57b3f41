"""A real etcd secured as a deployment should run it: TLS for clients and peers with client
certificates required (`--client-cert-auth`), authentication on, and a `memring` user whose
role covers only the key prefixes given. `SecureEtcd.security` is what memring's processes
are given; `flags()` the same as argv.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from memring.cluster.certificates import CertificateAuthority, Credential
from memring.cluster.etcd_process import EtcdProcess, EtcdUsers, enable_auth, running_etcd
from memring.cluster.etcd_security import EtcdSecurity

# memring's client certificate's common name (with the member's port: each etcd started from
# the session's CA gets its own files): no etcd user has it (a certificate whose common name
# is a user's logs in as that user without a password)
CLIENT_NAME = "memring-etcd-client"


@dataclass(frozen=True)
class SecureEtcd:
    member: EtcdProcess
    users: EtcdUsers
    ca: CertificateAuthority
    client: Credential

    @property
    def url(self) -> str:
        return self.member.url

    @property
    def security(self) -> EtcdSecurity:
        return EtcdSecurity(str(self.client.ca), str(self.client.cert), str(self.client.key),
                            self.users.user, str(self.users.password_file))

    def flags(self) -> list[str]:
        return ["--etcd", self.url, *self.security.argv()]


@contextlib.contextmanager
def secure_etcd(ca: CertificateAuthority, prefix: str, *more_prefixes: str,
                auth_token_ttl: int | None = None) -> Iterator[SecureEtcd]:
    """One member with TLS and auth for the block; `memring` may use the prefixes given."""
    with running_etcd(ca=ca, auth_token_ttl=auth_token_ttl) as member:
        users = enable_auth(member, prefix, *more_prefixes)
        yield SecureEtcd(member, users, ca, ca.issue(f"{CLIENT_NAME}-{member.client_port}"))
