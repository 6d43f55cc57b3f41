"""TLS from the client's side, for tests of the servers' TLS listeners: contexts over the
session's private CA, a readiness probe and one-shot conversations over TLS."""

from __future__ import annotations

import shutil
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

from memring.cluster.certificates import CertificateAuthority, Credential

HOST = "127.0.0.1"


def client_context(ca: Path | str, cert: Credential | None = None) -> ssl.SSLContext:
    """Trusts `ca` (and checks the host name); presents `cert` when given."""
    context = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


def server_flags(credential: Credential, *extra: str) -> list[str]:
    return ["--tls-cert", str(credential.cert), "--tls-key", str(credential.key), *extra]


def memcached_flags(credential: Credential, *options: str) -> list[str]:
    """memcached -Z with the same files (its -o ssl_* options)."""
    return ["-Z", "-o", ",".join([f"ssl_chain_cert={credential.cert}",
                                  f"ssl_key={credential.key}", *options])]


def connect(port: int, context: ssl.SSLContext, timeout: float = 5.0) -> ssl.SSLSocket:
    sock = socket.create_connection((HOST, port), timeout=timeout)
    try:
        return context.wrap_socket(sock, server_hostname=HOST)
    except BaseException:
        sock.close()
        raise


def exchange(port: int, context: ssl.SSLContext, request: bytes, end: bytes = b"\r\n",
             timeout: float = 5.0) -> bytes:
    """Send `request` over a new TLS connection and read until the reply ends with `end`."""
    with connect(port, context, timeout) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(end):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
        return reply


def stats(port: int, context: ssl.SSLContext, args: bytes = b"") -> dict[str, str]:
    reply = exchange(port, context, b"stats" + (b" " + args if args else b"") + b"\r\n",
                     b"END\r\n")
    pairs = (line.split(" ", 2)[1:] for line in reply.decode().split("\r\n")
             if line.startswith("STAT "))
    return {name: value for name, value in pairs}


def answers_version_over(context: ssl.SSLContext) -> Callable[[int], bool]:
    """A readiness probe for `servers.running` on a TLS port."""
    def ready(port: int) -> bool:
        try:
            return exchange(port, context, b"version\r\n", timeout=0.5).startswith(b"VERSION ")
        except OSError:
            return False
    return ready


def peer_serial(port: int, context: ssl.SSLContext) -> str:
    """The serial number of the certificate a new connection is shown."""
    with connect(port, context) as sock:
        cert = sock.getpeercert()
        assert cert is not None
        return str(cert["serialNumber"])


def replace_files(target: Credential, source: Credential) -> None:
    """Overwrite `target`'s certificate and key with `source`'s (a renewal in place)."""
    shutil.copyfile(source.cert, target.cert)
    shutil.copyfile(source.key, target.key)


def credential_copy(ca: CertificateAuthority, name: str, directory: Path, **issue: object
                    ) -> Credential:
    """A certificate for `name` whose files live in `directory` (tests may overwrite them)."""
    issued = ca.issue(name, **issue)  # type: ignore[arg-type]
    directory.mkdir(parents=True, exist_ok=True)
    copy = Credential(directory / f"{name}.crt", directory / f"{name}.key", issued.ca)
    replace_files(copy, issued)
    return copy
