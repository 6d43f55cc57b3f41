"""The Coordinator contract (tests/helpers/coordinator_contract.py) run against the in-memory
fake (marker unit); tests/integration/test_etcd_coordinator.py runs it against a real etcd
process (marker integration), so the fake cannot drift from etcd.

A harness gives the tests clients of one store and two faults: `freeze()` (calls hang, like a
SIGSTOPped etcd) and `thaw()`. Every test has an absolute `fail_after`; every wait is bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from memring.cluster.coordinator import Coordinator
from memring.cluster.memory_coordinator import MemoryCoordinator, MemoryEtcd, open_memory_etcd
from tests.helpers.coordinator_contract import CALL_TIMEOUT, CoordinatorContract, Harness


class MemoryHarness(Harness):
    expiry_slack = 0.2

    def __init__(self, store: MemoryEtcd) -> None:
        super().__init__()
        self.store = store

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Coordinator]:
        coordinator = MemoryCoordinator(self.store, self.cluster, call_timeout=CALL_TIMEOUT)
        try:
            yield coordinator
        finally:
            await coordinator.aclose()

    def freeze(self) -> None:
        self.store.freeze()

    def thaw(self) -> None:
        self.store.thaw()


class TestMemoryCoordinator(CoordinatorContract):
    pytestmark = pytest.mark.unit

    @pytest.fixture
    async def harness(self) -> AsyncIterator[Harness]:
        async with open_memory_etcd() as store:
            yield MemoryHarness(store)
