"""What an EtcdCoordinator lends the lease and watch calls it owns.

Theory of operation. cluster.etcd_leases and cluster.etcd_watches are parts of one
EtcdCoordinator (cluster.etcd_coordinator), kept apart for size. They take what they share
with its other calls through one narrow protocol, `EtcdHost`: the endpoints and the current
one with its fail-over, the token and its renewal, gRPC stubs, the error mapping, and
`grpc_call()` around every gRPC call or stream (an idle coordinator closes its channels).
All of them are the coordinator's public names (what it alone writes, read-only properties):
no module reaches into another's private ones. What only they share, etcd's JSON gateway, is one `GatewayAccess` the host holds: the TLS
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
    """What the lease and watch calls take from their EtcdCoordinator: its public names,
    no private ones (the state they read is read-only here; the coordinator writes it)."""

    endpoints: list[str]
    security: EtcdSecurity
    call_timeout: float
    attempt_timeout: float
    gateway: GatewayAccess

    @property
    def url(self) -> str: ...
    @property
    def current(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    @property
    def token(self) -> str: ...
    @property
    def authentications(self) -> int: ...
    def grpc_call(self) -> AbstractContextManager[None]: ...
    def url_at(self, index: int) -> str: ...
    def call_metadata(self) -> tuple[tuple[str, str], ...] | None: ...
    def stub(self, kind: Any) -> tuple[int, Any]: ...
    def stale_token(self, code: Any, details: str) -> bool: ...
    async def renew_token(self, generation: int) -> None: ...
    def refusal(self, url: str, code: Any, details: str) -> AccessDenied | None: ...
    def fail_over(self, index: int) -> None: ...
    async def until_moved_from(self, index: int) -> None: ...
    async def to_answering_leader(self, failed: int, deadline: float) -> None: ...
    def attempt_wait(self, limit: float, started: float, resends: int,
                     resent: bool) -> float: ...
    def rpc_error(self, index: int, exc: Any, timeout: float, *,
                  fail_over: bool = True) -> CoordinatorError: ...
    def status_error(self, index: int, code: Any, details: str, timeout: float, *,
                     fail_over: bool = True) -> CoordinatorError: ...
    async def unary(self, kind: Any, method: str, request: Any,
                    timeout: float | None = None, *, resend: bool = False,
                    authenticated: bool = True) -> Any: ...
