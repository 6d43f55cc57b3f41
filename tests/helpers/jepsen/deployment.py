"""The cluster a Jepsen run attacks: a 3-member etcd, shards of sync replicas, proxies; every
backend wired through cuttable relays so the nemesis can partition it.

Layout (all processes on 127.0.0.1, free ports):
- etcd: `start_etcd_cluster(3)`; the proxies and the monitor talk to its members directly.
- each backend reaches every etcd member through a relay of its own (`etcd_links`), and
  advertises relays for its client port (`client_link`, what the proxies dial) and its peer
  port (`peer_link`, what its followers dial when it leads). Its node id is its advertised
  client address, so the view in etcd names the relay.
- proxies: `memring.proxy` in cluster mode; the workload's clients connect to them.
A backend or proxy restarts on its own ports with the same argv; a killed etcd member
restarts with its data. The relays live in the caller's trio run (`serve`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import trio

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.coordinator import ClusterConfig
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdCluster, free_port, start_etcd_cluster
from memring.cluster.launcher import write_peer_secret
from tests.helpers import servers
from tests.helpers.jepsen.relay import HOST, CutLink

START_TIMEOUT = 20.0


@dataclass
class Process:
    """A memring process this run owns: started, killed, paused and restarted by the nemesis."""

    name: str
    port: int
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    paused: bool = False

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=log)
        self.paused = False

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive:
            assert self.popen is not None
            self.popen.send_signal(signum)
        if signum == signal.SIGSTOP:
            self.paused = True
        elif signum == signal.SIGCONT:
            self.paused = False

    def kill(self) -> None:
        """kill -9 and reap."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self.paused = False

    def stop(self) -> None:
        """SIGTERM (after SIGCONT if paused), then kill after 5 s; reaped either way."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGCONT)
        self.popen.terminate()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    async def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until it answers `version` on its port (it exited: RuntimeError with its log)."""
        with trio.move_on_after(timeout):
            while True:
                if not self.alive:
                    raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
                if await trio.to_thread.run_sync(servers.answers_version, self.port):
                    return
                await trio.sleep(0.05)
        raise RuntimeError(f"{self.name} did not answer within {timeout:g} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class Backend(Process):
    shard: str = ""
    etcd_links: list[CutLink] = field(default_factory=list)
    client_link: CutLink | None = None
    peer_link: CutLink | None = None

    @property
    def node_id(self) -> str:
        assert self.client_link is not None
        return self.client_link.address

    def links(self) -> list[CutLink]:
        assert self.client_link is not None and self.peer_link is not None
        return [*self.etcd_links, self.client_link, self.peer_link]


@dataclass
class Deployment:
    etcd: EtcdCluster
    cluster: str
    backends: list[Backend]
    proxies: list[Process]
    workdir: Path

    def shard_ids(self) -> list[str]:
        return sorted({b.shard for b in self.backends})

    def backend(self, node_id: str) -> Backend | None:
        return next((b for b in self.backends if b.node_id == node_id), None)


def _backend_argv(backend: Backend, etcd_urls: str, cluster: str, peer_port: int,
                  lease_ttl: float, mode: str, peer_secret_file: str,
                  ca: CertificateAuthority | None) -> list[str]:
    """With `ca`, the peer links are mutual TLS: a certificate named by the node's id."""
    assert backend.client_link is not None and backend.peer_link is not None
    secret = ["--peer-secret-file", peer_secret_file] if peer_secret_file else []
    if ca is not None:
        mine = ca.issue(backend.node_id)
        secret += ["--peer-tls", "--peer-tls-cert", str(mine.cert), "--peer-tls-key",
                   str(mine.key), "--peer-tls-ca", str(ca.cert)]
    return [sys.executable, "-m", "memring.backend", "--listen", f"{HOST}:{backend.port}",
            "--etcd", etcd_urls, "--cluster", cluster, "--shard", backend.shard,
            "--advertise", backend.client_link.address,
            "--peer-listen", f"{HOST}:{peer_port}",
            "--peer-advertise", backend.peer_link.address,
            "--replication", mode, "--lease-ttl", str(lease_ttl), *secret]


@contextlib.asynccontextmanager
async def deployed(*, shards: int = 2, replicas: int = 3, proxies: int = 2,
                   lease_ttl: float = 2.0, leader_wait_ms: int = 2000, mode: str = "sync",
                   read_policy: str = "leader", peer_secret: bool = True,
                   peer_tls: bool = False, workdir: Path | None = None
                   ) -> AsyncIterator[Deployment]:
    """Start the whole cluster inside the caller's trio run; everything stopped on exit,
    the logs kept in `workdir` (a new temporary directory unless given). With
    `peer_secret` (the default) the backends share a new peer secret file in `workdir`; with
    `peer_tls` their peer links are mutual TLS too (a private CA in `workdir`)."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="memring-jepsen-"))
    workdir.mkdir(parents=True, exist_ok=True)
    secret_file = ""
    if peer_secret:
        secret_file = str(workdir / "peer-secret")
        with contextlib.suppress(FileExistsError):  # a workdir used again keeps its secret
            write_peer_secret(Path(secret_file))
    ca = CertificateAuthority.create(workdir / "tls") if peer_tls else None
    cluster = f"jepsen{os.getpid()}"
    etcd = await trio.to_thread.run_sync(start_etcd_cluster, 3)
    backends: list[Backend] = []
    proxy_processes: list[Process] = []
    try:
        async with EtcdCoordinator.connect(etcd.urls, cluster) as coordinator:
            # on_shard_error = error: the checker reads a key as a register, which may not
            # answer "absent" while it holds a value; the default (miss) answers a cache's
            # miss while a shard has no leader, which a cache may always do (README).
            await coordinator.put_config(ClusterConfig(replication=mode, read_policy=read_policy,
                                                       lease_ttl=lease_ttl,
                                                       on_shard_error="error"))
        async with trio.open_nursery() as nursery:
            for s in range(1, shards + 1):
                for r in range(replicas):
                    port, peer_port = free_port(), free_port()
                    backend = Backend(f"s{s}-{'abcdefgh'[r]}", port, [],
                                      workdir / f"s{s}-{'abcdefgh'[r]}.log", shard=f"s{s}")
                    for member in etcd.members:
                        link = CutLink(f"{backend.name}->etcd:{member.client_port}",
                                       (HOST, member.client_port))
                        await nursery.start(link.serve)
                        backend.etcd_links.append(link)
                    backend.client_link = CutLink(f"{backend.name}:client", (HOST, port))
                    backend.peer_link = CutLink(f"{backend.name}:peer", (HOST, peer_port))
                    await nursery.start(backend.client_link.serve)
                    await nursery.start(backend.peer_link.serve)
                    urls = ",".join(f"http://{link.address}" for link in backend.etcd_links)
                    backend.argv = _backend_argv(backend, urls, cluster, peer_port, lease_ttl,
                                                 mode, secret_file, ca)
                    backends.append(backend)
            for backend in backends:
                backend.start()
            for backend in backends:
                await backend.wait_ready()
            for p in range(proxies):
                port = free_port()
                proxy = Process(f"proxy-{p + 1}", port, [
                    sys.executable, "-m", "memring.proxy", "--listen", f"{HOST}:{port}",
                    "--etcd", etcd.urls, "--cluster", cluster,
                    "--leader-wait-ms", str(leader_wait_ms)], workdir / f"proxy-{p + 1}.log")
                proxy.start()
                proxy_processes.append(proxy)
            for proxy in proxy_processes:
                await proxy.wait_ready()
            yield Deployment(etcd, cluster, backends, proxy_processes, workdir)
            nursery.cancel_scope.cancel()
    finally:
        for process in [*proxy_processes, *backends]:
            process.stop()
        etcd.stop()
