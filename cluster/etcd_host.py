"""What an EtcdCoordinator lends the lease and watch calls it owns.

Theory of operation. cluster.etcd_leases and cluster.etcd_watches are parts of one
EtcdCoordinator (cluster.etcd_coordinator), kept apart for size. They take what they share
with its other calls through one narrow protocol, `EtcdHost`: the endpoints and the current
one with its fail-over, the token and its renewal, gRPC stubs, the error mapping, and
`grpc_call()` around every gRPC call or stream (an idle coordinator closes its channels).
What only they share, etcd's JSON gateway, is one `GatewayAccess` the host holds: the TLS
context of its connections, whether the members' gateway takes our client certificate, and
the error for a TLS handshake it refused.
"""

from __future__ import annotations

import ssl
from contextlib import AbstractContextManager
from typing import Any, Protocol

from memring.cluster.coordinator import AccessDenied, CoordinatorError
from memring.cluster.etcd_gateway import GatewayUnreachable, tls_context
from memring.cluster.etcd_security import EtcdSecurity


class GatewayAccess:
    """etcd's JSON gateway as the lease and watch calls share it (`EtcdHost.gateway`)."""

    def __init__(self, scheme: str, security: EtcdSecurity) -> None:
        self._scheme = scheme
        self._security = security
        self._tls: ssl.SSLContext | None = None  # made at the first https:// connection
        # etcd 3.4's gateway refuses every client certificate that has a common name
        # (etcd_gateway.CN_REFUSED): then keepalives, and watches, go over gRPC for the
        # process's life; each finds it out on its own first call, watches also from
        # the keepalives
        self.keepalives = True
        self.watches = True

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for https:// endpoints (the gRPC channels' files), else None."""
        if self._scheme == "https" and self._tls is None:
            try:
                self._tls = tls_context(self._security)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise AccessDenied(f"the TLS files for etcd do not load ({exc}): check "
                                   "--etcd-ca, --etcd-cert and --etcd-key") from None
        return self._tls

    @staticmethod
    def tls_refusal(url: str, exc: GatewayUnreachable) -> AccessDenied:
        """The error for a gateway connection whose TLS handshake failed on a certificate
        (`exc.tls_refused`): a setting to fix, never an outage."""
        return AccessDenied(
            f"TLS with etcd at {url} failed ({exc}): check --etcd-ca (the CA that signed "
            "etcd's certificate) and, if etcd runs with --client-cert-auth, --etcd-cert "
            "and --etcd-key")


class EtcdHost(Protocol):
    """What the lease and watch calls take from their EtcdCoordinator."""

    endpoints: list[str]
    security: EtcdSecurity
    call_timeout: float
    attempt_timeout: float
    gateway: GatewayAccess
    _current: int
    _closed: bool
    _token: str
    _token_generation: int

    @property
    def url(self) -> str: ...
    def grpc_call(self) -> AbstractContextManager[None]: ...
    def _url(self, index: int) -> str: ...
    def _metadata(self) -> tuple[tuple[str, str], ...] | None: ...
    def _stub(self, kind: Any) -> tuple[int, Any]: ...
    def _stale_token(self, code: Any, details: str) -> bool: ...
    async def _renew_token(self, generation: int) -> None: ...
    def _refusal(self, url: str, code: Any, details: str) -> AccessDenied | None: ...
    def _fail_over(self, index: int) -> None: ...
    async def _until_moved_from(self, index: int) -> None: ...
    async def _to_answering_leader(self, failed: int, deadline: float) -> None: ...
    def _attempt_wait(self, limit: float, started: float, resends: int,
                      resent: bool) -> float: ...
    def _error(self, index: int, exc: Any, timeout: float, *,
               fail_over: bool = True) -> CoordinatorError: ...
    def _error_of(self, index: int, code: Any, details: str, timeout: float, *,
                  fail_over: bool = True) -> CoordinatorError: ...
    async def _unary(self, kind: Any, method: str, request: Any,
                     timeout: float | None = None, *, resend: bool = False,
                     authenticated: bool = True) -> Any: ...
