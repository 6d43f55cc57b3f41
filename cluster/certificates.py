"""A private certificate authority and the certificates a secure cluster needs.

Why the `openssl` program: the standard library's `ssl` verifies certificates but cannot make
them, and the `cryptography` package would be a dependency for what one program (on every
Debian machine, installed by `make debian-deps`) already does. Keys are P-256 (EC): making
one takes milliseconds, where RSA-2048 takes a noticeable fraction of a second each.

Every certificate this authority issues serves both ends (extendedKeyUsage serverAuth and
clientAuth): a backend presents the same one to its clients and, as a follower, to its
leader; the proxy presents its own to the backends. The subject's common name is the
identity a peer checks (a node id, "proxy", an etcd member's name); the alternative names are
the hosts it is reached on.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DAYS = 825  # the longest validity browsers accept for a server certificate
CURVE = "prime256v1"


class CertificateError(Exception):
    """openssl is missing or failed; the message says what to do."""


@dataclass(frozen=True)
class Credential:
    """A certificate (PEM), the key that goes with it, and the CA that signed it."""

    cert: Path
    key: Path
    ca: Path


def _openssl(*args: str, stdin: bytes | None = None) -> bytes:
    program = shutil.which("openssl")
    if program is None:
        raise CertificateError("the openssl program is missing: apt-get install -y openssl")
    done = subprocess.run([program, *args], input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise CertificateError(f"openssl {args[0]} failed: "
                               f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _alt_names(hosts: Iterable[str]) -> str:
    names = []
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            names.append(f"DNS:{host}")
        else:
            names.append(f"IP:{host}")
    return ",".join(names)


class CertificateAuthority:
    """`ca.crt` and `ca.key` in `directory`; `issue()` writes NAME.crt and NAME.key there."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.cert = self.directory / "ca.crt"
        self.key = self.directory / "ca.key"

    @classmethod
    def create(cls, directory: Path | str, name: str = "memring private CA",
               days: int = DEFAULT_DAYS) -> CertificateAuthority:
        """A new authority in `directory` (made if missing); an existing one is kept."""
        self = cls(Path(directory))
        if self.cert.exists() and self.key.exists():
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{CURVE}",
                 "-nodes", "-keyout", str(self.key), "-out", str(self.cert),
                 "-days", str(days), "-subj", f"/CN={name}",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        os.chmod(self.key, 0o600)
        return self

    def issue(self, name: str, hosts: Iterable[str] = ("127.0.0.1", "localhost"),
              days: int = DEFAULT_DAYS, *, common_name: bool = True) -> Credential:
        """A certificate for `name` (its common name; without `common_name`, its
        organization: etcd's JSON gateway refuses client certificates with a common name),
        valid for `hosts`, for `days` from now (a negative count makes one that has already
        expired, for tests)."""
        cert = self.directory / f"{name}.crt"
        key = self.directory / f"{name}.key"
        request = _openssl("req", "-new", "-newkey", "ec", "-pkeyopt",
                           f"ec_paramgen_curve:{CURVE}", "-nodes", "-keyout", str(key),
                           "-subj", f"/CN={name}" if common_name else f"/O={name}")
        os.chmod(key, 0o600)
        extensions = ["basicConstraints=CA:FALSE",
                      "keyUsage=critical,digitalSignature,keyEncipherment",
                      "extendedKeyUsage=serverAuth,clientAuth"]
        alt_names = _alt_names(hosts)
        if alt_names:
            extensions.append(f"subjectAltName={alt_names}")
        with tempfile.NamedTemporaryFile("w", suffix=".cnf") as extfile:
            extfile.write("\n".join(extensions) + "\n")
            extfile.flush()
            _openssl("x509", "-req", "-CA", str(self.cert), "-CAkey", str(self.key),
                     "-set_serial", str(secrets.randbits(63)), "-days", str(days),
                     "-extfile", extfile.name, "-out", str(cert), stdin=request)
        return Credential(cert, key, self.cert)
