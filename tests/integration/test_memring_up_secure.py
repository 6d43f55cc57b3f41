"""`memring up --secure` (LocalCluster(secure=True)), real processes: every channel protected.

A 1 x 2 cluster comes up with its own CA, certificates, auth file and secured etcd. pymemcache
with `tls_context` authenticates through the proxy and set/get/get_many work; a plain client
to the proxy, a client without a cluster certificate (or plain) to a backend and a wrong
password are refused; a backend asks its shard's members for `stats` over TLS with its own
certificate (the unclean-election path); `memring status --json` reports every channel
protected (and a plain `memring up` every one unprotected: its peer links have the secret,
not TLS); an etcd client
without credentials, or with a certificate of the cluster's CA, cannot write the topology.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from memring.backend.cli import stats_client_context
from memring.backend.cluster_member import ClusterMember, MemberIdentity
from memring.cluster.coordinator import AccessDenied, ClusterConfig
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_security import EtcdSecurity
from memring.cluster.launcher import LocalCluster, plan_from_flags, state_path
from memring.cluster.local_tls import TOOLS_CERT
from memring.cluster.node_stats import TRANSPORT, fetch_stats
from memring.netio.tls import TlsSettings
from memring.protocol.ascii_auth import Login
from memring.protocol.replication import Position
from tests.helpers import servers

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

HOST = servers.HOST
START_WITHIN = 90.0


@asynccontextmanager
async def running(cluster: LocalCluster) -> AsyncIterator[list[str]]:
    lines: list[str] = []
    try:
        with trio.fail_after(START_WITHIN):
            await cluster.start(lines.append)
        yield lines
    finally:
        with trio.CancelScope(shield=True):
            await cluster.stop(lines.append)


def status_json(cluster: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "memring", "status", "--json",
                           "--cluster", cluster], capture_output=True, text=True, timeout=30,
                          check=False)
    assert done.returncode == 0, done.stderr
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def plain_exchange(port: int, request: bytes) -> bytes:
    """What a plain-text client gets (until the server closes, or 2 s)."""
    with socket.create_connection((HOST, port), timeout=2) as sock:
        sock.sendall(request)
        reply = b""
        try:
            while data := sock.recv(4096):
                reply += data
        except (TimeoutError, ConnectionResetError):
            pass
        return reply


def tls_exchange(port: int, context: ssl.SSLContext, request: bytes) -> bytes:
    """One request over TLS and its reply line; an SSL error or a close gives b""."""
    try:
        with socket.create_connection((HOST, port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname=HOST) as sock:
            sock.sendall(request)
            reply = b""
            while not reply.endswith(b"\r\n"):
                data = sock.recv(4096)
                if not data:
                    break
                reply += data
            return reply
    except (ssl.SSLError, ConnectionError):
        return b""


def credentials(auth_file: str) -> tuple[str, str]:
    user, _, password = Path(auth_file).read_text().strip().partition(":")
    return user, password


class _EmptyStore:
    """The replication side of a member that holds nothing (position 0, 0)."""

    def position(self) -> Position:
        return Position(0, 0)


async def _an_empty_member_would_campaign(etcd: EtcdCoordinator, tls: ssl.SSLContext | None,
                                          login: Login) -> bool:
    """The unclean-election check of a third member of s1 that holds nothing: it asks the
    others for `stats` (over TLS with `tls`) and campaigns only if none holds more."""
    member = ClusterMember(etcd, MemberIdentity("s1-r9", "s1", f"{HOST}:1"))
    member.listener = _EmptyStore()  # type: ignore[assignment]
    member.stats_tls = tls
    member.stats_login = lambda: login
    view = await etcd.snapshot()
    return await member._most_advanced(view, absent_too=False)


async def test_memring_up_secure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pymemcache = pytest.importorskip("pymemcache.client.base")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cluster = LocalCluster(plan_from_flags("secure-up", 1, 2), servers.free_port(),
                           secure=True)
    async with running(cluster) as lines:
        assert cluster.tls is not None and cluster.etcd_url is not None
        run_dir, ca = cluster.run_dir, cluster.tls.ca
        # files: the CA directory 0700, keys and the auth file 0600; the state file holds
        # paths, never the password
        assert stat.S_IMODE(ca.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(Path(cluster.auth_file).stat().st_mode) == 0o600
        assert ca.parent != Path(cluster.etcd_security.ca).parent  # etcd's CA is its own
        user, password = credentials(cluster.auth_file)
        state_text = state_path("secure-up").read_text()
        assert password not in state_text
        state = json.loads(state_text)
        assert state["tls"]["tls_ca"] == str(ca) and state["auth_file"] == cluster.auth_file
        assert any(f"cafile='{ca}'" in line for line in lines), lines

        # pymemcache over TLS through the proxy, as the generated user
        def through_proxy() -> None:
            client = pymemcache.Client((HOST, cluster.port), connect_timeout=5, timeout=5,
                                       tls_context=ssl.create_default_context(cafile=str(ca)))
            try:
                assert client.set("auth", f"{user} {password}".encode(), noreply=False)
                assert client.set("k1", b"v1", noreply=False)
                assert client.set("k2", b"v2", noreply=False)
                assert client.get("k1") == b"v1"
                assert client.get_many(["k1", "k2", "k3"]) == {"k1": b"v1", "k2": b"v2"}
            finally:
                client.close()

        await trio.to_thread.run_sync(through_proxy)
        trusting = ssl.create_default_context(cafile=str(ca))
        wrong = b"set auth 0 0 %d\r\n%s wrong\r\n" % (len(user) + 6, user.encode())
        assert await trio.to_thread.run_sync(tls_exchange, cluster.port, trusting, wrong) \
            == b"CLIENT_ERROR authentication failure\r\n"
        assert await trio.to_thread.run_sync(tls_exchange, cluster.port, trusting,
                                             b"get k1\r\n") == b"CLIENT_ERROR unauthenticated\r\n"
        assert not (await trio.to_thread.run_sync(plain_exchange, cluster.port,
                                                  b"version\r\n")).startswith(b"VERSION")

        # a backend: plain, or TLS without a cluster certificate, never gets an answer; a
        # member's own certificate gets `stats` (the unclean-election path)
        backends = [c for c in cluster.children if c.role == "backend"]
        port = int(backends[0].address.rpartition(":")[2])
        login = (user.encode(), password.encode())
        with trio.fail_after(30):  # ready means led and routed: a follower may still start
            while not all([await fetch_stats(b.address, 1.0, login,
                                             cluster.tls.tools_context())
                           for b in backends]):
                await trio.sleep(0.1)
        assert await trio.to_thread.run_sync(tls_exchange, port, trusting,
                                             b"version\r\n") == b""
        assert not (await trio.to_thread.run_sync(plain_exchange, port,
                                                  b"version\r\n")).startswith(b"VERSION")
        own = cluster.tls.credentials[backends[1].name]
        member = stats_client_context(TlsSettings(cert=str(own.cert), key=str(own.key),
                                                  ca=str(ca), verify="require"))
        asked = await fetch_stats(backends[0].address, 5.0, login, member)
        assert asked is not None and asked[TRANSPORT] == "tls" and "memring_repl_position" in asked
        assert await fetch_stats(backends[0].address, 2.0, None, member) is None  # auth too
        async with EtcdCoordinator.connect(cluster.etcd_url, "secure-up",
                                           security=cluster.etcd_security) as etcd:
            assert not await _an_empty_member_would_campaign(etcd, member, login)
            # without TLS it hears no one
            assert await _an_empty_member_would_campaign(etcd, None, login)

        # memring status: every channel protected, from the state file alone
        doc = await trio.to_thread.run_sync(status_json, "secure-up")
        security = doc["security"]
        assert security["unprotected"] == [] and security["unknown"] == [], security
        assert security["protected"] is True
        kinds = {c["kind"] for c in security["channels"]}
        assert kinds == {"clients", "proxy links", "backend ports", "peer links", "etcd"}
        assert all(node["answers"] for shard in doc["shards"] for node in shard["nodes"])
        # the follower replicates over mutual TLS (--peer-tls): both members in the ISR
        for _ in range(100):
            if all(len(shard["isr"]) == 2 for shard in doc["shards"]):
                break
            await trio.sleep(0.1)
            doc = await trio.to_thread.run_sync(status_json, "secure-up")
        assert all(len(shard["isr"]) == 2 for shard in doc["shards"]), doc["shards"]

        # etcd: neither a stranger nor a holder of a cluster certificate writes the topology
        tools = cluster.tls.credentials[TOOLS_CERT]
        for security_of_stranger in (
                EtcdSecurity(cluster.etcd_security.ca),
                EtcdSecurity(cluster.etcd_security.ca, str(tools.cert), str(tools.key))):
            async with EtcdCoordinator.connect(cluster.etcd_url, "secure-up", probe=False,
                                               security=security_of_stranger) as stranger:
                with pytest.raises(AccessDenied, match="rejected our TLS client certificate"):
                    await stranger.put_config(ClusterConfig(lease_ttl=9.0))
        async with EtcdCoordinator.connect(cluster.etcd_url, "secure-up",
                                           security=cluster.etcd_security) as etcd:
            config = await etcd.get_config()
            assert config is not None and config.lease_ttl != 9.0
    assert not run_dir.exists()


async def test_plain_memring_up_shows_unprotected_channels(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --secure nothing changes, and `memring status` says what is unprotected."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    cluster = LocalCluster(plan_from_flags("plain-up", 1, 1), servers.free_port())
    async with running(cluster):
        assert cluster.tls is None
        for child in cluster.children:
            assert "--tls" not in child.argv and "--backend-tls" not in child.argv
        doc = await trio.to_thread.run_sync(status_json, "plain-up")
        security = doc["security"]
        assert security["protected"] is False and security["unknown"] == []
        # the peer links have the secret, not TLS (memring_repl_peer_tls no)
        assert set(security["unprotected"]) == {
            "etcd", "s1-r1 client port", "clients -> proxy-1", "proxy-1 -> backends",
            "s1-r1 peer links"}
        table = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "memring", "status", "--cluster", "plain-up"],
            capture_output=True, text=True, timeout=30, check=False).stdout)
        assert "security: clients none, proxy links none, backend ports none, peer links " \
               "secret, etcd none" in table
        assert "WARNING: unprotected channels: " in table


def test_the_memring_up_secure_command(tmp_path: Path) -> None:
    """The command itself: it says how a client connects, a client does so with what it
    printed, `memring status` (from the state file) shows every channel protected, and
    Ctrl-C stops it all."""
    pymemcache = pytest.importorskip("pymemcache.client.base")
    port = servers.free_port()
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path))
    up = subprocess.Popen([sys.executable, "-m", "memring", "up", "--secure", "--cluster",
                           "secure-cmd", "--shards", "1", "--replicas", "1", "--port",
                           str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, env=env, start_new_session=True)
    lines: list[str] = []
    try:
        assert up.stdout is not None
        deadline = time.monotonic() + START_WITHIN
        for line in up.stdout:  # bounded by memring up's own readiness deadline
            lines.append(line)
            if "memring up: ready" in line or time.monotonic() > deadline:
                break
        text = "".join(lines)
        assert "memring up: ready" in text, text
        how = re.search(r"clients connect over TLS \(CA (\S+)\) and authenticate as (\S+) "
                        r"\(password in (\S+)\)", text)
        assert how is not None, text
        ca, user, auth_file = how.groups()
        assert credentials(auth_file)[0] == user
        client = pymemcache.Client((HOST, port), connect_timeout=5, timeout=5,
                                   tls_context=ssl.create_default_context(cafile=ca))
        try:
            assert client.set("auth", f"{user} {credentials(auth_file)[1]}".encode(),
                              noreply=False)
            assert client.set("k", b"v", noreply=False) and client.get("k") == b"v"
        finally:
            client.close()
        done = subprocess.run([sys.executable, "-m", "memring", "status", "--cluster",
                               "secure-cmd"], capture_output=True, text=True, timeout=30,
                              env=env, check=False)
        assert done.returncode == 0, done.stderr
        assert "security: clients TLS+auth, proxy links TLS+verified+auth, backend ports " \
               "TLS+client cert+auth" in done.stdout, done.stdout
        assert "WARNING" not in done.stdout and "unknown" not in done.stdout, done.stdout
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(30)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(5)
    assert up.returncode == 0, "".join(lines)
