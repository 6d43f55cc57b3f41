"""TLS settings in memcached's vocabulary, and the contexts built from them.

memcached 1.6's `-Z` options map one to one: ssl_chain_cert -> `cert`, ssl_key -> `key`,
ssl_ca_cert -> `ca`, ssl_verify_mode 0/1/2 -> `verify` none/request/require (memcached's 3,
"once", is "require" here: every handshake verifies), ssl_min_version -> `min_version`
(tlsv1.2 by default, as memcached), ssl_ciphers -> `ciphers`. Contexts are the standard
library's; what a listener hands to new connections lives in a `ServerTls`, whose `reload()`
(SIGHUP, memcached's `refresh_certs`) swaps in a context built from the same files read anew,
and keeps the old one when the new files do not load. memcached 1.6.18 loads the new files
into its live context, so a refresh that fails at the key (a new certificate beside the old
key) leaves it serving a certificate without its key: every handshake fails after that (seen
with Debian's memcached); a whole new context avoids that. A file that does not load is named
in memcached's words ("Error loading the certificate chain: PATH : reason", ... the key, the
CA certificate), which `refresh_certs` answers; OpenSSL's reason is the `ssl` module's
(memcached prints OpenSSL's whole error line, e.g. "error:0480006C:PEM routines::no start
line" where Python says "PEM lib").
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import dataclass

log = logging.getLogger("memring.tls")

VERIFY_MODES = {"none": ssl.CERT_NONE, "request": ssl.CERT_OPTIONAL,
                "require": ssl.CERT_REQUIRED}
# memcached's ssl_min_version takes 0..3 or the names; both are accepted
MIN_VERSIONS = {"tlsv1.0": ssl.TLSVersion.TLSv1, "tlsv1.1": ssl.TLSVersion.TLSv1_1,
                "tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3,
                "0": ssl.TLSVersion.TLSv1, "1": ssl.TLSVersion.TLSv1_1,
                "2": ssl.TLSVersion.TLSv1_2, "3": ssl.TLSVersion.TLSv1_3}


class TlsConfigError(Exception):
    """A certificate, key or CA file does not load, or a setting is not one of ours."""


@dataclass(frozen=True)
class TlsSettings:
    cert: str = ""                # PEM certificate chain (memcached's ssl_chain_cert)
    key: str = ""                 # PEM private key (ssl_key; "" = in the chain file)
    ca: str = ""                  # PEM CA certificates peers are verified against
    verify: str = "none"          # none | request | require: the peer's certificate
    min_version: str = "tlsv1.2"
    ciphers: str = ""             # OpenSSL cipher list for TLS <= 1.2 ("" = OpenSSL's)

    def check(self) -> None:
        """Raise TlsConfigError naming the first bad value."""
        if self.verify not in VERIFY_MODES:
            raise TlsConfigError(f"TLS verify mode must be none, request or require, "
                                 f"not {self.verify!r}")
        if self.min_version.lower() not in MIN_VERSIONS:
            raise TlsConfigError(f"TLS minimum version must be tlsv1.2, tlsv1.3 (or 0-3, "
                                 f"as memcached's ssl_min_version), not {self.min_version!r}")
        if self.verify != "none" and not self.ca:
            raise TlsConfigError("verifying peers' certificates needs a CA file")

    @property
    def version_name(self) -> str:
        """memcached's spelling of ssl_min_version, for `stats settings`."""
        version = self.min_version.lower()
        return f"tlsv1.{version}" if version in "0123" and len(version) == 1 else version

    @property
    def verify_number(self) -> int:
        """memcached's ssl_verify_mode number, for `stats settings`."""
        return list(VERIFY_MODES).index(self.verify)


_SSL_NOISE = re.compile(r"^\[[^\]]*\]\s*|\s*\(_ssl\.c:\d+\)$")


def _reason(exc: Exception) -> str:
    """OpenSSL's or the system's words for why a file did not load."""
    if isinstance(exc, ssl.SSLError):
        if exc.reason:
            return exc.reason.lower().replace("_", " ")
        return _SSL_NOISE.sub("", exc.strerror or str(exc)) or str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _load(context: ssl.SSLContext, settings: TlsSettings) -> ssl.SSLContext:
    settings.check()
    context.minimum_version = MIN_VERSIONS[settings.min_version.lower()]
    if settings.cert:
        try:  # the chain alone first, so that its errors are told from the key's
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=settings.cert)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"Error loading the certificate chain: {settings.cert} : "
                                 f"{_reason(exc)}") from None
        try:
            context.load_cert_chain(settings.cert, settings.key or None)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"Error loading the key: {settings.key or settings.cert} : "
                                 f"{_reason(exc)}") from None
    if settings.ca:
        try:
            context.load_verify_locations(cafile=settings.ca)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"Error loading the CA certificate: {settings.ca} : "
                                 f"{_reason(exc)}") from None
    if settings.ciphers:
        try:
            context.set_ciphers(settings.ciphers)
        except ssl.SSLError:
            raise TlsConfigError(f"Error setting the provided cipher(s) : "
                                 f"{settings.ciphers}") from None
    return context


def handshake_failure(exc: BaseException) -> str:
    """Why a handshake failed, in OpenSSL's words without the ssl module's decorations:
    "certificate verify failed: unable to get local issuer certificate", "peer did not
    return a certificate", "sslv3 alert certificate expired" (the peer refused ours)."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return _SSL_NOISE.sub("", exc.strerror or str(exc)) or str(exc)
    if isinstance(exc, EOFError):
        return "the peer closed the connection during the handshake"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def server_context(settings: TlsSettings) -> ssl.SSLContext:
    """What a TLS listener offers: its certificate, and the client check `verify` asks."""
    if not settings.cert:
        raise TlsConfigError("a TLS listener needs a certificate file (and its key)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.options |= ssl.OP_NO_COMPRESSION
    _load(context, settings)
    context.verify_mode = VERIFY_MODES[settings.verify]
    return context


def client_context(settings: TlsSettings) -> ssl.SSLContext:
    """What a connecting end uses: the server is verified against `ca` (its certificate must
    name the host connected to) unless `verify` is none; `cert` is presented when set."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _load(context, settings)
    if settings.verify == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ServerTls:
    """The context a TLS listener gives new connections, with memcached's TLS counters."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self.context = server_context(settings)
        self.refreshed_at = time.monotonic()
        self.handshake_errors = 0  # memcached's ssl_handshake_errors

    @property
    def time_since_refresh(self) -> int:
        """Seconds since the certificates were last (re)loaded: time_since_server_cert_refresh."""
        return int(time.monotonic() - self.refreshed_at)

    def reload(self) -> str | None:
        """Read the files again; None when the new context is in place, else why not (the old
        one stays)."""
        try:
            self.context = server_context(self.settings)
        except TlsConfigError as exc:
            log.error("TLS certificates not reloaded, the previous ones stay: %s", exc)
            return str(exc)
        self.refreshed_at = time.monotonic()
        log.info("TLS certificates reloaded from %s", self.settings.cert)
        return None
