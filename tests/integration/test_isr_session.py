"""A follower that loses its etcd session and rejoins with a new lease, under the same leader
and over the same peer connection, must be back in the etcd ISR under its *new* incarnation
within a short bound (issue 12): the ISR names incarnations (node id + lease), and only an
incarnation in it may win a clean election.

The reproduction: a sync shard of 2, 200 keys written, the follower frozen (SIGSTOP) for
4 s, past the 2 s lease TTL, so etcd expires its lease while its peer TCP connection
survives; after SIGCONT it opens a new session (a new lease). Then the leader is killed: the
follower holds every key and must win a clean election. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import time
from collections.abc import Iterator

import pytest
import trio

from memring.cluster.etcd_process import EtcdProcess
from tests.helpers import servers, wire
from tests.helpers.cluster import SHARD, ReplicatedShard, node_id, wait_for, wait_in_sync
from tests.helpers.replicas import dump, pipeline

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

_clusters = itertools.count(1)
FREEZE = 4.0  # past the 2 s lease TTL (+ etcd's ~0.5 s expiry tick)
BACK_IN_SYNC = 5.0  # the bound from SIGCONT to the new incarnation in the etcd ISR


class SyncShard(ReplicatedShard):
    mode = "sync"

    def lease(self, node: servers.RunningServer) -> int:
        view = trio.run(self.view)
        return view.lease_of(view.keyspace.node(node_id(node)))


@contextlib.contextmanager
def sync_shard(etcd: EtcdProcess, size: int) -> Iterator[SyncShard]:
    with contextlib.ExitStack() as stack:
        shard = SyncShard(etcd, stack, f"is{next(_clusters)}", {})
        for _ in range(size):
            shard.start()
        yield shard


def test_follower_with_a_new_lease_rejoins_the_isr_and_wins_a_clean_election(
        etcd: EtcdProcess) -> None:
    with sync_shard(etcd, 2) as shard:
        leader = shard.leader()
        trio.run(wait_in_sync, shard, 10.0)
        (follower,) = [n for n in shard.live() if n is not leader]
        keys = [b"key%d" % i for i in range(200)]
        with wire.connect(leader) as sock:
            for start in range(0, len(keys), 50):
                assert pipeline(sock, [b"set %s 0 0 %d\r\nv%s\r\n" % (k, len(k) + 1, k)
                                       for k in keys[start:start + 50]]) == b"STORED\r\n" * 50
        old_lease = shard.lease(follower)
        assert old_lease

        servers.freeze(follower.process.pid)
        try:
            time.sleep(FREEZE)
        finally:
            follower.process.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        try:
            view = trio.run(wait_in_sync, shard, BACK_IN_SYNC)
        except trio.TooSlowError:
            view = trio.run(shard.view)
            raise AssertionError(
                f"follower not back in the ISR {BACK_IN_SYNC} s after SIGCONT: ISR "
                f"{view.shards[SHARD].isr}, follower lease now "
                f"{view.lease_of(view.keyspace.node(node_id(follower))):x} (was "
                f"{old_lease:x})\n--- leader:\n{leader.log_text()[-2000:]}\n--- follower:\n"
                f"{follower.log_text()[-2000:]}") from None
        back = time.monotonic() - resumed
        new_lease = view.lease_of(view.keyspace.node(node_id(follower)))
        assert new_lease != old_lease, "the freeze did not cost the follower its session"
        print(f"\nfollower back in the ISR (lease {old_lease:x} -> {new_lease:x}) "
              f"{back * 1000:.0f} ms after SIGCONT")

        leader.process.kill()
        leader.process.wait(5)
        wait_for(lambda: shard.role(follower) == "leader", 5.0, "the follower leading")
        assert "unclean election" not in follower.log_text(), follower.log_text()[-2000:]
        items = dump(follower, keys)
        missing = [k for k in keys if items[k] is None]
        assert not missing, f"{len(missing)} keys missing on the new leader, e.g. {missing[:5]}"
