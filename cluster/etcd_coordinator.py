"""The Coordinator over a real etcd (v3 gRPC API), driven from trio.

Theory of operation. We use python3-etcd3's generated gRPC stubs (`etcd3.etcdrpc`) and our own
channels rather than its client class: every call then carries its own timeout, a failed
endpoint is retried at once rather than shunned for minutes, and a broken watch stream reports
its error. gRPC is blocking, so each unary call runs in a worker thread via
`trio.to_thread.run_sync(..., abandon_on_cancel=True)`; a cancelled caller returns at once and
the thread ends by its gRPC deadline (trio keeps idle worker threads for reuse, so calls made
more often than every 10 s start no new thread). The lease calls (grant, keepalive, revoke)
live in cluster.etcd_leases, which this coordinator owns (`leases`); keepalives skip gRPC
there: they are POSTs to etcd's JSON gateway over one kept HTTP/1.1 connection on a trio
socket (cluster.etcd_gateway). Watches live in cluster.etcd_watches (`watches`): over the
gateway too, or over gRPC where the gateway refuses our client certificate. So an idle
process makes no gRPC call, and its channels, opened at the first call, are closed after
GRPC_IDLE_CLOSE without one: an open channel alone kept
grpcio's event engine and timer threads waking (docs/scaling.md, round four).

UNAVAILABLE and DEADLINE_EXCEEDED (and a member's own "context deadline exceeded", what a
follower answers when it could not forward to a leader in time) become `CoordinatorUnavailable`
naming the endpoint; with several endpoints the next call goes to the next one, the member that
failed longest ago first. A call that may be sent again (a read, a revocation, the campaign
txn, which re-reads a failed outcome) gives its first endpoint one `ATTEMPT_TIMEOUT`, then goes
to the member that leads etcd and answers (cluster.etcd_leader); once LATE it asks the members'
Status meanwhile and goes there as soon as etcd elected a new leader or its member is silent
(`_watched_attempt`). A watch lives on the current endpoint: when any call moves off that
endpoint the watch ends with WatchMoved and `follow()`
resyncs through the next one at once. A stream on a frozen (SIGSTOPped) member gets no error
of its own, only silence: without this a paused etcd leader froze every watcher's view for as
long as it was paused (measured: a dead memring leader replaced after 7.3 s, when the etcd
member resumed, instead of within a second).

Security (cluster.etcd_security holds the options). `https://` endpoints get a TLS channel
with the given CA and client certificate; a mix of http and https is refused. With a user, the
coordinator calls Auth.Authenticate before its first call and sends the token as the "token"
metadata of every call and watch, and as the Authorization header of every keepalive. etcd 3.4's simple tokens live in the members'
memory: they die after `--auth-token-ttl` seconds unused and with a restart. A call refused
for its token ("invalid auth token", or "revision of auth store is old" when users or roles
changed while it was on its way) is sent again once with a new token, which is safe for a
write: etcd refused it before applying it. A watch whose creation is refused (etcd 3.4 cancels
it saying "invalid auth token" or "permission denied") is created once more after a new
token. What then still fails, a wrong password, a missing permission, a rejected certificate,
is `AccessDenied`, naming the setting to fix; it is never taken for an outage
(`CoordinatorUnavailable`), which callers retry forever.

grpc and etcd3 come from cluster.etcd_grpc, which turns gRPC's fork support off first.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit

import trio

from memring.cluster.coordinator import (
    AccessDenied,
    Coordinator,
    CoordinatorError,
    CoordinatorUnavailable,
    LeaseNotFound,
    WatchStream,
)
from memring.cluster.etcd_grpc import (
    AUTH_FAILED,
    AUTH_NOT_ENABLED,
    INVALID_TOKEN,
    OLD_AUTH_REVISION,
    PERMISSION_DENIED,
    USER_EMPTY,
    entry,
    etcdrpc,
    grpc,
)
from memring.cluster.etcd_grpc import details as _details
from memring.cluster.etcd_host import GatewayAccess
from memring.cluster.etcd_leader import ROUND_TIMEOUT, Status, answering_leader, leader_change
from memring.cluster.etcd_leases import EtcdLeases
from memring.cluster.etcd_security import EtcdSecurity, url_scheme
from memring.cluster.etcd_watches import EtcdWatches, WatchRefused
from memring.cluster.keyspace import (
    Compare,
    Delete,
    Entry,
    Op,
    Put,
    TxnResult,
    prefix_end,
)

T = TypeVar("T")
log = logging.getLogger("memring.cluster")
# After etcd refused our password, the same refusal is raised without asking again for this
# long: each Authenticate costs etcd a bcrypt hash (tens of ms of CPU), and every backend and
# proxy retries its session and watch.
AUTH_REFUSAL_KEPT = 5.0
# The least an Authenticate call waits for its answer (else `call_timeout`, if longer): etcd
# checks the password with a bcrypt hash (cost 10), 65-95 ms of CPU on a quiet machine but a
# median of 475 ms and up to 2 s at load 12 (two busy loops on 2 cores), where the 1 s of other
# calls took a slow answer for an outage: a server's start-up check then let a wrong password
# by (`check_access` logs an outage and goes on), and the CLI failed.
AUTHENTICATE_TIMEOUT = 5.0
# A server's start-up check (`check_access`) asks this many times, CHECK_ACCESS_PAUSE apart,
# before it takes an unavailable etcd for one not up yet: at load 20 a fresh TLS connection
# to etcd was cut short in its handshake ("Handshake read failed") in 2 probes of 40, at
# once, and the check then let a wrong password by.
CHECK_ACCESS_TRIES = 3
CHECK_ACCESS_PAUSE = 0.1
# How long an attempt of a call that may be sent again (`unary(resend=True)`) waits on one
# member while another could answer: a SIGSTOPped etcd leader, and a follower whose request
# was forwarded to it, answer nothing until our deadline, and fast elections (250 ms) seat a
# new leader ~350 ms after the pause (docs/scaling.md). A member slowed by a loaded machine
# costs a spurious resend: once, to etcd's answering leader, with the rest of the timeout.
ATTEMPT_TIMEOUT = 0.25
# An attempt that may be sent again and is still unanswered after this long is late: from
# then on, while it waits, every member's Status is asked in rounds (cluster.etcd_leader
# `leader_change`), and the call goes at once to etcd's new leader if one was elected
# meanwhile or the member waited on is silent. A request that a follower forwarded to a
# frozen leader is lost, so waiting out the attempt after etcd's election only delays it
# (docs/scaling.md, round nine). A call answers in 1-5 ms on a quiet machine.
LATE = 0.05
# After this long without a gRPC call (none open), the channels are closed: an idle process
# makes its keepalives and watches over etcd's gateway, and an open channel alone keeps
# grpcio's threads waking (`_release_idle_channels`).
GRPC_IDLE_CLOSE = 10.0

_TARGETS = {"create": etcdrpc.Compare.CREATE, "mod": etcdrpc.Compare.MOD,
            "version": etcdrpc.Compare.VERSION, "value": etcdrpc.Compare.VALUE}
_OPS = {"==": etcdrpc.Compare.EQUAL, "!=": etcdrpc.Compare.NOT_EQUAL,
        "<": etcdrpc.Compare.LESS, ">": etcdrpc.Compare.GREATER}
_UNAVAILABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# gRPC's details for a call that found its channel not connected and was never sent: safe to
# send again, even a write.
_NOT_CONNECTED = "failed to connect to all addresses"
# Reconnect quickly after etcd restarts (gRPC's default backoff grows to 2 minutes). Each
# channel has its own connection (a local subchannel pool): a channel made anew
# (`_reconnect`) connects at once, where one sharing the old channel's connection would wait
# out its backoff too.
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.enable_retries", 0),
    ("grpc.use_local_subchannel_pool", 1),
]


def parse_endpoints(urls: str | Sequence[str]) -> list[str]:
    """"http://h:p,http://h2:p2" (or a list; bare "h:p" too, meaning http; or every one
    https://) -> ["h:p", "h2:p2"]. A mix of http and https is a ValueError."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    endpoints = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        parts = urlsplit(item if "://" in item else f"http://{item}")
        if parts.scheme not in ("http", "https") or not parts.hostname or not parts.port:
            raise ValueError(f"bad etcd URL {item!r}: expected http://HOST:PORT "
                             "or https://HOST:PORT")
        endpoints.append(f"{parts.hostname}:{parts.port}")
    if not endpoints:
        raise ValueError("no etcd URL given: expected http://HOST:PORT[,...]")
    url_scheme(urls)  # one scheme for all
    return endpoints


def _read_file(flag: str, path: str) -> bytes | None:
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror}") from None


def _channel(endpoint: str, scheme: str, security: EtcdSecurity) -> grpc.Channel:
    if scheme == "http":
        return grpc.insecure_channel(endpoint, options=_CHANNEL_OPTIONS)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read_file("--etcd-ca", security.ca),
        private_key=_read_file("--etcd-key", security.key),
        certificate_chain=_read_file("--etcd-cert", security.cert))
    return grpc.secure_channel(endpoint, credentials, options=_CHANNEL_OPTIONS)


def _request_op(op: Op) -> Any:
    if isinstance(op, Put):
        return etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(
            key=op.key.encode(), value=op.value, lease=op.lease))
    assert isinstance(op, Delete)
    return etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=op.key.encode()))


def _compare(c: Compare) -> Any:
    msg = etcdrpc.Compare(key=c.key.encode(), target=_TARGETS[c.target], result=_OPS[c.op])
    if c.target == "value":
        assert isinstance(c.operand, bytes)
        msg.value = c.operand
    elif c.target == "create":
        msg.create_revision = int(c.operand)
    elif c.target == "mod":
        msg.mod_revision = int(c.operand)
    else:
        msg.version = int(c.operand)
    return msg


class _LeaderChanged(Exception):
    """A late attempt given up: etcd's answering leader is member `index` now."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


class EtcdCoordinator(Coordinator):
    """The Coordinator over etcd. Build with `connect()`; close with `aclose()`."""

    def __init__(self, urls: str | Sequence[str], cluster: str = "memring", *,
                 call_timeout: float = 1.0, root: str = "/memring",
                 security: EtcdSecurity | None = None,
                 attempt_timeout: float = ATTEMPT_TIMEOUT) -> None:
        super().__init__(cluster, call_timeout=call_timeout, root=root)
        self.attempt_timeout = min(attempt_timeout, call_timeout)
        self.endpoints = parse_endpoints(urls)
        self.security = security or EtcdSecurity()
        self.scheme = self.security.check(urls)
        if self.security.user and self.scheme == "http":
            log.warning("etcd user %s authenticates over plain http: its password and "
                        "token cross the network in clear (use https:// URLs)",
                        self.security.user)
        self._channels: list[grpc.Channel | None] = [None] * len(self.endpoints)
        self._retired: list[grpc.Channel] = []  # replaced by `_reconnect`, closed when idle
        self._grpc_calls = 0  # in flight: unary calls and gRPC watches
        self._grpc_used = -math.inf  # trio time the last one ended
        self._token = ""
        self._token_generation = 0  # counts tokens obtained (`authentications`)
        self._token_lock = trio.Lock()
        self._auth_refused: tuple[float, AccessDenied] | None = None  # (when, what)
        self._current = 0
        self._failed_at = [-math.inf] * len(self.endpoints)  # monotonic time of last failure
        self._moved = trio.Event()  # set (and replaced) whenever `_current` changes
        self.gateway = GatewayAccess(self.scheme, self.security)  # what leases and watches share
        self.leases = EtcdLeases(self)
        self.watches = EtcdWatches(self)
        self._closed = False

    @classmethod
    @asynccontextmanager
    async def connect(cls, urls: str | Sequence[str], cluster: str = "memring", *,
                      call_timeout: float = 1.0, probe: bool = True,
                      security: EtcdSecurity | None = None,
                      attempt_timeout: float = ATTEMPT_TIMEOUT
                      ) -> AsyncIterator[EtcdCoordinator]:
        """A coordinator for the block; with `probe`, fail at once if etcd does not answer
        or refuses us (`AccessDenied`)."""
        self = cls(urls, cluster, call_timeout=call_timeout, security=security,
                   attempt_timeout=attempt_timeout)
        try:
            if probe:
                await self.probe()
            yield self
        finally:
            await self.aclose()

    async def probe(self) -> None:
        """Authenticate (with a user) and read the config key: raises CoordinatorUnavailable
        when etcd does not answer, AccessDenied when it refuses us."""
        await self._read(self.keyspace.config())

    async def check_access(self) -> None:
        """For a server starting: with TLS files or a user, probe (up to CHECK_ACCESS_TRIES
        times within AUTHENTICATE_TIMEOUT), so that a wrong setting (AccessDenied) stops it
        at once; an etcd not answering yet is only logged (the server retries, as without
        security)."""
        if self.security == EtcdSecurity():
            return
        started = trio.current_time()
        for tries_left in reversed(range(CHECK_ACCESS_TRIES)):
            try:
                await self.probe()
                return
            except CoordinatorUnavailable as exc:
                if not tries_left or trio.current_time() - started >= AUTHENTICATE_TIMEOUT:
                    log.warning("cannot check the etcd credentials yet: %s", exc)
                    return
            await trio.sleep(CHECK_ACCESS_PAUSE)

    @property
    def authentications(self) -> int:
        """Tokens obtained so far (the first, then one per renewal)."""
        return self._token_generation

    @property
    def endpoint_count(self) -> int:
        return len(self.endpoints)

    @property
    def url(self) -> str:
        return self.url_at(self._current)

    @property
    def current(self) -> int:
        """The endpoint calls go to now (an index of `endpoints`; `fail_over` moves it)."""
        return self._current

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def token(self) -> str:
        """The auth token calls carry ("" before the first, or without a user)."""
        return self._token

    def url_at(self, index: int) -> str:
        return f"{self.scheme}://{self.endpoints[index]}"

    def call_metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("token", self._token),) if self._token else None

    def stale_token(self, code: Any, details: str) -> bool:
        """etcd refused the token we sent (not our user): a new one may pass."""
        return bool(self._token) and (
            (code == grpc.StatusCode.UNAUTHENTICATED and INVALID_TOKEN in details)
            or (code == grpc.StatusCode.INVALID_ARGUMENT and OLD_AUTH_REVISION in details))

    async def renew_token(self, generation: int) -> None:
        """A new token, unless another task got one since `generation` was current."""
        async with self._token_lock:
            if self._token_generation != generation:
                return
            if self._auth_refused is not None:
                when, refusal = self._auth_refused
                if time.monotonic() - when < AUTH_REFUSAL_KEPT:
                    raise AccessDenied(str(refusal))
            try:
                password = self.security.password()
            except ValueError as exc:  # the file went away or was emptied since the start
                raise AccessDenied(str(exc)) from None
            request = etcdrpc.AuthenticateRequest(name=self.security.user, password=password)
            try:
                response = await self.unary(
                    etcdrpc.AuthStub, "Authenticate", request,
                    timeout=max(self.call_timeout, AUTHENTICATE_TIMEOUT), resend=True,
                    authenticated=False)
            except AccessDenied as exc:
                self._auth_refused = (time.monotonic(), exc)
                raise
            self._auth_refused = None
            self._token = str(response.token)
            self._token_generation += 1

    def refusal(self, url: str, code: Any, details: str) -> AccessDenied | None:
        """The AccessDenied for an error that retrying cannot cure, naming what to fix."""
        user = self.security.user
        docs = "docs/operations.md, 'etcd security'"
        # an SSL protocol error, not a handshake cut short ("Handshake read failed (Endpoint
        # closing)" is a member going down: an outage, retried)
        if code == grpc.StatusCode.UNAVAILABLE and "SSL_ERROR_SSL" in details:
            return AccessDenied(
                f"TLS handshake with etcd at {url} failed ({details}): check --etcd-ca (the "
                "CA that signed etcd's certificate) and, if etcd runs with "
                "--client-cert-auth, --etcd-cert and --etcd-key")
        if code == grpc.StatusCode.UNAVAILABLE and "TSI_DATA_CORRUPTED" in details:
            # what gRPC reports when etcd's --client-cert-auth rejects our certificate or
            # its absence (the TLS alert itself only reaches gRPC's own log)
            return AccessDenied(
                f"etcd at {url} rejected our TLS client certificate ({details}): give one "
                "signed by the CA etcd trusts with --etcd-cert and --etcd-key")
        if AUTH_FAILED in details:
            return AccessDenied(
                f"etcd at {url} refused user {user!r}: wrong user name or password; check "
                f"--etcd-user and the first line of --etcd-password-file "
                f"{self.security.password_file}")
        if AUTH_NOT_ENABLED in details:
            return AccessDenied(
                f"etcd at {url} has authentication disabled, yet --etcd-user {user} was "
                f"given: enable it ({docs}) or leave out --etcd-user")
        if USER_EMPTY in details or (PERMISSION_DENIED in details and not user):
            as_cn = (" (etcd took our client certificate's common name for a user name)"
                     if self.security.cert else "")
            return AccessDenied(
                f"etcd at {url} has authentication enabled and we gave no user{as_cn}: pass "
                f"--etcd-user and --etcd-password-file ({details})")
        if PERMISSION_DENIED in details or INVALID_TOKEN in details:
            return AccessDenied(
                f"etcd at {url} denied user {user!r} access to {self.keyspace.prefix} "
                f"({details}): grant its role readwrite on that prefix ({docs})")
        return None

    def stub(self, kind: Callable[[Any], T]) -> tuple[int, T]:
        if self._closed:
            raise CoordinatorError("the etcd coordinator is closed")
        return self._current, kind(self._channel_at(self._current))

    def _channel_at(self, index: int) -> grpc.Channel:
        """Endpoint `index`'s gRPC channel, opened if it is not."""
        channel = self._channels[index]
        if channel is None:
            channel = self._channels[index] = _channel(self.endpoints[index], self.scheme,
                                                       self.security)
        return channel

    def _reconnect(self, index: int) -> None:
        """Endpoint `index` gets a new channel, connecting at the next call: its channel
        failed a call at once without sending it, waiting out gRPC's reconnect backoff
        (up to 1 s) though etcd may be back. Measured after etcd's restart: the old channel
        refused calls for up to 0.8 s, a new one connected at once (3-11 ms); with etcd
        still down a new one is refused at once (<1 ms). The old channel is closed once no
        other call or stream could be on it."""
        old = self._channels[index]
        self._channels[index] = None
        if old is not None:
            self._retired.append(old)
        self._close_retired()

    def _close_retired(self) -> None:
        if self._grpc_calls or self.leases.keepalive_stream_open:
            return
        while self._retired:
            self._retired.pop().close()

    async def _in_thread(self, call: Callable[[], T]) -> T:
        """A blocking gRPC call in a worker thread; its caller may give up on it."""
        with self.grpc_call():
            return await trio.to_thread.run_sync(call, abandon_on_cancel=True)

    @contextmanager
    def grpc_call(self) -> Iterator[None]:
        """Around a gRPC call or stream: while one is open its channel stays open, and the
        channels close GRPC_IDLE_CLOSE after the last one ends (`_release_idle_channels`)."""
        self._grpc_calls += 1
        try:
            yield
        finally:
            self._grpc_calls -= 1
            self._grpc_used = trio.current_time()

    def _release_idle_channels(self) -> None:
        """Close the gRPC channels when none was used for GRPC_IDLE_CLOSE and nothing is
        open on them: while a channel exists grpcio keeps its event engine's and timer
        threads waking (~16 times a second in all), though no call is made; closed, none
        runs (docs/scaling.md, "round four"). The next call opens a channel again (a
        connection more, ~2-5 ms on loopback). Called with each keepalive: no timer."""
        self._close_retired()
        if (self._grpc_calls or self.leases.keepalive_stream_open
                or trio.current_time() - self._grpc_used < GRPC_IDLE_CLOSE):
            return
        for index, channel in enumerate(self._channels):
            if channel is not None:
                self._channels[index] = None
                channel.close()


    def fail_over(self, index: int) -> None:
        """Endpoint `index` did not answer: if it is current, make current the endpoint that
        failed longest ago (never-failed ones first, in order after `index`). Call from trio."""
        self._failed_at[index] = time.monotonic()
        if len(self.endpoints) == 1 or index != self._current:
            return
        count = len(self.endpoints)
        order = [(index + step) % count for step in range(1, count)]
        self._make_current(min(order, key=lambda i: self._failed_at[i]))

    def _make_current(self, index: int) -> None:
        """Later calls, the keepalives and the watch (it ends: WatchMoved) go to endpoint
        `index`."""
        if index != self._current:
            self._current = index
            self._moved.set()
            self._moved = trio.Event()

    async def until_moved_from(self, index: int) -> None:
        while self._current == index:
            await self._moved.wait()

    def rpc_error(self, index: int, exc: grpc.RpcError, timeout: float, *,
                  fail_over: bool = True) -> CoordinatorError:
        """The CoordinatorError for a failed call on endpoint `index`; an unavailable endpoint
        is failed over from (`fail_over=False` from a thread: the caller does it in trio)."""
        return self.status_error(index, *_details(exc), timeout, fail_over=fail_over)

    def status_error(self, index: int, code: Any, details: str, timeout: float, *,
                     fail_over: bool = True) -> CoordinatorError:
        """`rpc_error` for a gRPC status `code` and its `details` (also the gateway's)."""
        url = self.url_at(index)
        refusal = self.refusal(url, code, details)
        if refusal is not None:
            return refusal
        if code in _UNAVAILABLE or (code == grpc.StatusCode.UNKNOWN
                                    and "deadline exceeded" in (details or "")):
            if fail_over:
                self.fail_over(index)
            what = "refused" if code == grpc.StatusCode.UNAVAILABLE else "did not answer"
            if self.scheme == "http" and "Socket closed" in details:
                what += " (an etcd serving https:// closes plain connections so)"
            elif self.scheme == "https" and "Handshake read failed" in details:
                what += " (so does an etcd serving plain http://, and one going down)"
            return CoordinatorUnavailable(
                f"etcd at {url} {what} within {timeout:g}s ({details}); is etcd running there? "
                "start it (`memring up` spawns one; Debian: etcd-server) or pass --etcd URLS")
        if code == grpc.StatusCode.NOT_FOUND and "lease" in (details or ""):
            return LeaseNotFound(f"etcd at {url}: {details}")
        return CoordinatorError(f"etcd at {url}: {code}: {details}")

    async def unary(self, kind: Callable[[Any], Any], method: str, request: Any,
                    timeout: float | None = None, *, resend: bool = False,
                    authenticated: bool = True) -> Any:
        """One call on the current endpoint; an unavailable endpoint makes another current.
        A call that may be `resend` (a read, a revocation, a txn whose caller re-checks a
        failed outcome) first waits only `attempt_timeout` when there are several endpoints,
        then is sent once more, with the rest of the timeout (at least one attempt's), to the
        member that leads etcd and answers (cluster.etcd_leader), else to the next endpoint:
        a frozen member, or a follower whose request went to a frozen etcd leader, then costs
        an attempt, not the whole timeout. A plain write is sent once: it may have been
        applied. `authenticated`: with the token (got first if we have none; renewed once if
        etcd calls it stale)."""
        limit = self.call_timeout if timeout is None else timeout
        started = trio.current_time()
        resends = 1 if resend and len(self.endpoints) > 1 else 0
        resent = False
        reconnected = False
        renewed = not (authenticated and self.security.user)
        if not renewed and not self._token:
            await self.renew_token(self._token_generation)
        while True:
            generation = self._token_generation
            index, stub = self.stub(kind)
            wait = self.attempt_wait(limit, started, resends, resent)
            call = functools.partial(getattr(stub, method), request, timeout=wait,
                                     metadata=self.call_metadata() if authenticated else None)
            sent = trio.current_time()
            try:
                if resends:
                    return await self._watched_attempt(call, index)
                return await self._in_thread(call)
            except _LeaderChanged as changed:
                resends -= 1
                resent = True
                if changed.index != index:
                    self._failed_at[index] = time.monotonic()
                self._make_current(changed.index)
                log.info("etcd at %s left our %s unanswered for %.0f ms while etcd's leader "
                         "changed or it went silent; sending it again through %s",
                         self.url_at(index), method, 1000 * (trio.current_time() - sent),
                         self.url)
                continue
            except grpc.RpcError as exc:
                if not renewed and self.stale_token(*_details(exc)):
                    renewed = True
                    await self.renew_token(generation)
                    continue
                if not reconnected and _NOT_CONNECTED in _details(exc)[1]:
                    # never sent, through a channel in reconnect backoff: once more, through
                    # a new connection, within the call's time (`_reconnect`)
                    reconnected = resent = True
                    self._reconnect(index)
                    continue
                # (a call resent so is bounded by `limit` as a whole: named in the error)
                error = self.rpc_error(index, exc, limit if reconnected else wait,
                                       fail_over=not resends)
                if not isinstance(error, CoordinatorUnavailable) or not resends:
                    raise error from None
                resends -= 1
                resent = True
                await self.to_answering_leader(index, started + limit - self.attempt_timeout)
                log.info("%s; sending the %s again through %s", error, method, self.url)

    async def _watched_attempt(self, call: Callable[[], T], index: int) -> T:
        """`call` on endpoint `index` in a worker thread; once it is LATE, etcd's members are
        asked in rounds meanwhile (`leader_change`), and if etcd elected a new leader or
        `index` went silent, the call is given up (its thread ends by its gRPC deadline):
        `_LeaderChanged` names the member to send it to."""
        answer: list[T] = []
        failure: list[Exception] = []
        moved: list[int] = []

        async def attempt(done: trio.CancelScope) -> None:
            try:
                answer.append(await self._in_thread(call))
            except Exception as exc:  # re-raised below, outside the nursery
                failure.append(exc)
            done.cancel()

        async def watch(done: trio.CancelScope) -> None:
            await trio.sleep(LATE)
            moved.append(await leader_change(self._status, len(self.endpoints), index))
            done.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(attempt, nursery.cancel_scope)
            nursery.start_soon(watch, nursery.cancel_scope)
        if answer:
            return answer[0]
        if failure:
            raise failure[0]
        raise _LeaderChanged(moved[0])

    def attempt_wait(self, limit: float, started: float, resends: int, resent: bool) -> float:
        """An attempt's timeout within a call of `limit` s begun at `started`: one
        `attempt_timeout` while a resend remains, the rest of `limit` (at least one attempt's)
        for the resend, else the whole `limit`."""
        if resends:
            return min(limit, self.attempt_timeout)
        if resent:
            return max(self.attempt_timeout, started + limit - trio.current_time())
        return limit

    async def _status(self, index: int, timeout: float) -> Status | None:
        """Member `index`'s maintenance Status (cluster.etcd_leader); None if unanswered."""
        if self._closed:
            return None
        call = functools.partial(etcdrpc.MaintenanceStub(self._channel_at(index)).Status,
                                 etcdrpc.StatusRequest(), timeout=timeout,
                                 metadata=self.call_metadata())
        try:
            response = await self._in_thread(call)
        except grpc.RpcError:
            return None
        return int(response.header.member_id), int(response.leader), int(response.raftTerm)

    async def _check_watched(self) -> bool:
        """The watched member must answer a Status within a search round's timeout (it is
        answered locally in ~1 ms): a proxy's routing waits on its watch."""
        index = self._current
        timeout = min(ROUND_TIMEOUT, self.attempt_timeout)
        if len(self.endpoints) > 1 and await self._status(index, timeout) is None:
            log.warning("etcd at %s did not answer a status check within %gs: moving to the "
                        "next member", self.url_at(index), timeout)
            self.fail_over(index)
            return self._current != index
        return False

    async def to_answering_leader(self, failed: int, deadline: float) -> None:
        """After endpoint `failed` left a call unanswered: make current the member that leads
        etcd and answers (`failed` itself if only our call was slow), found by `deadline`;
        else the next endpoint."""
        leader = await answering_leader(self._status, len(self.endpoints), deadline)
        if leader is None:
            self.fail_over(failed)
            return
        if leader != failed:
            self._failed_at[failed] = time.monotonic()
        self._make_current(leader)

    # primitives -----------------------------------------------------------------------

    async def _read(self, key: str, *, prefix: bool = False) -> tuple[int, dict[str, Entry]]:
        raw = key.encode()
        request = etcdrpc.RangeRequest(key=raw)
        if prefix:
            request.range_end = prefix_end(raw)
        response = await self.unary(etcdrpc.KVStub, "Range", request, resend=True)
        return int(response.header.revision), {e.key: e for e in map(entry, response.kvs)}

    async def _txn(self, compares: Sequence[Compare], success: Sequence[Op],
                   failure: Sequence[Op] = (), *, resend: bool = False) -> TxnResult:
        request = etcdrpc.TxnRequest(compare=[_compare(c) for c in compares],
                                     success=[_request_op(o) for o in success],
                                     failure=[_request_op(o) for o in failure])
        response = await self.unary(etcdrpc.KVStub, "Txn", request, resend=resend)
        return TxnResult(bool(response.succeeded), int(response.header.revision))

    async def _grant(self, ttl: float) -> tuple[int, float]:
        return await self.leases.grant(ttl)

    async def _keepalive(self, lease_id: int, *, timeout: float) -> float:
        self._release_idle_channels()  # (no timer of its own)
        return await self.leases.keepalive(lease_id, timeout=timeout)

    async def revoke(self, lease_id: int) -> bool:
        return await self.leases.revoke(lease_id)

    @asynccontextmanager
    async def _watch_raw(self, prefix: str, from_revision: int) -> AsyncIterator[WatchStream]:
        """A watch whose creation etcd refused for our token is created again, once, after a
        new token; refused again, it is AccessDenied."""
        if self.security.user and not self._token:
            await self.renew_token(self._token_generation)
        generation = self._token_generation
        yielded = False
        try:
            async with self.watches.open(prefix, from_revision) as stream:
                yielded = True
                yield stream
                return
        except WatchRefused:
            if yielded or not self.security.user:
                raise
        await self.renew_token(generation)
        try:
            async with self.watches.open(prefix, from_revision) as stream:
                yield stream
        except WatchRefused as exc:
            raise AccessDenied(str(exc)) from None

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.leases.aclose()
        for channel in [*self._channels, *self._retired]:
            if channel is not None:
                channel.close()
        await trio.lowlevel.checkpoint()
