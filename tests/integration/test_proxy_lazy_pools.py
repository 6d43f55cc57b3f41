"""A proxy over a big static topology opens backend connections only for the shards it is
asked about, closes them when idle, and closes a removed node's on reload (proxy.pool).

256 shards x 3 replicas: the first few shards lead on real memcached processes, every other
node is a closed port that a connecting proxy would hit (and log). The connections are
counted from /proc (tests/helpers/process_sockets.py), not from the proxy's own stats.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from memring.cluster.static_topology import NodeSpec, ShardSpec, shards_toml
from memring.proxy.ketama import KetamaRing
from tests.helpers import servers, wire
from tests.helpers.process_sockets import established_peer_ports

pytestmark = pytest.mark.integration

SHARDS = 256
REPLICAS = 3
HOST = servers.HOST


def topology(leaders: Sequence[servers.RunningServer], closed: Iterator[int]) -> list[ShardSpec]:
    """256 x 3: shard s<i> for i < len(leaders) leads on leaders[i]; every other node is a
    closed port."""
    shards = []
    for index in range(SHARDS):
        first = leaders[index].port if index < len(leaders) else next(closed)
        ports = [first, *(next(closed) for _ in range(REPLICAS - 1))]
        shards.append(ShardSpec(f"s{index}", tuple(NodeSpec(HOST, port) for port in ports)))
    return shards


def closed_ports() -> Iterator[int]:
    while True:
        yield servers.free_port()  # handed out once, nothing listens there


RING = KetamaRing([(f"s{i}", 1) for i in range(SHARDS)])


def key_of(shard: int) -> bytes:
    for n in range(100_000):
        key = b"key-%d" % n
        if RING.server_for(key) == shard:
            return key
    raise AssertionError(f"no key for shard {shard}")


def write(path: Path, shards: Sequence[ShardSpec], **proxy: object) -> None:
    table = "".join(f"{k} = {v}\n" for k, v in proxy.items())
    path.write_text(f"[proxy]\n{table}{shards_toml(shards)}")


def backend_connections(proxy: servers.RunningServer, shards: Sequence[ShardSpec]
                        ) -> list[int]:
    """The ports of the topology's nodes the proxy holds an established connection to."""
    ports = {node.port for shard in shards for node in shard.nodes}
    return sorted(port for port in established_peer_ports(proxy.pid) if port in ports)


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_no_connection_before_a_request_then_one_per_shard_asked(tmp_path: Path) -> None:
    with servers.memcached() as a, servers.memcached() as b, servers.memcached() as c:
        leaders = (a, b, c)
        shards = topology(leaders, closed_ports())
        config = tmp_path / "big.toml"
        write(config, shards, pool_size=1)
        with servers.running("memring-proxy", servers.proxy_argv(str(config))) as proxy:
            assert backend_connections(proxy, shards) == []  # (`stats` would ask every shard)
            for index, leader in enumerate(leaders):
                key = key_of(index)
                assert wire.request(leader, b"set %s 0 0 2\r\nv%d\r\n" % (key, index)) == \
                    b"STORED\r\n"
                assert wire.request(proxy, b"get %s\r\n" % key) == \
                    b"VALUE %s 0 2\r\nv%d\r\nEND\r\n" % (key, index)
                assert backend_connections(proxy, shards) == \
                    sorted(s.port for s in leaders[:index + 1])
            # nothing was tried on the 765 nodes nobody asked for
            assert "cannot connect" not in proxy.log_text()


def test_reload_closes_a_removed_node_and_a_new_leader_connects_on_demand(
        tmp_path: Path) -> None:
    with servers.memcached() as a, servers.memcached() as b, servers.memcached() as c:
        closed = closed_ports()
        shards = topology((a, b), closed)
        config = tmp_path / "big.toml"
        write(config, shards, pool_size=1)
        with servers.running("memring-proxy", servers.proxy_argv(str(config))) as proxy:
            for index in (0, 1):
                assert wire.request(proxy, b"get %s\r\n" % key_of(index)) == b"END\r\n"
            assert backend_connections(proxy, shards) == sorted((a.port, b.port))
            # s1's leader changes from b to c: b leaves the topology
            moved = [*shards]
            moved[1] = ShardSpec("s1", (NodeSpec(HOST, c.port), *shards[1].nodes[1:]))
            write(config, moved, pool_size=1)
            proxy.process.send_signal(signal.SIGHUP)
            wait_for(lambda: backend_connections(proxy, moved + shards) == [a.port])
            key = key_of(1)
            assert wire.request(c, b"set %s 0 0 1\r\nc\r\n" % key) == b"STORED\r\n"
            assert wire.request(proxy, b"get %s\r\n" % key) == b"VALUE %s 0 1\r\nc\r\nEND\r\n" % key
            assert backend_connections(proxy, moved + shards) == sorted((a.port, c.port))


def test_idle_connections_close_and_reopen_on_the_next_request(tmp_path: Path) -> None:
    with servers.memcached() as a:
        shards = topology((a,), closed_ports())
        config = tmp_path / "big.toml"
        write(config, shards, pool_size=2, backend_idle_ms=300)
        key = key_of(0)
        assert wire.request(a, b"set %s 0 0 1\r\nx\r\n" % key) == b"STORED\r\n"
        with servers.running("memring-proxy", servers.proxy_argv(str(config))) as proxy:
            hit = b"VALUE %s 0 1\r\nx\r\nEND\r\n" % key
            assert wire.request(proxy, b"get %s\r\n" % key) == hit
            assert backend_connections(proxy, shards) == [a.port, a.port]  # pool_size 2
            wait_for(lambda: backend_connections(proxy, shards) == [])
            assert wire.stats(proxy)[f"backend:{HOST}:{a.port}:state"] == "up"  # dormant
            assert wire.request(proxy, b"get %s\r\n" % key) == hit
            assert backend_connections(proxy, shards) == [a.port, a.port]
