"""`Coordinator.follow()` when the store refuses us (AccessDenied: a role changed, a password
rotated under a running cluster): the last view stands and the follower tries again later,
as through an outage, so a proxy keeps routing instead of dying while an operator fixes it."""

from __future__ import annotations

import pytest
import trio

from memring.cluster import coordinator as coordinator_module
from memring.cluster.coordinator import AccessDenied, ClusterConfig
from memring.cluster.keyspace import Entry
from memring.cluster.memory_coordinator import MemoryCoordinator, open_memory_etcd

pytestmark = pytest.mark.unit


class RefusingCoordinator(MemoryCoordinator):
    """Refuses reads while `refusing` is set."""

    refusing = False
    refusals = 0

    async def _read(self, key: str, *, prefix: bool = False) -> tuple[int, dict[str, Entry]]:
        if self.refusing:
            self.refusals += 1
            raise AccessDenied("etcd at test denied user 'memring' access")
        return await super()._read(key, prefix=prefix)


async def test_follow_keeps_the_last_view_and_tries_again(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(coordinator_module, "ACCESS_RETRY", 0.05)
    with trio.fail_after(10):
        async with open_memory_etcd() as store:
            coordinator = RefusingCoordinator(store, "c")
            await coordinator.put_config(ClusterConfig())
            coordinator.refusing = True
            async with coordinator.follow(retry_interval=0.01) as views:
                while coordinator.refusals < 3:  # refused, logged, asked again
                    await trio.sleep(0.01)
                with pytest.raises(trio.WouldBlock):
                    views.receive_nowait()
                coordinator.refusing = False
                view = await views.receive()
                assert view.config == ClusterConfig()
            await coordinator.aclose()
    assert "following the cluster: etcd at test denied user 'memring' access; retrying" \
        in caplog.text
