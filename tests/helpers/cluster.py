"""Real clusters for the integration tests: the backends of one shard of a fresh cluster on a
real etcd (`shard_of`, and `replicated_shard` with replication between them), waits with a
bound, and the argv of a proxy following a cluster. Nodes restart on their own port.
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import trio

from memring.cluster.certificates import CertificateAuthority, Credential
from memring.cluster.coordinator import ClusterView, Incarnation
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdProcess
from memring.cluster.launcher import write_peer_secret
from tests.helpers import servers, wire

SHARD = "s1"
BACKLOG = 65536  # small, so a follower that joins after 1,000 writes needs a snapshot
LEADER_WAIT_MS = 800  # the proxy's --leader-wait-ms
_shard_clusters = itertools.count(1)
_replicated_clusters = itertools.count(1)
_secrets = itertools.count(1)
T = TypeVar("T")


@dataclass
class Shard:
    """Backends of one shard of a fresh cluster; nodes restart on their own port."""

    etcd: EtcdProcess
    stack: contextlib.ExitStack
    cluster: str
    nodes: dict[int, servers.RunningServer]
    flags: tuple[str, ...] = ()  # more backend flags (e.g. --lease-ttl)

    def start(self, port: int | None = None) -> servers.RunningServer:
        port = port or servers.free_port()
        argv = servers.backend_argv("--etcd", self.etcd.url, "--cluster", self.cluster,
                                    "--shard", SHARD, *self.flags)
        node = self.stack.enter_context(servers.running("memring-backend", argv, port=port))
        self.nodes[port] = node
        return node

    def role(self, node: servers.RunningServer) -> str:
        return wire.stats(node)["memring_role"]

    def live(self) -> list[servers.RunningServer]:
        return [n for n in self.nodes.values() if n.process.poll() is None]

    def leader(self, timeout: float = 5.0) -> servers.RunningServer:
        """The one live node whose stats say leader (waiting for an election if needed)."""
        found = wait_for(lambda: [n for n in self.live() if self.role(n) == "leader"] or None,
                         timeout, "a leader")
        assert len(found) == 1, f"{len(found)} leaders"
        return found[0]

    async def view(self) -> ClusterView:
        async with EtcdCoordinator.connect(self.etcd.url, self.cluster) as coordinator:
            return await coordinator.snapshot()


class ReplicatedShard(Shard):
    """A shard whose backends replicate (`mode`), with a small backlog; with
    `peer_secret_file` set (`peer_secret_in`), its peer links are authenticated; with
    `peer_ca` set, they are mutual TLS, each node with a certificate from that CA naming its
    node id (or `peer_credential`, when set, for the next node started), given as the peer
    TLS flags or as the client listener's (which the peer link defaults to)."""

    mode = "async"
    extra: tuple[str, ...] = ()
    peer_secret_file = ""
    peer_ca: CertificateAuthority | None = None
    peer_credential: Credential | None = None
    peer_tls_from_client_flags = False  # the files as --tls-cert/-key/-ca (the defaults)

    def _peer_tls(self, port: int) -> tuple[str, ...]:
        credential = self.peer_credential
        if credential is None and self.peer_ca is not None:
            credential = self.peer_ca.issue(f"{servers.HOST}:{port}")  # the default node id
        if credential is None:
            return ()
        prefix = "--tls" if self.peer_tls_from_client_flags else "--peer-tls"
        return ("--peer-tls", f"{prefix}-cert", str(credential.cert), f"{prefix}-key",
                str(credential.key), f"{prefix}-ca", str(credential.ca))

    def start(self, port: int | None = None) -> servers.RunningServer:
        port = port or servers.free_port()
        secret = ("--peer-secret-file", self.peer_secret_file) if self.peer_secret_file else ()
        argv = servers.backend_argv(
            "--etcd", self.etcd.url, "--cluster", self.cluster, "--shard", SHARD,
            "--replication", self.mode, "--peer-listen", f"{servers.HOST}:{servers.free_port()}",
            "--replication-backlog", str(BACKLOG), *secret, *self._peer_tls(port), *self.extra)
        node = self.stack.enter_context(servers.running("memring-backend", argv, port=port))
        self.nodes[port] = node
        return node


@contextlib.contextmanager
def shard_of(etcd: EtcdProcess, size: int, flags: tuple[str, ...] = ()) -> Iterator[Shard]:
    with contextlib.ExitStack() as stack:
        shard = Shard(etcd, stack, f"bc{next(_shard_clusters)}", {}, flags)
        for _ in range(size):
            shard.start()
        yield shard


@contextlib.contextmanager
def replicated_shard(etcd: EtcdProcess, size: int, peer_secret_file: str = ""
                     ) -> Iterator[ReplicatedShard]:
    with contextlib.ExitStack() as stack:
        shard = ReplicatedShard(etcd, stack, f"ra{next(_replicated_clusters)}", {})
        shard.peer_secret_file = peer_secret_file
        for _ in range(size):
            shard.start()
        yield shard


def wait_for(probe: Callable[[], T | None], timeout: float, what: str,
                interval: float = 0.02) -> T:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):  # a node restarting refuses for a moment
            value = probe()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(interval)


async def wait_in_sync(shard: Shard, timeout: float = 5.0) -> ClusterView:
    """Until the ISR is exactly the live nodes' current incarnations (all may then lead)."""
    with trio.fail_after(timeout):
        while True:
            view = await shard.view()
            isr = view.shards[SHARD].isr if SHARD in view.shards else None
            live = {Incarnation(n, view.lease_of(view.keyspace.node(n))) for n in view.nodes}
            if isr is not None and len(live) == len(shard.live()) and set(isr.members) == live:
                return view
            await trio.sleep(0.02)


def peer_secret_in(directory: Path) -> str:
    """A new random peer secret file (0600) in `directory`, for --peer-secret-file."""
    path = directory / f"peer-secret-{next(_secrets)}"
    write_peer_secret(path)
    return str(path)


def node_id(node: servers.RunningServer) -> str:
    return f"{servers.HOST}:{node.port}"


def proxy_argv(url: str, cluster: str) -> list[str]:
    return [sys.executable, "-m", "memring.proxy", "--listen", servers.HOST + ":{port}", "--etcd", url,
            "--cluster", cluster, "--leader-wait-ms", str(LEADER_WAIT_MS)]

