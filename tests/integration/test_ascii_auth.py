"""ASCII authentication with real processes: pymemcache against a backend and a proxy started
with --auth-file, the proxy authenticating to its backends with its own user (and failing the
node, saying why, without one), the auth file reloaded on SIGHUP, a bad file refused at start.

pymemcache has no ASCII auth call: the first command is `set(key, b"user password",
noreply=False)`. With noreply, memcached still answers the auth set STORED (noreply is not
read there), and the client's replies fall out of step.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheClientError

from memring.protocol.ascii_auth import AUTHENTICATION_FAILURE, UNAUTHENTICATED
from tests.helpers import servers
from tests.helpers.auth_conversations import authenticate
from tests.helpers.wire import connect, parse_stats, read_until

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds any awaited change may take


def wait_for(condition: object, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def wait_until_connected(proxy: servers.RunningServer, login: tuple[bytes, bytes] | None = None
                         ) -> None:
    """Until the proxy's backend connections are up (they authenticate after connecting)."""
    def up() -> bool:
        with connect(proxy) as sock:
            if login is not None:
                authenticate(sock, *login)
            sock.sendall(b"stats\r\n")
            stats = parse_stats(read_until(sock, b"END\r\n"))
        return all(value == "up" for name, value in stats.items() if name.endswith(":state"))
    wait_for(up, "the proxy's backend connections")


def pymemcache_client(server: servers.RunningServer) -> Client:
    return Client(server.address, connect_timeout=3, timeout=3, default_noreply=False)


@pytest.fixture
def users(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_bytes(b"alice:secret\nproxy:proxy-pw\n")
    return path


@pytest.fixture
def proxy_user(tmp_path: Path) -> Path:
    path = tmp_path / "proxy-user"
    path.write_bytes(b"proxy:proxy-pw\n")
    return path


@contextlib.contextmanager
def authenticated_backend(users: Path) -> Iterator[servers.RunningServer]:
    with servers.backend("--auth-file", str(users)) as backend:
        yield backend


@pytest.mark.parametrize("through", ["backend", "proxy"])
def test_pymemcache_after_the_auth_set(users: Path, proxy_user: Path, through: str) -> None:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(authenticated_backend(users))
        if through == "proxy":
            server = stack.enter_context(servers.proxy(
                [[server]], "--auth-file", str(users), "--backend-auth-file", str(proxy_user)))
            wait_until_connected(server, (b"alice", b"secret"))
        client = pymemcache_client(server)
        try:
            with pytest.raises(MemcacheClientError, match="unauthenticated"):
                client.get(b"k")
            assert client.set(b"auth", b"alice secret")  # STORED: authenticated
            assert client.set(b"k", b"v")
            assert client.get(b"k") == b"v"
            assert client.get(b"auth") is None  # the auth set stored nothing
            assert client.incr(b"n", 1) is None
        finally:
            client.close()
        wrong = pymemcache_client(server)
        try:
            with pytest.raises(MemcacheClientError, match="authentication failure"):
                wrong.set(b"auth", b"alice nope")
        finally:
            wrong.close()


def test_metrics_count_attempts(users: Path) -> None:
    metrics_port = servers.free_port()
    with servers.backend("--auth-file", str(users), "--metrics-listen",
                         f"127.0.0.1:{metrics_port}") as backend:
        for password in (b"nope", b"secret"):
            with connect(backend) as sock:
                authenticate(sock, b"alice", password)
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                    timeout=5) as page:
            text = page.read().decode()
    assert "memring_backend_auth_checks_total 2.0" in text
    assert "memring_backend_auth_failures_total 1.0" in text


def test_wrong_password_gets_memcacheds_reply_and_may_try_again(users: Path) -> None:
    with authenticated_backend(users) as backend, connect(backend) as sock:
        assert authenticate(sock, b"alice", b"nope") == AUTHENTICATION_FAILURE
        sock.sendall(b"version\r\n")
        assert read_until(sock, b"\r\n") == UNAUTHENTICATED
        assert authenticate(sock, b"alice", b"secret") == b"STORED\r\n"
        sock.sendall(b"version\r\n")
        assert read_until(sock, b"\r\n") == servers_version()


def servers_version() -> bytes:
    return b"VERSION 1.6.18\r\n"


@pytest.mark.parametrize("kind", ["backend", "proxy"])
def test_sighup_reloads_the_auth_file(users: Path, kind: str) -> None:
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(servers.backend("--auth-file", str(users)))
        if kind == "proxy":
            upstream = stack.enter_context(servers.backend())
            server = stack.enter_context(servers.proxy([[upstream]], "--auth-file", str(users)))
        kept = stack.enter_context(connect(server))
        assert authenticate(kept, b"alice", b"secret") == b"STORED\r\n"

        users.write_bytes(b"dave:new\n")
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "1 user(s) loaded" in server.log_text(), "the reload")
        with connect(server) as sock:
            assert authenticate(sock, b"dave", b"new") == b"STORED\r\n"
        with connect(server) as sock:
            assert authenticate(sock, b"alice", b"secret") == AUTHENTICATION_FAILURE
        kept.sendall(b"version\r\n")  # authenticated connections stay so, as in memcached
        assert read_until(kept, b"\r\n") == servers_version()

        users.write_bytes(b"dave:new\n\n")  # a blank line: memcached calls it malformed
        server.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the 1 user(s) loaded before" in server.log_text(),
                 "the refused reload")
        with connect(server) as sock:
            assert authenticate(sock, b"dave", b"new") == b"STORED\r\n"
        assert server.process.poll() is None


def test_proxy_authenticates_to_backends(users: Path, proxy_user: Path) -> None:
    with authenticated_backend(users) as backend, \
            servers.proxy([[backend]], "--backend-auth-file", str(proxy_user)) as proxy:
        wait_until_connected(proxy)
        client = pymemcache_client(proxy)  # the proxy's clients need no auth here
        try:
            assert client.set(b"k", b"v")
            assert client.get(b"k") == b"v"
        finally:
            client.close()
        with connect(backend) as sock:
            assert authenticate(sock, b"alice", b"secret") == b"STORED\r\n"
            sock.sendall(b"stats\r\n")
            stats = parse_stats(read_until(sock, b"END\r\n"))
        # each of the proxy's connections authenticated once (pool_size 2), then alice
        assert int(stats["auth_cmds"]) >= 2 and stats["auth_errors"] == "0"


@pytest.mark.parametrize("credentials", ["none", "wrong"])
def test_proxy_without_valid_credentials_fails_the_node(users: Path, tmp_path: Path,
                                                        credentials: str) -> None:
    extra: list[str] = []
    if credentials == "wrong":
        wrong = tmp_path / "wrong"
        wrong.write_bytes(b"proxy:not-it\n")
        extra = ["--backend-auth-file", str(wrong)]
    with authenticated_backend(users) as backend, \
            servers.proxy([[backend]], *extra, failure_limit=2,
                                                    on_shard_error="error") as proxy:
        with connect(proxy) as sock:
            for _ in range(4):  # the node fails, then is ejected
                sock.sendall(b"get k\r\n")
                reply = read_until(sock, b"\r\n")
                assert reply.startswith(b"SERVER_ERROR"), reply
        if credentials == "none":
            said = "requires authentication (it answers CLIENT_ERROR unauthenticated) and " \
                   "this proxy has no credentials"
        else:
            said = "failed: it refused this proxy's user 'proxy': CLIENT_ERROR authentication " \
                   "failure"
        wait_for(lambda: f"ejecting 127.0.0.1:{backend.port}" in proxy.log_text()
                 and said in proxy.log_text(), "the ejection, with its reason")
        with connect(proxy) as sock:
            sock.sendall(b"stats\r\n")
            stats = parse_stats(read_until(sock, b"END\r\n"))
        assert stats[f"backend:127.0.0.1:{backend.port}:state"] == "ejected"


def test_proxy_with_credentials_uses_backends_without_auth(proxy_user: Path) -> None:
    """A backend without --auth-file answers `version`: nothing is sent that it would store."""
    with servers.backend() as backend, \
            servers.proxy([[backend]], "--backend-auth-file", str(proxy_user)) as proxy:
        wait_until_connected(proxy)
        client = pymemcache_client(proxy)
        try:
            assert client.set(b"k", b"v")
            assert client.get(b"k") == b"v"
        finally:
            client.close()
        with connect(backend) as sock:
            sock.sendall(b"get auth\r\n")
            assert read_until(sock, b"END\r\n") == b"END\r\n"


@pytest.mark.parametrize("program", ["memring.backend", "memring.proxy"])
@pytest.mark.parametrize("content", [b"a:b\n\n", b"#no colon\n"])
def test_a_malformed_auth_file_is_refused_at_start(tmp_path: Path, program: str,
                                                   content: bytes) -> None:
    path = tmp_path / "users"
    path.write_bytes(content)
    config = tmp_path / "proxy.toml"
    config.write_text('[[shards]]\nname = "s1"\nnodes = ["127.0.0.1:1"]\n')
    argv = [sys.executable, "-m", program, "--listen", f"127.0.0.1:{servers.free_port()}",
            "--auth-file", str(path)]
    if program == "memring.proxy":
        argv += ["--config", str(config)]
    done = subprocess.run(argv, capture_output=True, timeout=30, check=False)
    assert done.returncode == 2
    assert b"is not 'user:password'" in done.stderr


def test_a_client_cannot_log_in_the_proxys_backend_connection(users: Path) -> None:
    """A proxy without credentials in front of a backend with auth: a client's `set` whose
    data is a backend user's `name password` must not authenticate the proxy's shared
    connection for everyone (the connection is refused before it carries a request)."""
    with authenticated_backend(users) as backend, \
            servers.proxy([[backend]], on_shard_error="error") as proxy:
        with connect(proxy) as sock:
            for _ in range(3):
                sock.sendall(b"set k 0 0 12\r\nalice secret\r\nget k\r\n")
                replies = read_until(sock, b"\r\n")
                if replies.count(b"\r\n") < 2:
                    replies += read_until(sock, b"\r\n")
                assert b"STORED" not in replies, replies
                assert replies.count(b"SERVER_ERROR") == 2, replies
        with connect(backend) as direct:
            authenticate(direct, b"alice", b"secret")
            direct.sendall(b"stats\r\n")
            stats = parse_stats(read_until(direct, b"END\r\n"))
        assert stats["auth_cmds"] == "1"  # only ours: the client's set never reached it
