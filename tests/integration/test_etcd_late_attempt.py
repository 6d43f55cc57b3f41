"""A late call leaves a member that cannot answer as soon as etcd elects a new leader
(cluster.etcd_coordinator `_watched_attempt`, cluster.etcd_leader `leader_change`), on a
real 3-member etcd with fast elections whose raft leader is SIGSTOPped.

The attempt is made long (ATTEMPT here) so that waiting it out is plain: before the change a
revocation sent to a follower, forwarded to the frozen leader and lost, or to the frozen leader
itself, was sent again only after the whole attempt; now it is sent again to the new leader
within a few Status rounds of the election (250-500 ms after the pause on a quiet machine).
(A linearizable read on a follower is not lost so: etcd retries its ReadIndex after an
election.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdCluster, running_etcd_cluster

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

ATTEMPT = 2.0  # the first attempt's timeout: far longer than etcd's election


@pytest.fixture
def etcd3() -> Iterator[EtcdCluster]:
    with running_etcd_cluster(3) as etcd:
        yield etcd


@pytest.mark.parametrize("waiting_on", ["follower", "frozen leader"])
async def test_a_late_revocation_goes_to_etcds_new_leader_once_elected(
        etcd3: EtcdCluster, waiting_on: str) -> None:
    """A lease revocation (a raft proposal: a follower forwards it to the leader, and one
    forwarded to a frozen leader is lost, even when that follower is elected next)."""
    leader = etcd3.leader()
    assert leader is not None
    first = leader if waiting_on == "frozen leader" else next(
        m for m in etcd3.members if m is not leader)
    urls = ",".join([first.url, *(m.url for m in etcd3.members if m is not first)])
    with trio.fail_after(20):
        async with EtcdCoordinator.connect(urls, "late", call_timeout=ATTEMPT + 1.0,
                                           attempt_timeout=ATTEMPT) as coordinator:
            lease, _ = await coordinator._grant(10)  # channels open, the first member current
            assert coordinator.url == first.url
            leader.pause()
            try:
                start = trio.current_time()
                await coordinator.revoke(lease)
                took = trio.current_time() - start
                new_leader = etcd3.leader()  # among the members not paused
            finally:
                leader.resume()
            print(f"\nwaiting on the {waiting_on}: lease revoked after {took * 1000:.0f} ms "
                  f"through {coordinator.url}")
            assert took < ATTEMPT  # not after the attempt: after etcd's election
            assert new_leader is not None and coordinator.url == new_leader.url
            assert await coordinator._remaining(lease) == 0
