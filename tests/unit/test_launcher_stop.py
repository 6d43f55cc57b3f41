"""memring up's stop: SIGTERM, a grace period, SIGKILL, every process reaped; and the flags
it passes the servers it starts as processes, known from code (the launcher never imports
them, nor reads their --help): both servers' settings accept them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest
import trio

from memring.backend import settings as backend_settings  # tests may; the launcher may not
from memring.cluster.launcher import (
    LocalCluster,
    ShardPlan,
    plan_from_flags,
    terminate_then_kill,
)
from memring.proxy import settings as proxy_settings

pytestmark = pytest.mark.unit

IGNORES_SIGTERM = [sys.executable, "-c",
                   "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                   "print('ready', flush=True); time.sleep(60)"]


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, stdout=subprocess.PIPE)
    assert process.stdout is not None
    if argv is IGNORES_SIGTERM:
        assert process.stdout.readline() == b"ready\n"  # its handler is in place
    return process


async def test_sigterm_then_sigkill_after_the_grace_period() -> None:
    polite = spawn([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = spawn(IGNORES_SIGTERM)
    began = time.monotonic()
    with trio.fail_after(20):
        survivors = await terminate_then_kill(
            [polite, stubborn], trio.CancelScope(deadline=trio.current_time() + 0.5))
    assert survivors == []
    assert polite.returncode == -15 and stubborn.returncode == -9  # both reaped
    assert time.monotonic() - began >= 0.5


async def test_a_cancelled_grace_period_kills_at_once() -> None:
    stubborn = spawn(IGNORES_SIGTERM)
    grace = trio.CancelScope(deadline=trio.current_time() + 30)
    grace.cancel()  # a second Ctrl-C
    with trio.fail_after(10):
        assert await terminate_then_kill([stubborn], grace) == []
    assert stubborn.returncode == -9


def test_the_servers_accept_the_flags_the_launcher_passes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LEASE_TTL", "PEER_LISTEN", "SHARD", "NODE_ID", "ETCD", "CLUSTER", "PROXY_ID"):
        monkeypatch.delenv(f"MEMRING_{name}", raising=False)
    cluster = LocalCluster(plan_from_flags("c", 1, 2), 11211, metrics=True)
    try:
        backend = cluster.backend_argv(ShardPlan("s1", 2), "s1-r1", "127.0.0.1:1",
                                       "http://127.0.0.1:2379")
        proxy = cluster.proxy_argv("proxy-1", "127.0.0.1:2", "http://127.0.0.1:2379")
        node = backend_settings.load_settings(backend[3:])  # reads the peer secret file
        secret_mode = os.stat(node.peer_secret_file).st_mode & 0o777
    finally:
        shutil.rmtree(cluster.run_dir)
    assert backend[1:3] == ["-m", "memring.backend"]
    assert (node.etcd, node.cluster, node.shard, node.node_id) == (
        "http://127.0.0.1:2379", "c", "s1", "s1-r1")
    # authenticated peer links by default: a new secret in the run directory, 0600
    assert node.peer_secret_file == str(cluster.run_dir / "peer-secret")
    assert secret_mode == 0o600
    assert node.peer_listen and node.metrics_listen
    assert node.lease_ttl == cluster.plan.config.lease_ttl
    assert proxy[1:3] == ["-m", "memring.proxy"]
    front = proxy_settings.load_settings(proxy[3:])
    assert (front.listen, front.proxy_id) == ("127.0.0.1:2", "proxy-1")
    assert front.metrics_listen


def test_no_peer_secret_runs_the_peer_links_unauthenticated() -> None:
    cluster = LocalCluster(plan_from_flags("c", 1, 2), 11211, peer_secret_file="")
    try:
        backend = cluster.backend_argv(ShardPlan("s1", 2), "s1-r1", "127.0.0.1:1",
                                       "http://127.0.0.1:2379")
        assert list(cluster.run_dir.iterdir()) == []
    finally:
        shutil.rmtree(cluster.run_dir)
    assert "--peer-secret-file" not in backend
