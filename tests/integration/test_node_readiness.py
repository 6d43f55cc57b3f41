"""`memring node ready` and `memring node step-down`: the readiness probe and the preStop hook
of the Kubernetes manifests (deploy/kubernetes/), against a real etcd and real backends.

A sync shard of 2 sharing a peer secret; a third node with another secret is refused by the
leader, so it stays registered and out of the ISR: the "not in sync" case, without timing.
The commands run as the probe runs them (`python -m memring.cluster ...`); waits are bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from memring.cluster.etcd_process import EtcdProcess
from tests.helpers.cluster import (
    SHARD,
    ReplicatedShard,
    node_id,
    peer_secret_in,
    wait_for,
    wait_in_sync,
)

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

_clusters = itertools.count(1)


class SyncShard(ReplicatedShard):
    mode = "sync"


@contextlib.contextmanager
def _shard(etcd: EtcdProcess, tmp_path: Path, size: int = 2) -> Iterator[SyncShard]:
    """A sync shard of `size` nodes sharing a new peer secret."""
    with contextlib.ExitStack() as stack:
        shard = SyncShard(etcd, stack, f"ready{next(_clusters)}", {})
        shard.peer_secret_file = peer_secret_in(tmp_path)
        for _ in range(size):
            shard.start()
        yield shard


def memring(shard: ReplicatedShard, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "memring.cluster", *args, "--etcd", shard.etcd.url,
            "--cluster", shard.cluster]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_ready_when_leading_or_in_sync_and_not_otherwise(etcd: EtcdProcess,
                                                         tmp_path: Path) -> None:
    with _shard(etcd, tmp_path) as shard:
        leader = shard.leader()
        trio.run(wait_in_sync, shard, 10.0)
        (follower,) = [n for n in shard.live() if n is not leader]
        for node in (leader, follower):
            result = memring(shard, "node", "ready", node_id(node))
            assert result.returncode == 0, result.stdout + result.stderr
            assert result.stdout == f"{node_id(node)} is ready\n"

        missing = memring(shard, "node", "ready", "nobody")
        assert missing.returncode == 1
        assert "not ready: nobody is not registered" in missing.stdout

        # a member the leader refuses (another peer secret) registers but never syncs
        shard.peer_secret_file = peer_secret_in(tmp_path)
        outsider = shard.start()
        wait_for(lambda: node_id(outsider) in trio.run(shard.view).nodes, 10.0,
                 "the outsider registered")
        time.sleep(0.5)  # its HELLO is refused meanwhile
        refused = memring(shard, "node", "ready", node_id(outsider))
        assert refused.returncode == 1, refused.stdout
        assert f"is not in sync with {node_id(leader)}, the leader of shard {SHARD}" \
            in refused.stdout


def test_step_down_hands_leadership_to_the_in_sync_follower(etcd: EtcdProcess,
                                                            tmp_path: Path) -> None:
    with _shard(etcd, tmp_path) as shard:
        leader = shard.leader()
        trio.run(wait_in_sync, shard, 10.0)
        (follower,) = [n for n in shard.live() if n is not leader]

        idle = memring(shard, "node", "step-down", node_id(follower))
        assert idle.returncode == 0, idle.stderr
        assert "leads no shard: nothing to hand over" in idle.stdout
        assert shard.role(leader) == "leader"

        started = time.monotonic()
        moved = memring(shard, "node", "step-down", node_id(leader))
        assert moved.returncode == 0, moved.stdout + moved.stderr
        assert moved.stdout.startswith(f"{node_id(follower)} leads shard {SHARD}")
        print(f"\nstep-down: {moved.stdout.strip()} (command {time.monotonic() - started:.2f}s)")
        assert shard.role(follower) == "leader"
        # the old leader follows once it has synced from the new one ("syncing" until then)
        wait_for(lambda: shard.role(leader) == "follower", 10.0, "the old leader following")
        view = trio.run(shard.view)
        assert view.shards[SHARD].hint is None  # the hint was dropped


def test_step_down_fails_without_an_in_sync_replica(etcd: EtcdProcess, tmp_path: Path) -> None:
    with _shard(etcd, tmp_path, size=1) as shard:
        (alone,) = shard.live()
        wait_for(lambda: shard.role(alone) == "leader", 10.0, "a leader")
        result = memring(shard, "node", "step-down", node_id(alone))
        assert result.returncode == 1
        assert f"no other in-sync replica of shard {SHARD}" in result.stderr
        assert shard.role(alone) == "leader"
