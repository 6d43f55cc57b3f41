"""Dumps through the proxy: `stats cachedump` and `lru_crawler metadump` (issue 14).

Measured before: both answered ERROR through the proxy. Now each shard leader's lines come
back, leader after leader, under one END: byte for byte the leaders' own dumps (asked
directly) concatenated in shard order. Refusals are memcached's. The memcached shards run
without the LRU maintainer, so that cachedump lists every item at once and the same way
twice.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

VALUES = {b"dump:%d" % i: b"x" * (i % 50) for i in range(300)}
STILL = ("-o", "no_lru_maintainer")  # items stay where a dump finds them


def memcached() -> contextlib.AbstractContextManager[servers.RunningServer]:
    return servers.running("memcached", servers.memcached_argv(*STILL), graceful=False)


@contextlib.contextmanager
def dumpable(shards: int = 2) -> Iterator[tuple[servers.RunningServer,
                                                list[servers.RunningServer]]]:
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(memcached()) for _ in range(shards)]
        proxy = stack.enter_context(servers.proxy([[node] for node in nodes],
                                                  timeout_ms=2000, failure_limit=1))
        wire.store(proxy, VALUES)
        yield proxy, nodes


def dump(server: servers.RunningServer, line: bytes) -> bytes:
    """A dump on a connection of its own (memcached drops what is pipelined after a
    metadump, the `mn` of wire.request included)."""
    with wire.connect(server) as sock:
        sock.sendall(line)
        return wire.read_until(sock, b"END\r\n", timeout=10)


def body(reply: bytes) -> bytes:
    assert reply.endswith(b"END\r\n"), reply[-100:]
    return reply[:-len(b"END\r\n")]


@pytest.mark.parametrize("line", [b"stats cachedump 1 0\r\n", b"stats cachedump 2 5\r\n",
                                  b"lru_crawler metadump all\r\n",
                                  b"lru_crawler metadump 1,2\r\n",
                                  b"lru_crawler metadump hash\r\n"])
def test_the_dump_is_each_leaders_in_shard_order(line: bytes) -> None:
    with dumpable() as (proxy, nodes):
        through = dump(proxy, line)
        direct = [dump(node, line) for node in nodes]
        assert through == body(direct[0]) + body(direct[1]) + b"END\r\n"
        listed = through.count(b"\n") - 1
        if line == b"stats cachedump 2 5\r\n":
            assert listed == 10  # M items of each shard: up to M x shards in all
        if b"all" in line or b"hash" in line:
            assert listed == len(VALUES)
        assert body(direct[0]) and body(direct[1])


def test_refusals_are_memcacheds() -> None:
    with dumpable() as (proxy, nodes):
        for line in (b"stats cachedump 1\r\n", b"stats cachedump 99 0\r\n",
                     b"stats cachedump x y\r\n", b"lru_crawler metadump 99\r\n",
                     b"lru_crawler metadump\r\n", b"lru_crawler\r\n",
                     b"lru_crawler metadump a b\r\n", b"lru_crawler metadump HTTP/1.1\r\n",
                     b"lru_crawler HTTP/1.1\r\n", b"lru_crawler metadump all noreply\r\n"):
            assert wire.request(proxy, line) == wire.request(nodes[0], line), line
        # the crawler's settings belong to each backend
        assert wire.request(proxy, b"lru_crawler crawl all\r\n") == \
            b"SERVER_ERROR lru_crawler is set on each backend, not through the proxy\r\n"


def test_requests_pipelined_after_a_metadump_are_answered() -> None:
    """memcached alone drops them; the proxy asks the leaders on connections of their own,
    so the client's and everyone else's requests on the shared connections go on."""
    with dumpable() as (proxy, nodes):
        key = next(iter(VALUES))
        reply = wire.request(proxy, b"lru_crawler metadump all\r\nget %s\r\n" % key)
        value = wire.get_reply({key: VALUES[key]}) + b"END\r\n"
        assert reply.endswith(b"END\r\n" + value) and reply.count(b"key=") == len(VALUES)
        counters = wire.stats(proxy, "proxy")
        assert all(wire.backend_stats(counters, node)["errors"] == "0" for node in nodes)


def test_a_dead_leader_is_left_out() -> None:
    with dumpable() as (proxy, nodes):
        alive = dump(nodes[0], b"lru_crawler metadump all\r\n")
        nodes[1].process.kill()
        nodes[1].process.wait(5)
        assert dump(proxy, b"lru_crawler metadump all\r\n") == alive
        nodes[0].process.kill()
        nodes[0].process.wait(5)
        assert dump(proxy, b"stats cachedump 1 0\r\n") == b"END\r\n"


def test_memring_backends_dump_through_the_proxy() -> None:
    """Over memring backends too: every key once, under one END (memcdump's path)."""
    with servers.proxy_over("backend", shards=2) as proxy:
        wire.store(proxy, VALUES)
        metadump = dump(proxy, b"lru_crawler metadump all\r\n")
        assert metadump.endswith(b"END\r\n") and metadump.count(b"key=") == len(VALUES)
        cachedump = dump(proxy, b"stats cachedump 1 0\r\n")
        assert cachedump.endswith(b"END\r\n") and cachedump.count(b"ITEM ") > 0
