"""The backend's reaper (BackendServer._reap_forever) runs only while items may expire: no
timer while nothing stored has an expiry, woken by a write that stores one, and it still
drops an expired item nobody reads (issue 18: an idle node costs close to nothing)."""

from __future__ import annotations

import pytest
import trio

from memring.backend.server import BackendServer
from memring.backend.settings import BackendSettings

pytestmark = pytest.mark.unit


class ReaperSteps(trio.abc.Instrument):
    """Counts how often the reaper's task ran."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("_reap_forever"):
            self.steps += 1


async def test_the_reaper_sleeps_until_an_item_can_expire() -> None:
    server = BackendServer(BackendSettings(reap_interval=0.02))
    store = server.store
    steps = ReaperSteps()
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
