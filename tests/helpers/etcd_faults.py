"""A sync shard on a several-member etcd, and what its backends do while an etcd member fails.

`members_shard(etcd, size)` starts `size` sync backends given every etcd endpoint.
`ShardWatcher` runs two bounded threads while a fault is injected: a writer that sets fresh
keys on whichever node says it leads (every STORED is remembered, with when) and a sampler
that reads each node's role and the shard's etcd records (leader, epoch, ISR, node leases)
every SAMPLE_INTERVAL. `report()` then counts, per backend, from its log: sessions lost,
sessions joined (with their leases), elections won, unclean elections and ISR drops.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio

from memring.cluster.coordinator import ClusterView, CoordinatorError
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdCluster
from tests.helpers import servers, wire
from tests.helpers.cluster import BACKLOG, SHARD, node_id

SAMPLE_INTERVAL = 0.05
WRITE_TIMEOUT = 1.0
_clusters = itertools.count(1)

# the backend's logfmt lines (netio.logs): ts=2026-11-28T07:34:23.512Z level=... msg="..."
_LOST = re.compile(r"^ts=(\S+) .*session ([0-9a-f]+) lost: (.*)$", re.MULTILINE)
_JOINED = re.compile(r"joined cluster \S+ as node \S+ of shard \S+ \(lease ([0-9a-f]+)\)")


@dataclass
class MembersShard:
    """Sync backends of one shard, each given every member's URL."""

    etcd: EtcdCluster
    stack: contextlib.ExitStack
    cluster: str
    urls: str  # every member's URL, in the order the backends are given them
    nodes: list[servers.RunningServer] = field(default_factory=list)

    def start(self) -> servers.RunningServer:
        argv = servers.backend_argv(
            "--etcd", self.urls, "--cluster", self.cluster, "--shard", SHARD,
            "--replication", "sync", "--peer-listen", f"{servers.HOST}:{servers.free_port()}",
            "--replication-backlog", str(BACKLOG))
        node = self.stack.enter_context(servers.running("memring-backend", argv))
        self.nodes.append(node)
        return node

    def role(self, node: servers.RunningServer) -> str:
        return wire.stats(node)["memring_role"]

    async def view(self) -> ClusterView:
        async with EtcdCoordinator.connect(self.urls, self.cluster) as coordinator:
            return await coordinator.snapshot()


@contextlib.contextmanager
def members_shard(etcd: EtcdCluster, size: int, *, leader_first: bool = True
                  ) -> Iterator[MembersShard]:
    """`size` sync backends given every member's URL; with `leader_first`, etcd's current
    leader comes first (the endpoint a client uses until it fails: the case of issue 12)."""
    members = list(etcd.members)
    leader = etcd.leader()
    if leader_first and leader is not None:
        members.remove(leader)
        members.insert(0, leader)
    with contextlib.ExitStack() as stack:
        shard = MembersShard(etcd, stack, f"em{next(_clusters)}",
                             ",".join(m.url for m in members))
        for _ in range(size):
            shard.start()
        yield shard


@dataclass
class Sample:
    at: float
    roles: dict[str, str]
    leader: str | None = None
    epoch: int = 0
    isr: tuple[str, ...] = ()
    leases: dict[str, int] = field(default_factory=dict)


def _stats(port: int) -> dict[str, str]:
    with socket.create_connection((servers.HOST, port), timeout=0.3) as sock:
        sock.sendall(b"stats\r\n")
        return wire.parse_stats(wire.read_until(sock, b"END\r\n", timeout=0.3))


class ShardWatcher:
    """A writer and a sampler over a MembersShard, for a bounded time (`stop()` ends both)."""

    def __init__(self, shard: MembersShard) -> None:
        self.shard = shard
        self.started = time.monotonic()
        self.stored: dict[bytes, bytes] = {}
        self.acked_at: list[float] = []
        self.refused = 0
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._write, daemon=True),
                         threading.Thread(target=self._sample, daemon=True)]

    def __enter__(self) -> ShardWatcher:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(10)

    def now(self) -> float:
        return time.monotonic() - self.started

    def _leader_port(self) -> int | None:
        sample = self.samples[-1] if self.samples else None
        if sample is None:
            return None
        leaders = [n for n, role in sample.roles.items() if role == "leader"]
        return int(leaders[0].rpartition(":")[2]) if len(leaders) == 1 else None

    def _write(self) -> None:
        sock: socket.socket | None = None
        port: int | None = None
        for seq in itertools.count():
            if self._stop.is_set():
                break
            want = self._leader_port()
            if want is None:
                time.sleep(0.01)
                continue
            key, value = b"em:%d" % seq, b"v%d" % seq
            try:
                if sock is None or port != want:
                    if sock is not None:
                        sock.close()
                    sock = socket.create_connection((servers.HOST, want), timeout=WRITE_TIMEOUT)
                    port = want
                sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
                reply = wire.read_until(sock, b"\r\n", timeout=WRITE_TIMEOUT)
            except (OSError, ConnectionError, TimeoutError):
                if sock is not None:
                    sock.close()
                sock = None
                time.sleep(0.01)
                continue
            if reply == b"STORED\r\n":
                self.stored[key] = value
                self.acked_at.append(self.now())
            else:
                self.refused += 1
                time.sleep(0.01)
            time.sleep(0.005)
        if sock is not None:
            sock.close()

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            roles = {}
            for node in self.shard.nodes:
                try:
                    roles[node_id(node)] = _stats(node.port).get("memring_role", "?")
                except (OSError, ConnectionError, TimeoutError):
                    roles[node_id(node)] = "unreachable"
            sample = Sample(self.now(), roles)
            try:
                view = trio.run(self._view)
            except (CoordinatorError, trio.TooSlowError):  # etcd in a fault: roles only
                view = None
            if view is not None and SHARD in view.shards:
                shard = view.shards[SHARD]
                sample.leader = shard.leader.node_id if shard.leader else None
                sample.epoch = shard.epoch
                sample.isr = tuple(sorted(f"{m.node_id}/{m.lease_id:x}"
                                          for m in shard.isr.members)) if shard.isr else ()
                sample.leases = {n: view.lease_of(view.keyspace.node(n)) for n in view.nodes}
            self.samples.append(sample)

    async def _view(self) -> ClusterView:
        with trio.fail_after(1.0):
            return await self.shard.view()

    # -- figures ----------------------------------------------------------------------

    def longest_write_gap(self, since: float, until: float) -> float:
        """The longest time without an acknowledged write between `since` and `until`."""
        times = [since, *(t for t in self.acked_at if since <= t <= until), until]
        return max(b - a for a, b in itertools.pairwise(times))

    def timeline(self) -> list[str]:
        """One line per change of roles, leader, epoch, ISR or leases."""
        lines, last = [], None
        for s in self.samples:
            key = (s.roles, s.leader, s.epoch, s.isr, s.leases)
            if key != last:
                lines.append(f"{s.at:6.2f}s roles={s.roles} leader={s.leader} epoch={s.epoch} "
                             f"isr={list(s.isr)} leases="
                             f"{ {n: f'{lease:x}' for n, lease in s.leases.items()} }")
                last = key
        return lines


@dataclass
class NodeReport:
    node: str
    lost: list[str]  # since the report's `since`
    joined: list[str]
    led: int
    unclean: int
    isr_drops: int
    lost_before: list[str] = field(default_factory=list)  # before `since`

    def __str__(self) -> str:
        return (f"{self.node}: sessions lost {len(self.lost)} {self.lost} (before the fault "
                f"{self.lost_before}), joined with leases {self.joined}, elections won "
                f"{self.led}, unclean {self.unclean}, ISR drops logged {self.isr_drops}")


def _log_time(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def node_report(node: servers.RunningServer, since: float = 0.0) -> NodeReport:
    """What `node` logged; sessions lost are split at `since` (time.time(), a fault's start):
    on a loaded machine a keepalive can miss the deadline before any fault (seen at load 20:
    a session lost, then resumed with the same lease)."""
    text = node.log_text()
    # the log's times are cut to the millisecond
    lost = [(_log_time(m[1]) + 0.001, f"{m[2]}: {m[3][:60]}") for m in _LOST.finditer(text)]
    return NodeReport(
        node_id(node),
        [what for at, what in lost if at >= since],
        _JOINED.findall(text),
        len(re.findall(r"leader of shard \S+ \(epoch", text)),
        text.count("unclean election ("),
        text.count("ISR: dropped"),
        [what for at, what in lost if at < since])
