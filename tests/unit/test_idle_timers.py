"""Timers that sleep while there is nothing to do (issue 18: an idle node costs close to
nothing): the backend's reaper (BackendServer._reap_forever) runs only while items may
expire, woken by a write that stores one, and still drops an expired item nobody reads; a
followed watch with a single endpoint runs no endpoint check (nowhere to move to)."""

from __future__ import annotations

import pytest
import trio

from memring.backend.server import BackendServer
from memring.backend.settings import BackendSettings
from memring.cluster.memory_coordinator import MemoryCoordinator, MemoryEtcd
from memring.cluster.records import ClusterConfig

pytestmark = pytest.mark.unit


class TaskSteps(trio.abc.Instrument):
    """Counts how often a task whose name ends with `name` ran."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith(self.name):
            self.steps += 1


async def test_the_reaper_sleeps_until_an_item_can_expire() -> None:
    server = BackendServer(BackendSettings(reap_interval=0.02))
    store = server.store
    steps = TaskSteps("_reap_forever")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server._reap_forever)
            trio.lowlevel.add_instrument(steps)
            try:
                store.store(b"set", b"kept", b"x", 0, 0)
                await trio.sleep(1.0)  # 50 reap intervals
                assert steps.steps <= 3, steps.steps  # once after its first interval
                store.store(b"set", b"brief", b"x", 0, 1)  # expires within 1-2 s
                while b"brief" in store.items:  # dropped with nobody reading it
                    await trio.sleep(0.05)
                assert list(store.items) == [b"kept"] and store.stats.reclaimed == 1
                before = steps.steps
                await trio.sleep(1.0)
                assert steps.steps - before <= 3, steps.steps - before
            finally:
                trio.lowlevel.remove_instrument(steps)
                nursery.cancel_scope.cancel()


async def test_a_single_endpoint_is_not_checked_for_a_watch() -> None:
    """follow(check_interval=...) checks that the watched member answers so as to move off a
    frozen one; with one endpoint there is none to move to, and no timer runs."""
    steps = TaskSteps("_keep_checking_watched")
    coordinator = MemoryCoordinator(MemoryEtcd(), "idle")
    with trio.fail_after(10):
        trio.lowlevel.add_instrument(steps)
        try:
            async with coordinator.follow(check_interval=0.01) as views:
                await views.receive()
                await coordinator.put_config(ClusterConfig(lease_ttl=2.5))
                await views.receive()  # the watch is up
                await trio.sleep(0.5)  # 50 check intervals
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert steps.steps <= 1, steps.steps
