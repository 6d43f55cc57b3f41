"""How memring reaches a secured etcd: TLS files, and a user whose password is in a file.

Every program that takes `--etcd` (the backend, the proxy, `memring`) takes the same "etcd
security" options: `--etcd-ca`, `--etcd-cert`, `--etcd-key`, `--etcd-user` and
`--etcd-password-file` (MEMRING_ETCD_CA, ... and TOML keys `etcd_ca`, ... as their other
settings). A password is never a flag (it would show in `ps`): it is read from its file at
each authentication, so a rotated password is picked up without a restart. No grpc here:
settings check these without loading the etcd client (cluster.etcd_coordinator uses them).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

# the settings' field names, in flag order (`--etcd-ca` ... `--etcd-password-file`)
FIELDS = ("etcd_ca", "etcd_cert", "etcd_key", "etcd_user", "etcd_password_file")


@dataclass(frozen=True)
class EtcdSecurity:
    """TLS files and credentials for etcd; all empty: plain http, no authentication."""

    ca: str = ""             # PEM file of the CA that signed etcd's certificates
    cert: str = ""           # PEM client certificate (etcd's --client-cert-auth)
    key: str = ""            # its private key
    user: str = ""           # etcd user (etcd's Auth API)
    password_file: str = ""  # the user's password, first line of the file

    @classmethod
    def of(cls, settings: object) -> EtcdSecurity:
        """From a settings object with the `etcd_*` fields of FIELDS."""
        return cls(*(str(getattr(settings, name)) for name in FIELDS))

    @property
    def tls_files(self) -> bool:
        return bool(self.ca or self.cert or self.key)

    def password(self) -> str:
        """The first line of the password file; ValueError naming the file if unreadable."""
        try:
            with open(self.password_file) as f:
                line = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"--etcd-password-file {self.password_file}: "
                             f"{exc.strerror}") from None
        if not line:
            raise ValueError(f"--etcd-password-file {self.password_file}: the first line is "
                             "empty (it holds the password of --etcd-user)")
        return line

    def check(self, urls: str | Sequence[str]) -> str:
        """The scheme ("http" or "https") of `urls`; ValueError naming what to fix when the
        URLs mix schemes, TLS files come with http, files are unreadable or half given."""
        scheme = url_scheme(urls)
        if self.tls_files and scheme != "https":
            raise ValueError("--etcd-ca/--etcd-cert/--etcd-key need https:// etcd URLs")
        if bool(self.cert) != bool(self.key):
            raise ValueError("--etcd-cert and --etcd-key go together (a client certificate "
                             "and its key)")
        if bool(self.user) != bool(self.password_file):
            raise ValueError("--etcd-user and --etcd-password-file go together")
        for flag, path in (("--etcd-ca", self.ca), ("--etcd-cert", self.cert),
                           ("--etcd-key", self.key)):
            if path and not os.access(path, os.R_OK):
                raise ValueError(f"{flag} {path}: not a readable file")
        if self.password_file:
            self.password()
        return scheme

    def argv(self) -> list[str]:
        """The flags that pass these options on to a child process (`memring up`)."""
        out = []
        for name, value in zip(FIELDS, (self.ca, self.cert, self.key, self.user,
                                        self.password_file), strict=True):
            if value:
                out += ["--" + name.replace("_", "-"), value]
        return out

    def describe(self) -> str:
        parts = (["TLS"] if self.tls_files else []) + \
            ([f"client certificate {self.cert}"] if self.cert else []) + \
            ([f"user {self.user}"] if self.user else [])
        return ", ".join(parts) or "no TLS files, no user"


def url_scheme(urls: str | Sequence[str]) -> str:
    """The one scheme of etcd `urls` (a bare HOST:PORT is http); ValueError on a mix."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    schemes = {urlsplit(i.strip()).scheme if "://" in i else "http" for i in items if i.strip()}
    if len(schemes) > 1:
        raise ValueError(f"etcd URLs mix {' and '.join(sorted(schemes))}: give every "
                         "member as https:// (TLS) or every one as http://")
    return schemes.pop() if schemes else "http"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The "etcd security" group; each program puts it last among its flags."""
    group = parser.add_argument_group(
        "etcd security", "TLS and authentication towards etcd (docs/operations.md, "
        "'etcd security'); each also as MEMRING_ETCD_CA, ... or a config key etcd_ca, ...")
    group.add_argument("--etcd-ca", metavar="FILE",
                       help="CA certificate (PEM) that signed etcd's; needs https:// URLs")
    group.add_argument("--etcd-cert", metavar="FILE",
                       help="client certificate (PEM) for etcd's --client-cert-auth")
    group.add_argument("--etcd-key", metavar="FILE", help="the client certificate's key (PEM)")
    group.add_argument("--etcd-user", metavar="NAME",
                       help="etcd user to authenticate as (etcd's auth enabled)")
    group.add_argument("--etcd-password-file", metavar="FILE",
                       help="file whose first line is --etcd-user's password (never a flag)")
