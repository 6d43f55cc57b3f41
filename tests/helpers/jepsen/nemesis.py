"""The nemesis: one fault at a time, held for a while, healed, then a wait until the cluster is
whole again (every shard led, every replica back in its ISR) before the next.

Faults (`FAULTS`): kill -9 or SIGSTOP of a backend (a shard leader two times in three); cutting
a backend from etcd, a leader from its followers, or a leader from both while the proxies still
reach it (the split-brain case); kill -9 or SIGSTOP of an etcd member (etcd's raft leader half
the time); kill -9 of a proxy. `ClusterMonitor` reads the cluster's view from etcd every
100 ms: who leads each shard, the ISR, and every election that went unclean (a leader whose
incarnation was not in the ISR the shard had before it).
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from memring.cluster.coordinator import ClusterView, CoordinatorError, Incarnation
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdProcess
from tests.helpers.jepsen.deployment import Backend, Deployment

log = logging.getLogger("memring.jepsen")

POLL = 0.1
WHOLE_TIMEOUT = 30.0  # a cluster not whole again after this is reported, and the run goes on


@dataclass
class Election:
    shard: str
    epoch: int
    leader: str
    unclean: bool
    at: float


@dataclass
class ClusterMonitor:
    """The newest view of the cluster and the elections seen in it."""

    deployment: Deployment
    view: ClusterView | None = None
    elections: list[Election] = field(default_factory=list)
    _isr: dict[str, set[Incarnation]] = field(default_factory=dict)
    _epoch: dict[str, int] = field(default_factory=dict)
    changed: trio.Event = field(default_factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with EtcdCoordinator.connect(self.deployment.etcd.urls,
                                           self.deployment.cluster) as etcd:
            started = False
            while True:
                try:
                    self._observe(await etcd.snapshot())
                except CoordinatorError:
                    pass  # an etcd member down: the next poll goes to another
                if not started:
                    started = True
                    task_status.started()
                await trio.sleep(POLL)

    def _observe(self, view: ClusterView) -> None:
        self.view = view
        for shard_id, shard in view.shards.items():
            if shard.leader is not None and shard.epoch != self._epoch.get(shard_id, 0):
                node = shard.leader.node_id
                record = view.nodes.get(node)
                # the same process under an earlier lease holds the same store (clean)
                mine = {Incarnation(node, lease) for lease in (
                    shard.leader.lease_id, *(record.earlier_leases if record else ()))}
                before = self._isr.get(shard_id)
                unclean = before is not None and not mine & before
                self.elections.append(Election(shard_id, shard.epoch, shard.leader.node_id,
                                               unclean, trio.current_time()))
                if unclean:
                    log.warning("unclean election in %s: %s (leases %s) was not in %s",
                                shard_id, node, sorted(m.lease_id for m in mine),
                                sorted(before or ()))
                self._epoch[shard_id] = shard.epoch
            if shard.isr is not None:
                self._isr[shard_id] = set(shard.isr.members)
        self.changed.set()
        self.changed = trio.Event()

    def leader(self, shard_id: str) -> Backend | None:
        shard = self.view.shards.get(shard_id) if self.view is not None else None
        if shard is None or shard.leader is None:
            return None
        return self.deployment.backend(shard.leader.node_id)

    def whole(self) -> bool:
        """Every shard led, and its ISR is every replica's live incarnation."""
        view = self.view
        if view is None:
            return False
        for shard_id in self.deployment.shard_ids():
            shard = view.shards.get(shard_id)
            if shard is None or shard.leader is None or shard.isr is None:
                return False
            replicas = [b for b in self.deployment.backends if b.shard == shard_id]
            if not all(b.alive and not b.paused for b in replicas):
                return False
            live = {Incarnation(b.node_id, view.lease_of(view.keyspace.node(b.node_id)))
                    for b in replicas}
            if any(m.lease_id == 0 for m in live) or set(shard.isr.members) != live:
                return False
        return True

    async def wait_whole(self, timeout: float = WHOLE_TIMEOUT) -> float | None:
        """Seconds until whole, or None if it was not within `timeout`."""
        started = trio.current_time()
        with trio.move_on_after(timeout):
            await self.changed.wait()  # a view read after the caller's heal, not before it
            await self.changed.wait()
            while not self.whole():
                await self.changed.wait()
            return trio.current_time() - started
        return None


@dataclass
class FaultRecord:
    kind: str
    target: str
    start: float
    healed: float = 0.0
    whole_after: float | None = None


Fault = Callable[["Nemesis", float], Awaitable[str]]


@dataclass
class Nemesis:
    deployment: Deployment
    monitor: ClusterMonitor
    rng: random.Random
    kinds: list[str]
    hold: tuple[float, float] = (1.0, 4.0)  # how long a fault lasts, seconds
    quiet: tuple[float, float] = (0.5, 2.0)  # between healing and the next fault
    each_once: bool = False  # every kind once, in a seeded order, then return
    faults: list[FaultRecord] = field(default_factory=list)
    not_whole: int = 0

    async def run(self, until: float) -> None:
        """Faults until `until` (or until each kind has had its turn, with `each_once`), each
        healed before it returns (also when cancelled)."""
        deck = self.rng.sample(self.kinds, len(self.kinds)) if self.each_once else []
        while trio.current_time() < until and (deck or not self.each_once):
            await trio.sleep(self.rng.uniform(*self.quiet))
            if trio.current_time() >= until:
                return
            kind = deck.pop() if self.each_once else self.rng.choice(self.kinds)
            record = FaultRecord(kind, "", trio.current_time())
            self.faults.append(record)
            hold = min(self.rng.uniform(*self.hold), max(0.5, until - trio.current_time()))
            record.target = await FAULTS[kind](self, hold)
            record.healed = trio.current_time()
            log.info("fault %s on %s held %.1f s", kind, record.target, hold)
            record.whole_after = await self.monitor.wait_whole()
            if record.whole_after is None:
                self.not_whole += 1
                log.warning("cluster not whole %g s after %s on %s", WHOLE_TIMEOUT, kind,
                            record.target)

    # -- targets --------------------------------------------------------------------------

    def backend(self, leader_odds: float = 2 / 3) -> Backend:
        shard = self.rng.choice(self.deployment.shard_ids())
        leader = self.monitor.leader(shard)
        if leader is not None and self.rng.random() < leader_odds:
            return leader
        return self.rng.choice([b for b in self.deployment.backends if b.shard == shard])

    def leader(self) -> Backend:
        return self.backend(leader_odds=1.0)


async def _held(hold: float, heal: Callable[[], object]) -> None:
    try:
        await trio.sleep(hold)
    finally:
        heal()


async def kill_backend(nemesis: Nemesis, hold: float) -> str:
    backend = nemesis.backend()
    backend.kill()
    try:
        await trio.sleep(hold)
    finally:
        backend.start()
    with trio.move_on_after(20):
        await backend.wait_ready()
    return backend.name


async def stop_backend(nemesis: Nemesis, hold: float) -> str:
    backend = nemesis.backend()
    backend.signal(signal.SIGSTOP)
    await _held(hold, lambda: backend.signal(signal.SIGCONT))
    return backend.name


async def cut_from_etcd(nemesis: Nemesis, hold: float) -> str:
    backend = nemesis.backend()
    for link in backend.etcd_links:
        link.cut()
    await _held(hold, lambda: [link.heal() for link in backend.etcd_links])
    return backend.name


async def cut_from_followers(nemesis: Nemesis, hold: float) -> str:
    leader = nemesis.leader()
    assert leader.peer_link is not None
    leader.peer_link.cut()
    await _held(hold, leader.peer_link.heal)
    return leader.name


async def isolate_leader(nemesis: Nemesis, hold: float) -> str:
    """Cut from etcd and followers; the proxies still reach it (can it ack a write then?)."""
    leader = nemesis.leader()
    assert leader.peer_link is not None
    links = [*leader.etcd_links, leader.peer_link]
    for link in links:
        link.cut()
    await _held(hold, lambda: [link.heal() for link in links])
    return leader.name


def _etcd_member(nemesis: Nemesis) -> tuple[EtcdProcess, str]:
    """An etcd member (the raft leader half the time) and its name; blocking (a thread's)."""
    etcd = nemesis.deployment.etcd
    leader = etcd.leader()
    if leader is not None and nemesis.rng.random() < 0.5:
        member = leader
    else:
        member = nemesis.rng.choice(etcd.members)
    name = f"etcd-{etcd.members.index(member) + 1}"
    return member, f"{name} (leader)" if member is leader else name


async def kill_etcd_member(nemesis: Nemesis, hold: float) -> str:
    member, name = await trio.to_thread.run_sync(_etcd_member, nemesis)
    member.kill()
    try:
        await trio.sleep(hold)
    finally:
        await trio.to_thread.run_sync(member.restart)
    return name


async def pause_etcd_member(nemesis: Nemesis, hold: float) -> str:
    member, name = await trio.to_thread.run_sync(_etcd_member, nemesis)
    member.pause()
    await _held(hold, member.resume)
    return name


async def kill_proxy(nemesis: Nemesis, hold: float) -> str:
    proxy = nemesis.rng.choice(nemesis.deployment.proxies)
    proxy.kill()
    try:
        await trio.sleep(min(hold, 1.0))
    finally:
        proxy.start()
    with trio.move_on_after(20):
        await proxy.wait_ready()
    return proxy.name


FAULTS: dict[str, Fault] = {
    "kill": kill_backend,
    "stop": stop_backend,
    "cut-etcd": cut_from_etcd,
    "cut-followers": cut_from_followers,
    "isolate-leader": isolate_leader,
    "etcd-kill": kill_etcd_member,
    "etcd-pause": pause_etcd_member,
    "proxy-kill": kill_proxy,
}
