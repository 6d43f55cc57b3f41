"""What every program's settings share: the bad-usage error and HOST:PORT parsing.

`SettingsError` means bad usage or configuration: each CLI prints its message, which names
the problem, and exits with status 2. An address is `HOST:PORT` (an IPv6 host in
brackets); only an address to *listen* on may leave the host empty, meaning every
interface (`:11211`), as memcached's `-l` allows; an address to connect to must name one.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass

from memring.netio.tls import VERIFY_MODES, TlsConfigError, TlsSettings, server_context

ANY_HOST = "0.0.0.0"


class SettingsError(Exception):
    """Bad usage or configuration; the message names the problem (exit code 2)."""


class Listening:
    """Host and port of a server's settings, read from its `listen` address."""

    listen: str

    @property
    def host(self) -> str:
        return split_address(self.listen, listen=True)[0]

    @property
    def port(self) -> int:
        return split_address(self.listen, listen=True)[1]


def split_address(address: str, *, listen: bool = False) -> tuple[str, int]:
    """(host, port) of `address`; `listen` lets an empty host mean every interface."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if listen and sep and not host:
        host = ANY_HOST
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        example = ":11211 or 127.0.0.1:11211" if listen else "127.0.0.1:11211"
        raise SettingsError(f"bad address {address!r}: expected HOST:PORT, e.g. {example}")
    return host, int(port)


@dataclass(frozen=True)
class TlsListening:
    """The TLS fields of both servers' settings (memcached's -Z options; see netio.tls):
    `tls` makes the main listener TLS, `tls_listen` adds a TLS listener beside a plain one.
    A dataclass base, so they come first among the fields, all with defaults."""

    tls: bool = False                # --listen serves TLS (memcached -Z)
    tls_listen: str = ""             # HOST:PORT of a TLS listener beside a plain --listen
    tls_cert: str = ""               # ssl_chain_cert
    tls_key: str = ""                # ssl_key
    tls_ca: str = ""                 # ssl_ca_cert
    tls_verify: str = "none"         # ssl_verify_mode: none | request | require
    tls_min_version: str = "tlsv1.2"  # ssl_min_version
    tls_ciphers: str = ""            # ssl_ciphers

    @property
    def tls_enabled(self) -> bool:
        return self.tls or bool(self.tls_listen)

    @property
    def tls_settings(self) -> TlsSettings:
        return TlsSettings(cert=self.tls_cert, key=self.tls_key, ca=self.tls_ca,
                           verify=self.tls_verify, min_version=self.tls_min_version,
                           ciphers=self.tls_ciphers)


TLS_FIELDS = ("tls", "tls_listen", "tls_cert", "tls_key", "tls_ca", "tls_verify",
              "tls_min_version", "tls_ciphers")


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """The "TLS" group, last in both servers' --help."""
    group = parser.add_argument_group(
        "TLS", "TLS on the client listeners, in memcached's terms (memcached -Z -o ssl_*); "
        "SIGHUP and the refresh_certs command reload the files")
    group.add_argument("--tls", action="store_true", default=None,
                       help="the --listen port serves TLS only (memcached's -Z)")
    group.add_argument("--tls-listen", metavar="HOST:PORT",
                       help="also serve TLS on this address while --listen stays plain (to "
                       "move clients over; then use --tls); not with --tls")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="PEM certificate chain (memcached's ssl_chain_cert)")
    group.add_argument("--tls-key", metavar="FILE",
                       help="PEM private key (ssl_key; default: in the --tls-cert file)")
    group.add_argument("--tls-ca", metavar="FILE",
                       help="PEM CA certificates client certificates are checked against "
                       "(ssl_ca_cert)")
    group.add_argument("--tls-verify", choices=tuple(VERIFY_MODES),
                       help="client certificates: none (default), request (checked when "
                       "sent) or require (ssl_verify_mode 0, 1, 2)")
    group.add_argument("--tls-min-version",
                       help="oldest TLS version accepted: tlsv1.2 (default) or tlsv1.3 "
                       "(ssl_min_version; 0-3 as memcached)")
    group.add_argument("--tls-ciphers", help="OpenSSL cipher list for TLS 1.2 (ssl_ciphers)")


def check_tls(settings: TlsListening) -> None:
    """SettingsError for TLS flags that do not fit or files that do not load."""
    if settings.tls and settings.tls_listen:
        raise SettingsError("--tls makes --listen serve TLS; --tls-listen adds a TLS port "
                            "beside a plain --listen: give one of them")
    if settings.tls_listen:
        split_address(settings.tls_listen, listen=True)
    if not settings.tls_enabled:
        return
    try:
        server_context(settings.tls_settings)  # loads the files: a bad one stops the start
    except TlsConfigError as exc:
        raise SettingsError(f"TLS: {exc}") from None


def reachable_from_other_machines(host: str) -> bool:
    """Whether a listener on `host` is (anything but a loopback address or its names): a
    plain client or peer port there is worth a warning."""
    if host in ("localhost", "ip6-localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name: whatever it resolves to, it is not ours to assume
