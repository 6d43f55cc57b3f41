"""ASCII authentication in cluster mode (real etcd): backends of a shard started with
--auth-file, a cluster-mode proxy with --backend-auth-file, and `memring status`, which asks
the nodes for `stats` only with --auth-file (without it they show as not answering); and
`memring up --auth-file`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from memring.cluster.etcd_process import EtcdProcess
from memring.cluster.launcher import LocalCluster, plan_from_flags
from memring.protocol.ascii_auth import UNAUTHENTICATED, auth_request
from tests.helpers import servers
from tests.helpers.cluster import proxy_argv, shard_of
from tests.helpers.wire import ask

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

WAIT = 15.0


def status(etcd: EtcdProcess, cluster: str, *extra: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-m", "memring.cluster", "status", "--json",
                           "--etcd", etcd.url, "--cluster", cluster, *extra],
                          capture_output=True, text=True, timeout=30, check=False)
    doc: dict[str, object] = json.loads(done.stdout)
    return doc


def node_answers(doc: dict[str, object]) -> list[bool]:
    shards = doc["shards"]
    assert isinstance(shards, list)
    return [n["answers"] for s in shards for n in s["nodes"]]


def test_cluster_with_auth(etcd: EtcdProcess, tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_bytes(b"alice:secret\nproxy:proxy-pw\n")
    with shard_of(etcd, 2, flags=("--auth-file", str(users))) as shard, servers.running(
            "memring-proxy", [*proxy_argv(etcd.url, shard.cluster),
                              "--backend-auth-file", str(users)]) as proxy:
        client = Client(proxy.address, connect_timeout=3, timeout=3, default_noreply=False)
        try:
            deadline = time.monotonic() + WAIT
            while True:  # until a leader is elected and the proxy routes to it
                try:
                    if client.set(b"k", b"v") and client.get(b"k") == b"v":
                        break
                except MemcacheError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"no write through the proxy within {WAIT}s:\n"
                                         f"{proxy.log_text()[-2000:]}")
                time.sleep(0.1)
        finally:
            client.close()
        assert "requires authentication" not in proxy.log_text()

        # `memring status` asks the nodes for `stats`: as alice with --auth-file
        assert node_answers(status(etcd, shard.cluster, "--auth-file", str(users))) == \
            [True, True]
        assert node_answers(status(etcd, shard.cluster)) == [False, False]


async def test_memring_up_with_an_auth_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """LocalCluster(auth_file=...) (`memring up --auth-file`): every backend and proxy asks
    for it, the proxy authenticates to the backends, the readiness check to the proxy, and
    `memring status` finds the file in the state file."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    users = tmp_path / "users"
    users.write_bytes(b"alice:secret\n")
    lines: list[str] = []
    cluster = LocalCluster(plan_from_flags("auth-up", 1, 2), servers.free_port(),
                           auth_file=str(users))
    try:
        with trio.fail_after(60):
            await cluster.start(lines.append)
        alice = auth_request(b"alice", b"secret")
        assert await ask(cluster.port, b"get k\r\n") == UNAUTHENTICATED
        assert await ask(cluster.port, alice + b"set k 0 0 2\r\nok\r\nget k\r\n",
                         b"END\r\n") == b"STORED\r\nSTORED\r\nVALUE k 0 2\r\nok\r\nEND\r\n"
        for child in cluster.children:
            assert "--auth-file" in child.argv
        done = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-m", "memring", "status", "--json", "--cluster", "auth-up"],
            capture_output=True, text=True, timeout=30, check=False))
        assert done.returncode == 0, done.stderr
        assert node_answers(json.loads(done.stdout)) == [True, True]
    finally:
        with trio.CancelScope(shield=True):
            await cluster.stop(lines.append)
