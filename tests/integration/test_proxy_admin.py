"""Admin commands through the proxy have cluster semantics, never a raw fan-out (issue 11).

Found before: `cache_memlimit 8` through the proxy set all six backends to 8 MB, and in
cluster mode `flush_all` emptied the cluster but answered `SERVER_ERROR not the leader of
shard s1` (it went to followers too). Now flush_all goes to each shard's leader (followers
get it by replication) and answers OK only when each did; cache_memlimit is refused by the
proxy; a follower refuses cache_memlimit straight from a client (it must stay like its
leader).
"""

from __future__ import annotations

import pytest

from memring.cluster.etcd_process import EtcdProcess
from tests.helpers import servers, wire
from tests.helpers.cluster import proxy_argv, replicated_shard, wait_for

pytestmark = pytest.mark.integration

REFUSED = b"SERVER_ERROR cache_memlimit is set on each backend, not through the proxy\r\n"


def test_cache_memlimit_is_refused_by_the_proxy_and_reaches_no_backend() -> None:
    with servers.proxy_over("memcached", shards=3) as proxy:
        before = [wire.stats(node)["limit_maxbytes"] for node in proxy.upstreams]
        assert wire.request(proxy, b"cache_memlimit 8\r\n") == REFUSED
        assert wire.request(proxy, b"cache_memlimit 8 noreply\r\n") == b""
        assert [wire.stats(node)["limit_maxbytes"] for node in proxy.upstreams] == before


def test_static_flush_all_reaches_every_node_of_every_shard() -> None:
    with servers.proxy_over("backend", shards=2, replicas=2) as proxy:
        keys = [b"k%d" % i for i in range(40)]
        for node in proxy.upstreams:
            wire.store(node, {k: b"v" for k in keys})
        assert wire.request(proxy, b"flush_all\r\n") == b"OK\r\n"
        for node in proxy.upstreams:
            assert wire.request(node, b"get " + b" ".join(keys) + b"\r\n") == \
                b"END\r\n"


@pytest.mark.requires_etcd
def test_cluster_flush_all_goes_to_the_leader_and_followers_refuse_cache_memlimit(
        etcd: EtcdProcess) -> None:
    with replicated_shard(etcd, 2) as shard:
        leader = shard.leader()
        follower = next(n for n in shard.live() if n is not leader)
        wait_for(lambda: shard.role(follower) == "follower", 5.0, "follower role")
        proxy = shard.stack.enter_context(servers.running("proxy",
                                                          proxy_argv(etcd.url, shard.cluster)))
        wait_for(lambda: wire.request(proxy, b"set k 0 0 1\r\nv\r\n").startswith(b"STORED"),
                 10.0, "writes through the proxy")
        wait_for(lambda: wire.request(follower, b"get k\r\n").startswith(b"VALUE"), 5.0,
                 "the write replicated")
        assert wire.request(proxy, b"flush_all\r\n") == b"OK\r\n"
        assert wire.request(proxy, b"get k\r\n") == b"END\r\n"
        wait_for(lambda: wire.request(follower, b"get k\r\n").startswith(b"END"), 5.0,
                 "the flush replicated")
        follower_limit = wire.stats(follower)["limit_maxbytes"]
        refusal = wire.request(follower, b"cache_memlimit 8\r\n")
        assert refusal.startswith(b"SERVER_ERROR not the leader of shard "), refusal
        assert wire.stats(follower)["limit_maxbytes"] == follower_limit
        assert wire.request(leader, b"cache_memlimit 100\r\n") == b"OK\r\n"
