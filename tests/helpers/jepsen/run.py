"""One Jepsen run: deploy, load with clients while the nemesis injects faults, heal, read every
key back, check the history. `run()` is what tests/chaos/test_jepsen.py and bench/jepsen.py
call; the history is written to the run's directory so a violation can be re-checked.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import trio

from tests.helpers.jepsen.deployment import Deployment, deployed
from tests.helpers.jepsen.history import Op, Outcome
from tests.helpers.jepsen.nemesis import FAULTS, ClusterMonitor, Election, FaultRecord, Nemesis
from tests.helpers.jepsen.workload import Client, LoadWindow, SharedKeys, final_reads

log = logging.getLogger("memring.jepsen")

WRITES = frozenset({"set", "cas", "incr", "delete"})


@dataclass
class RunConfig:
    seconds: float = 60.0
    faults: list[str] = field(default_factory=lambda: sorted(FAULTS))
    seed: int = 1
    clients: int = 10
    registers: int = 8
    shards: int = 2
    replicas: int = 3
    proxies: int = 2
    hold: tuple[float, float] = (1.0, 4.0)  # how long a fault lasts, seconds
    quiet: tuple[float, float] = (0.5, 2.0)  # between a fault's heal and the next fault
    # Every kind in `faults` once, in a seeded order, and the load stops `tail` seconds after
    # the last one (the cluster whole again); `seconds` is then only a bound. Otherwise kinds
    # are drawn at random until `seconds` are over.
    each_fault_once: bool = False
    tail: float = 1.0
    mode: str = "sync"  # the backends' --replication
    read_policy: str = "leader"  # round_robin: reads from in-sync followers too
    peer_tls: bool = False  # mutual TLS on the peer links (besides the secret)
    workdir: Path | None = None


@dataclass
class RunResult:
    config: RunConfig
    history: list[Op]
    final: dict[str, int | None]
    faults: list[FaultRecord]
    elections: list[Election]
    not_whole: int
    workdir: Path
    wall_offset: float = 0.0  # time.time() - trio.current_time(): history times to the logs'

    def save_events(self, path: Path) -> None:
        """Faults and elections with history times and wall-clock times, for reading a
        violation against the nodes' logs."""
        def wall(at: float) -> str:
            return time.strftime("%H:%M:%S", time.gmtime(at + self.wall_offset)) + \
                f".{int((at + self.wall_offset) % 1 * 1000):03d}"
        lines = [f"{f.start:.3f} {wall(f.start)} fault {f.kind} on {f.target}, healed "
                 f"{f.healed:.3f} {wall(f.healed)}, whole after {f.whole_after}"
                 for f in self.faults]
        lines += [f"{e.at:.3f} {wall(e.at)} election {e.shard} epoch {e.epoch} -> {e.leader}"
                  f"{' UNCLEAN' if e.unclean else ''}" for e in self.elections]
        path.write_text("\n".join(sorted(lines)) + "\n")

    @property
    def unclean_elections(self) -> int:
        return sum(e.unclean for e in self.elections)

    def longest_write_gap(self) -> float:
        """The longest time any register key went without an acknowledged write while the
        nemesis ran: the write unavailability clients saw on that key's shard."""
        by_key: dict[str, list[float]] = {}
        for op in self.history:
            if op.kind in WRITES and op.outcome is Outcome.OK and not op.key.startswith("fresh:") \
                    and op.complete is not None:
                by_key.setdefault(op.key, []).append(op.complete)
        longest = 0.0
        for times in by_key.values():
            times.sort()
            longest = max([longest, *(b - a for a, b in itertools.pairwise(times))])
        return longest


async def _heal_everything(deployment: Deployment, monitor: ClusterMonitor) -> None:
    for link in (link for backend in deployment.backends for link in backend.links()):
        link.heal()
    waited = await monitor.wait_whole()
    if waited is None:
        log.warning("cluster not whole after the run: final reads may fail")


async def run(config: RunConfig) -> RunResult:
    rng = random.Random(config.seed)
    history: list[Op] = []
    registers = [f"r{i}" for i in range(config.registers)]
    shared = SharedKeys()
    async with deployed(shards=config.shards, replicas=config.replicas,
                        proxies=config.proxies, workdir=config.workdir,
                        mode=config.mode, read_policy=config.read_policy,
                        peer_tls=config.peer_tls) as deployment:
        monitor = ClusterMonitor(deployment)
        async with trio.open_nursery() as outer:
            await outer.start(monitor.run)
            if await monitor.wait_whole() is None:
                raise RuntimeError("the cluster did not come up whole: see "
                                   f"{deployment.workdir}")
            nemesis = Nemesis(deployment, monitor, random.Random(rng.random()), config.faults,
                              hold=config.hold, quiet=config.quiet,
                              each_once=config.each_fault_once)
            ports = [p.port for p in deployment.proxies]
            window = LoadWindow(trio.current_time() + config.seconds)

            async def faults_then_tail() -> None:
                await nemesis.run(window.end)
                window.end = min(window.end, trio.current_time() + config.tail)

            async with trio.open_nursery() as load:
                for number in range(config.clients):
                    client = Client(number, ports, registers, shared, history.append,
                                    random.Random(rng.random()))
                    load.start_soon(client.run, window)
                load.start_soon(faults_then_tail)
            await _heal_everything(deployment, monitor)
            final = await final_reads(ports[0], registers + shared.fresh)
            outer.cancel_scope.cancel()
        return RunResult(config, history, final, nemesis.faults, monitor.elections,
                         nemesis.not_whole, deployment.workdir,
                         time.time() - trio.current_time())
