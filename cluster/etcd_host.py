"""What an EtcdCoordinator lends the lease and watch calls it owns.

Theory of operation. cluster.etcd_leases and cluster.etcd_watches are parts of one
EtcdCoordinator (cluster.etcd_coordinator), kept apart for size. They take what they share
with its other calls through one narrow protocol, `EtcdHost`: the endpoints and the current
one with its fail-over, the token and its renewal, gRPC stubs and the error mapping.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from memring.cluster.coordinator import AccessDenied, CoordinatorError
from memring.cluster.etcd_security import EtcdSecurity

if TYPE_CHECKING:
    from memring.cluster.etcd_leases import EtcdLeases


class EtcdHost(Protocol):
    """What the lease and watch calls take from their EtcdCoordinator."""

    endpoints: list[str]
    security: EtcdSecurity
    call_timeout: float
    attempt_timeout: float
    scheme: str
    leases: EtcdLeases
    _current: int
    _closed: bool
    _token: str
    _token_generation: int
    _grpc_calls: int  # in flight on the gRPC channels (a gRPC watch is one)
    _grpc_used: float

    @property
    def url(self) -> str: ...
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
