"""The Coordinator contract against a real etcd process, plus what only a real etcd shows:
a killed etcd refuses at once, a restarted one is reconnected to, and sessions re-sync.

One etcd (fast elections, so a 1 s TTL holds) serves the module; each test uses its own cluster
prefix. Tests that kill etcd start their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
import trio

from memring.cluster.coordinator import Coordinator, CoordinatorUnavailable, NodeRecord
from memring.cluster.etcd_coordinator import EtcdCoordinator, parse_endpoints
from memring.cluster.etcd_process import EtcdProcess, free_port, start_etcd
from tests.helpers.coordinator_contract import (
    CALL_TIMEOUT,
    CONNECT_TIMEOUT,
    CoordinatorContract,
    Harness,
)
from tests.helpers.run_queue import Stopwatch

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]


class EtcdHarness(Harness):
    expiry_slack = 0.6  # etcd's lessor checks expiry every 500 ms

    def __init__(self, member: EtcdProcess) -> None:
        super().__init__()
        self.member = member

    @asynccontextmanager
    async def client(self) -> AsyncIterator[Coordinator]:
        async with EtcdCoordinator.connect(self.member.url, self.cluster,
                                           call_timeout=CONNECT_TIMEOUT) as coordinator:
            coordinator.call_timeout = CALL_TIMEOUT
            yield coordinator

    def freeze(self) -> None:
        self.member.pause()

    def thaw(self) -> None:
        if self.member.paused:
            self.member.resume()


class TestEtcdCoordinator(CoordinatorContract):
    @pytest.fixture
    def harness(self, etcd: EtcdProcess) -> Iterator[Harness]:
        harness = EtcdHarness(etcd)
        try:
            yield harness
        finally:
            harness.thaw()


def test_parse_endpoints() -> None:
    assert parse_endpoints("http://127.0.0.1:2379, 10.0.0.2:2380") == [
        "127.0.0.1:2379", "10.0.0.2:2380"]
    assert parse_endpoints("https://x:1,https://y:2") == ["x:1", "y:2"]
    with pytest.raises(ValueError, match="ftp://x:1"):
        parse_endpoints("ftp://x:1")
    with pytest.raises(ValueError, match="etcd URLs mix http and https: give every member as "
                       "https:// \\(TLS\\) or every one as http://"):
        parse_endpoints("https://x:1,http://y:2")
    with pytest.raises(ValueError, match="mix http and https"):
        parse_endpoints("https://x:1,y:2")  # bare means http


async def test_unreachable_at_start_is_a_clear_error() -> None:
    with trio.fail_after(5):
        port = free_port()
        stopwatch = Stopwatch()
        with pytest.raises(CoordinatorUnavailable, match=f"127.0.0.1:{port}.*etcd"):
            async with EtcdCoordinator.connect(f"http://127.0.0.1:{port}", "c",
                                               call_timeout=CALL_TIMEOUT):
                pass
        assert stopwatch.elapsed_less_load() < CALL_TIMEOUT + 0.5, stopwatch


def test_status_reads_through_a_later_endpoint_when_the_first_is_down(
        etcd: EtcdProcess) -> None:
    """Issue 12: `memring status` failed when the first of three endpoints was down."""
    dead = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "memring", "status", "--json", "--etcd", f"{dead},{etcd.url}",
         "--cluster", "nobody-here"], capture_output=True, text=True, timeout=30)
    assert done.returncode in (0, 1), done.stderr  # 1: no shard has a leader (none exist)
    assert json.loads(done.stdout)["cluster"] == "nobody-here", done.stderr


async def test_reads_go_to_the_next_endpoint(etcd: EtcdProcess) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with trio.fail_after(10):
        async with EtcdCoordinator.connect(f"{dead},{etcd.url}", "failover",
                                           call_timeout=CALL_TIMEOUT) as coordinator:
            view = await coordinator.snapshot()  # the probe and this read passed the dead one
            assert view.shards == {}
            assert coordinator.url == etcd.url


async def test_killed_etcd_refuses_then_restart_resyncs() -> None:
    member = start_etcd()
    try:
        with trio.fail_after(40):
            async with (EtcdCoordinator.connect(member.url, "restart",
                                                call_timeout=CALL_TIMEOUT) as coord,
                        coord.follow(retry_interval=0.2) as views):
                first = await views.receive()
                member.kill()
                stopwatch = Stopwatch()
                with pytest.raises(CoordinatorUnavailable, match="is etcd running"):
                    await coord.snapshot()
                refused = stopwatch.elapsed()
                assert stopwatch.elapsed_less_load() < CALL_TIMEOUT + 0.5, stopwatch
                # the same data dir on the same ports: clients reconnect by themselves
                await trio.to_thread.run_sync(member.restart)
                back = trio.current_time()
                async with coord.open_session(1) as session:
                    await coord.register_node(session, NodeRecord("n1", "127.0.0.1:1", "s1"))
                    async for view in views:
                        if "n1" in view.nodes:
                            break
                    assert view.revision > first.revision
                print(f"killed etcd refused in {refused * 1000:.0f} ms; after restart a session "
                      f"and the follower's view were back in {trio.current_time() - back:.2f}s")
    finally:
        member.stop()


async def test_keepalives_share_one_connection_and_survive_cancelled_ones(
        etcd: EtcdProcess) -> None:
    """Keepalives go to etcd's JSON gateway over one kept connection, with no thread; a
    keepalive cancelled while it waits for its answer (a session ending) closes that
    connection, so the next one never reads the late answer as its own. (A bare lease: no
    session's own keepalives in between.)"""
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(etcd.url, "keepalive-gateway",
                                           call_timeout=CALL_TIMEOUT) as coordinator:
            lease, _ = await coordinator._grant(30)
            threads = threading.active_count()
            assert await coordinator._keepalive(lease, timeout=CALL_TIMEOUT) > 0
            assert coordinator.leases._gateway is not None
            index, gateway = coordinator.leases._gateway
            used = gateway._stream
            assert await coordinator._keepalive(lease, timeout=CALL_TIMEOUT) > 0
            assert coordinator.leases._gateway == (index, gateway) and gateway._stream is used
            assert threading.active_count() <= threads  # no thread for a keepalive
            etcd.pause()  # no answer comes: each keepalive waits on the connection
            cancelled = 0
            try:
                for _ in range(3):
                    with trio.move_on_after(0.2) as waited:
                        await coordinator._keepalive(lease, timeout=CALL_TIMEOUT)
                    if waited.cancelled_caught:  # (on a loaded machine etcd may answer one
                        # keepalive sent after the SIGSTOP: its threads stop when next run)
                        cancelled += 1
                        assert not gateway.connected
            finally:
                etcd.resume()
            assert cancelled >= 1
            assert await coordinator._keepalive(lease, timeout=CALL_TIMEOUT) > 0
            assert await coordinator.revoke(lease)
            assert await coordinator._keepalive(lease, timeout=CALL_TIMEOUT) == 0  # revoked
