"""memring over an etcd secured as issue 13 asks: TLS for clients and peers with client
certificates required (`--client-cert-auth`), authentication on, and a `memring` user whose
role may read and write only its clusters' prefixes (tests/helpers/secure_etcd.py).

What it shows: the whole coordinator contract passes over TLS and a token; a backend shard
and a proxy work end to end through it, and so does `memring status`; every client short of
the right credentials is refused before it rewrites the topology, with the refusal that names
what to fix; an expired token, or one an etcd restart forgot, is renewed transparently.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.coordinator import (
    AccessDenied,
    ClusterConfig,
    Coordinator,
    CoordinatorError,
    CoordinatorUnavailable,
    NodeRecord,
)
from memring.cluster.etcd_coordinator import (
    AUTH_REFUSAL_KEPT,
    AUTHENTICATE_TIMEOUT,
    EtcdCoordinator,
)
from memring.cluster.etcd_process import enable_auth, running_etcd_cluster
from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.launcher import LocalCluster, plan_from_flags
from tests.helpers import servers
from tests.helpers.coordinator_contract import (
    CALL_TIMEOUT,
    CONNECT_TIMEOUT,
    CoordinatorContract,
    Harness,
)
from tests.helpers.secure_etcd import SecureEtcd, secure_etcd
from tests.helpers.wire import ask

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

HOST = servers.HOST


class SecureEtcdHarness(Harness):
    expiry_slack = 0.6  # etcd's lessor checks expiry every 500 ms

    def __init__(self, etcd: SecureEtcd) -> None:
        super().__init__()  # clusters contract<N>: inside the prefix the memring role has
        self.etcd = etcd

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Coordinator]:
        # connecting authenticates: a bcrypt hash and a raft round in etcd, 65 ms quiet
        async with EtcdCoordinator.connect(self.etcd.url, self.cluster,
                                           call_timeout=CONNECT_TIMEOUT,
                                           security=self.etcd.security) as coordinator:
            coordinator.call_timeout = CALL_TIMEOUT
            yield coordinator

    def freeze(self) -> None:
        self.etcd.member.pause()

    def thaw(self) -> None:
        if self.etcd.member.paused:
            self.etcd.member.resume()


class TestSecureEtcdCoordinator(CoordinatorContract):
    """The whole contract (it takes seconds), over TLS with a client certificate and a token."""

    @pytest.fixture
    def harness(self, secure_etcd: SecureEtcd) -> Iterator[Harness]:
        harness = SecureEtcdHarness(secure_etcd)
        try:
            yield harness
        finally:
            harness.thaw()


# --- who cannot rewrite the topology ----------------------------------------------------------

REFUSALS = {
    # case: (what the client has, the error, the message it must match)
    "plain-http": (CoordinatorUnavailable,
                   r"^etcd at http://127\.0\.0\.1:\d+ refused \(an etcd serving https:// closes "
                   r"plain connections so\) within 1s \(.*Socket closed\)"),
    "tls-without-client-certificate": (
        AccessDenied, r"^etcd at https://127\.0\.0\.1:\d+ rejected our TLS client certificate "
        r"\(.*TSI_DATA_CORRUPTED\)\): give one signed by the CA etcd trusts with --etcd-cert "
        r"and --etcd-key$"),
    "certificate-of-another-ca": (
        AccessDenied, r"^etcd at https://127\.0\.0\.1:\d+ rejected our TLS client certificate"),
    "etcd-certificate-not-trusted": (
        AccessDenied, r"^TLS handshake with etcd at https://127\.0\.0\.1:\d+ failed \(.*"
        r"CERTIFICATE_VERIFY_FAILED.*\): check --etcd-ca"),
    "certificate-but-no-password": (
        AccessDenied, r"^etcd at https://127\.0\.0\.1:\d+ has authentication enabled and we "
        r"gave no user \(etcd took our client certificate's common name for a user name\): "
        r"pass --etcd-user and --etcd-password-file \(etcdserver: permission denied\)$"),
    "wrong-password": (
        AccessDenied, r"^etcd at https://127\.0\.0\.1:\d+ refused user 'memring': wrong user "
        r"name or password; check --etcd-user and the first line of --etcd-password-file "
        r".*wrong\.password$"),
    "memring-outside-its-prefix": (
        AccessDenied, r"^etcd at https://127\.0\.0\.1:\d+ denied user 'memring' access to "
        r"/memring/other/ \(etcdserver: permission denied\): grant its role readwrite on that "
        r"prefix \(docs/operations\.md, 'etcd security'\)$"),
}


def _attacker(case: str, etcd: SecureEtcd, tmp_path: Path) -> tuple[str, str, EtcdSecurity]:
    """(url, cluster, security) of a client that has less than it needs."""
    good = etcd.security
    stranger = etcd.ca.issue("attacker")  # signed by the right CA, named after no user
    if case == "plain-http":
        return etcd.url.replace("https://", "http://"), "sec", EtcdSecurity()
    if case == "tls-without-client-certificate":
        return etcd.url, "sec", EtcdSecurity(good.ca, user=good.user,
                                             password_file=good.password_file)
    if case == "certificate-of-another-ca":
        foreign = CertificateAuthority.create(tmp_path / "foreign").issue("memring-etcd-client")
        return etcd.url, "sec", EtcdSecurity(good.ca, str(foreign.cert), str(foreign.key),
                                             good.user, good.password_file)
    if case == "etcd-certificate-not-trusted":  # the system's CAs only
        return etcd.url, "sec", EtcdSecurity("", good.cert, good.key, good.user,
                                             good.password_file)
    if case == "certificate-but-no-password":
        return etcd.url, "sec", EtcdSecurity(good.ca, str(stranger.cert), str(stranger.key))
    if case == "wrong-password":
        wrong = tmp_path / "wrong.password"
        wrong.write_text("not-the-password\n")
        return etcd.url, "sec", EtcdSecurity(good.ca, good.cert, good.key, good.user,
                                             str(wrong))
    assert case == "memring-outside-its-prefix"
    return etcd.url, "other", good


@pytest.mark.parametrize("case", sorted(REFUSALS))
async def test_a_client_without_credentials_cannot_rewrite_the_topology(
        case: str, secure_etcd: SecureEtcd, tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(secure_etcd.url, "sec",
                                           security=secure_etcd.security) as owner:
            await owner.put_config(ClusterConfig(read_policy="leader"))
        url, cluster, security = _attacker(case, secure_etcd, tmp_path)
        error, message = REFUSALS[case]
        async with EtcdCoordinator.connect(url, cluster, security=security, probe=False,
                                           call_timeout=1.0) as attacker:
            with pytest.raises(CoordinatorError) as refused:
                await attacker.put_config(ClusterConfig(read_policy="round_robin"))
            assert type(refused.value) is error, refused.value
            assert refused.match(message)
            # nor may it read the topology, nor watch it
            with pytest.raises(error):
                await attacker.snapshot()
            if case != "plain-http":  # (a plain client's watch times out instead)
                with pytest.raises(error):
                    async with attacker.watch(1):
                        pass
        async with EtcdCoordinator.connect(secure_etcd.url, "sec",
                                           security=secure_etcd.security) as owner:
            config = await owner.get_config()
            assert config is not None and config.read_policy == "leader"


async def test_a_certificate_named_after_a_user_logs_in_as_it(secure_etcd: SecureEtcd) -> None:
    """Pinned etcd behaviour the docs warn about: with --client-cert-auth, a request without a
    token is the user the client certificate's common name names, no password asked. Whoever
    may get a certificate from the CA etcd trusts must not get one named after a user."""
    named = secure_etcd.ca.issue(secure_etcd.users.user)  # CN=memring
    security = EtcdSecurity(str(named.ca), str(named.cert), str(named.key))
    with trio.fail_after(10):
        async with EtcdCoordinator.connect(secure_etcd.url, "sec-cn",
                                           security=security) as coordinator:
            await coordinator.put_config(ClusterConfig())
            assert coordinator.authentications == 0  # no token: the certificate alone


async def test_a_refused_password_is_not_tried_again_at_once(secure_etcd: SecureEtcd,
                                                            tmp_path: Path) -> None:
    """Every Authenticate costs etcd a bcrypt hash: after a refusal, calls within
    AUTH_REFUSAL_KEPT get the same AccessDenied without asking etcd; after it, etcd is asked
    again, with the password file read again (fixed meanwhile)."""
    password = tmp_path / "rotating.password"
    password.write_text("wrong\n")
    good = secure_etcd.security
    security = EtcdSecurity(good.ca, good.cert, good.key, good.user, str(password))
    def refusals_logged() -> int:
        return secure_etcd.member.log_path.read_text(errors="replace").count("invalid password")

    with trio.fail_after(20):
        before = refusals_logged()
        async with EtcdCoordinator.connect(secure_etcd.url, "sec-rotate", probe=False,
                                           security=security) as coordinator:
            for _ in range(3):
                with pytest.raises(AccessDenied, match="wrong user name or password"):
                    await coordinator.snapshot()
            assert refusals_logged() == before + 1  # one Authenticate for 3 calls
            password.write_text(Path(good.password_file).read_text())
            with pytest.raises(AccessDenied, match="wrong user name or password"):
                await coordinator.snapshot()  # still within AUTH_REFUSAL_KEPT
            assert refusals_logged() == before + 1  # etcd was not asked again
            coordinator._auth_refused = (time.monotonic() - AUTH_REFUSAL_KEPT - 1,
                                         AccessDenied("old"))  # as if the time had passed
            await coordinator.snapshot()
            assert coordinator.authentications == 1


# --- tokens -------------------------------------------------------------------------------


async def test_an_expired_or_forgotten_token_is_renewed(private_ca: CertificateAuthority) -> None:
    """etcd 3.4's simple tokens die after --auth-token-ttl unused, and all of them with a
    restart (they live in memory): the next call, keepalive or watch gets a new one, once."""
    with secure_etcd(private_ca, "/memring/sec", auth_token_ttl=1) as etcd, trio.fail_after(40):
        async with EtcdCoordinator.connect(etcd.url, "sec-ttl",
                                           security=etcd.security) as coordinator, \
                coordinator.follow(retry_interval=0.2) as views:
            await views.receive()
            assert coordinator.authentications == 1
            await trio.sleep(2.5)  # > TTL + etcd's 1 s sweep: the token is gone
            await coordinator.put_config(ClusterConfig(lease_ttl=3.0))
            assert coordinator.authentications == 2
            assert "invalid auth token" in etcd.member.log_tail(50)
            view = await views.receive()  # the watch made before goes on
            assert view.config is not None and view.config.lease_ttl == 3.0
            await trio.sleep(2.5)
            async with coordinator.watch(1) as stream:  # a watch made after
                batch = await stream.__anext__()
                assert batch.events
            assert coordinator.authentications == 3
            async with coordinator.open_session(2) as session:
                await coordinator.register_node(session, NodeRecord("n1", f"{HOST}:1", "s1"))
                await trio.sleep(2.5)  # keepalives every 2/3 s keep token and lease alive
                assert not session.lost.is_set()
            await trio.to_thread.run_sync(etcd.member.restart)
            while True:  # until the channel has reconnected, as any caller retries
                try:
                    await coordinator.put_config(ClusterConfig(lease_ttl=2.0))
                    break
                except CoordinatorUnavailable:
                    await trio.sleep(0.1)
            assert coordinator.authentications == 4  # the follower's and this call's, once
            print(f"{coordinator.authentications} tokens over expiry and a restart")


# --- the cluster over it --------------------------------------------------------------------


def _memring(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memring", *argv], capture_output=True,
                          text=True, timeout=30, env=env)


async def test_a_cluster_and_its_proxy_work_over_tls_and_auth(secure_etcd: SecureEtcd) -> None:
    cluster = "sec-e2e"
    flags = secure_etcd.flags()
    with ExitStack() as stack, trio.fail_after(60):
        for _ in range(2):
            stack.enter_context(servers.running("memring-backend", servers.backend_argv(
                *flags, "--cluster", cluster, "--shard", "s1", "--replication", "sync",
                "--peer-listen", f"{HOST}:{servers.free_port()}")))
        proxy = stack.enter_context(servers.running("memring-proxy", [
            sys.executable, "-m", "memring.proxy", "--listen", HOST + ":{port}", *flags,
            "--cluster", cluster, "--leader-wait-ms", "2000"]))
        reply = b""
        while reply != b"STORED\r\n":  # until the shard has a leader the proxy routes to
            reply = await ask(proxy.port, b"set k 0 0 5\r\nhello\r\n")
            await trio.sleep(0.05)
        assert await ask(proxy.port, b"get k\r\n", b"END\r\n") == \
            b"VALUE k 0 5\r\nhello\r\nEND\r\n"

        done = await trio.to_thread.run_sync(
            lambda: _memring("status", "--json", "--cluster", cluster, *flags))
        assert done.returncode == 0, done.stderr
        assert '"leader"' in done.stdout
        env = dict(os.environ, MEMRING_ETCD=secure_etcd.url, **{
            "MEMRING_" + flag[2:].replace("-", "_").upper(): value
            for flag, value in zip(flags[2::2], flags[3::2], strict=True)})
        done = await trio.to_thread.run_sync(
            lambda: _memring("config", "get", "replication", "--cluster", cluster, env=env))
        assert (done.returncode, done.stdout) == (0, "sync\n"), done.stderr
        done = await trio.to_thread.run_sync(
            lambda: _memring("config", "set", "replication", "async", "--cluster", cluster,
                             "--etcd", secure_etcd.url))
        assert done.returncode == 1
        assert "memring: error: TLS handshake with etcd at https://" in done.stderr


def test_servers_refused_by_etcd_exit_naming_what_to_fix(secure_etcd: SecureEtcd,
                                                         tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("guess\n")
    security = secure_etcd.security
    flags = ["--etcd", secure_etcd.url, "--cluster", "sec-exit", "--etcd-ca", security.ca,
             "--etcd-cert", security.cert, "--etcd-key", security.key,
             "--etcd-user", security.user, "--etcd-password-file", str(wrong)]
    for program, extra in (("memring.backend", ["--shard", "s1"]), ("memring.proxy", [])):
        done = subprocess.run([sys.executable, "-m", program, "--listen",
                               f"{HOST}:{servers.free_port()}", *flags, *extra],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 1, done.stderr
        name = program.replace(".", "-")
        assert f"{name}: error: etcd at {secure_etcd.url} refused user 'memring': wrong user " \
            f"name or password; check --etcd-user and the first line of " \
            f"--etcd-password-file {wrong}" in done.stderr, done.stderr


async def test_an_authenticate_slower_than_the_call_timeout_is_waited_for(
        secure_etcd: SecureEtcd) -> None:
    """etcd checks a password with a bcrypt hash, which took up to 2 s on a loaded machine:
    Authenticate waits AUTHENTICATE_TIMEOUT, not the 1 s of other calls, so a server's
    start-up probe gets etcd's answer rather than an outage to log and go past (which let the
    wrong password of the test above by). Here the member is frozen for 1.5 s when asked."""
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(secure_etcd.url, "sec-slow-auth", probe=False,
                                           security=secure_etcd.security) as coordinator:
            assert coordinator.call_timeout == 1.0 < AUTHENTICATE_TIMEOUT
            # the channel connected first (a TLS handshake with a frozen member fails fast)
            assert await coordinator._status(0, 5.0) is not None
            secure_etcd.member.pause()
            try:
                started = time.monotonic()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(coordinator.probe)
                    await trio.sleep(1.5)
                    secure_etcd.member.resume()
            finally:
                if secure_etcd.member.paused:
                    secure_etcd.member.resume()
            assert time.monotonic() - started >= 1.5
            assert coordinator.authentications == 1


async def test_a_secured_three_member_etcd_survives_its_leader(
        private_ca: CertificateAuthority) -> None:
    """start_etcd_cluster with TLS between members too: kill -9 etcd's leader, and memring
    reads, writes and renews its token through the other two."""
    with running_etcd_cluster(3, ca=private_ca) as etcd, trio.fail_after(40):
        users = enable_auth(etcd, "/memring/sec3/")
        client = private_ca.issue("memring-etcd-client")
        security = EtcdSecurity(str(client.ca), str(client.cert), str(client.key), users.user,
                                str(users.password_file))
        assert etcd.urls.count("https://") == 3
        async with EtcdCoordinator.connect(etcd.urls, "sec3", security=security) as coordinator:
            await coordinator.put_config(ClusterConfig())
            leader = etcd.leader()
            assert leader is not None
            leader.kill()
            while True:  # the first write after the kill may meet the dead member
                try:
                    await coordinator.put_config(ClusterConfig(lease_ttl=3.0))
                    break
                except CoordinatorUnavailable:
                    await trio.sleep(0.1)
            config = await coordinator.get_config()
            assert config is not None and config.lease_ttl == 3.0
            assert coordinator.url != leader.url


async def test_memring_up_can_start_its_etcd_secured(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalCluster(secure_etcd=True), what `memring up --secure` is to use: its own CA, etcd
    with TLS both ways and auth, credentials passed to every backend and proxy; `memring
    status` finds them in the state file; without them etcd refuses."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    lines: list[str] = []
    cluster = LocalCluster(plan_from_flags("sec-up", 1, 2), servers.free_port(),
                           secure_etcd=True)
    try:
        with trio.fail_after(60):
            await cluster.start(lines.append)
        assert cluster.etcd_url is not None and cluster.etcd_url.startswith("https://")
        assert "user memring" in lines[0], lines
        assert await ask(cluster.port, b"set k 0 0 2\r\nok\r\n") == b"STORED\r\n"
        assert await ask(cluster.port, b"get k\r\n", b"END\r\n") == b"VALUE k 0 2\r\nok\r\nEND\r\n"
        for child in cluster.children:
            assert "--etcd-password-file" in child.argv
        done = await trio.to_thread.run_sync(lambda: _memring("status", "--cluster", "sec-up"))
        assert done.returncode == 0, done.stderr
        assert "leader" in done.stdout
        async with EtcdCoordinator.connect(cluster.etcd_url, "sec-up", probe=False,
                                           security=EtcdSecurity(
                                               cluster.etcd_security.ca)) as stranger:
            with pytest.raises(AccessDenied, match="rejected our TLS client certificate"):
                await stranger.put_config(ClusterConfig())
    finally:
        with trio.CancelScope(shield=True):
            await cluster.stop(lines.append)


def test_memring_up_passes_a_given_etcds_credentials_on(secure_etcd: SecureEtcd,
                                                        tmp_path: Path) -> None:
    """`memring up --etcd URL` with the etcd security flags: every backend and proxy gets them,
    and the state file lets `memring status` reach the secured etcd without flags."""
    port = servers.free_port()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    up = subprocess.Popen([sys.executable, "-m", "memring", "up", *secure_etcd.flags(),
                           "--cluster", "sec-given", "--shards", "1", "--replicas", "1",
                           "--port", str(port)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    lines: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + 45
        for line in up.stdout:  # bounded by memring up's own 30 s readiness deadline
            lines.append(line)
            if "memring up: ready" in line or time.monotonic() > deadline:
                break
        assert any("memring up: ready" in line for line in lines), "".join(lines)
        assert f"etcd     {secure_etcd.url} (given)" in lines[0]
        done = _memring("status", "--cluster", "sec-given", env=env)
        assert done.returncode == 0, done.stderr
        assert "s1-r1" in done.stdout and "leader" in done.stdout
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
    assert up.returncode == 0, "".join(lines)
