"""`stats` through the proxy answers the cluster's figures (issue 14).

Measured before: `stats settings|items|slabs|sizes|conns|detail dump` through the proxy
answered ERROR, and plain `stats` had only the proxy's counters (no curr_items, bytes,
get_hits). Now the memcached counters are the sums over the shard leaders, the per-class
subcommands are summed per class, and the proxy's own lines stay. Two shards; the sums are
checked against each backend's own `stats`, asked directly, with no traffic in between.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from memring.proxy.cluster_stats import SUMMED_STATS
from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

VALUES = {b"item:%d" % i: b"v" * (i % 300) for i in range(400)}


@contextlib.contextmanager
def two_shards(kind: str) -> Iterator[tuple[servers.RunningServer, list[servers.RunningServer]]]:
    """A proxy over two one-node shards of `kind`, with VALUES stored and read (hits and
    misses): (proxy, the shards' nodes)."""
    with contextlib.ExitStack() as stack:
        nodes = [stack.enter_context(servers.start(kind)) for _ in range(2)]
        proxy = stack.enter_context(servers.proxy([[node] for node in nodes],
                                                  timeout_ms=500, failure_limit=1))
        wire.store(proxy, VALUES)
        keys = list(VALUES)
        wire.request(proxy, b"get " + b" ".join([*keys[:250], b"nope:1", b"nope:2"]) + b"\r\n")
        wire.request(proxy, b"delete item:1\r\ndelete nope\r\nincr nope 1\r\ntouch item:2 0\r\n")
        yield proxy, nodes


def summed(nodes: list[servers.RunningServer], args: str = "") -> dict[str, int]:
    """Each numeric line of the nodes' own `stats ARGS`, summed."""
    sums: dict[str, int] = {}
    for node in nodes:
        for name, value in wire.stats(node, args).items():
            if value.isdigit():
                sums[name] = sums.get(name, 0) + int(value)
    return sums


def without_ages(stats: dict[str, str]) -> dict[str, str]:
    """Per-class lines but the ages (seconds: they tick between two requests)."""
    return {k: v for k, v in stats.items() if not k.rpartition(":")[2].startswith("age")}


@pytest.mark.parametrize("kind", ["memcached", "backend"])
def test_stats_are_the_sums_of_the_shard_leaders(kind: str) -> None:
    with two_shards(kind) as (proxy, nodes):
        through = wire.stats(proxy)
        direct = summed(nodes)
        compared = [name for name in SUMMED_STATS if name in direct]
        assert {"curr_items", "bytes", "get_hits", "get_misses", "cmd_get", "cmd_set",
                "total_items", "limit_maxbytes", "evictions"} <= set(compared)
        assert {name: int(through[name]) for name in compared} == \
            {name: direct[name] for name in compared}
        assert int(through["curr_items"]) == len(VALUES) - 1
        assert int(through["get_hits"]) == 250 and int(through["get_misses"]) == 2
        print(f"\n{kind}: through the proxy {dict((n, through[n]) for n in compared[:12])}")
        # the proxy's own lines: its pid, its connections, its counters
        assert through["pid"] == str(proxy.process.pid) != str(os.getpid())
        assert through["memring_role"] == "proxy"
        assert (through["memring_shards"], through["memring_shards_answered"]) == ("2", "2")
        assert int(through["cmd_Store"]) == len(VALUES)
        # the proxy's own count: the setup's connections are gone once it has read their
        # hang-ups (asynchronously, as memcached: under load a stats can come first)
        wire.only_connection(proxy, timeout=5.0).close()


def test_a_shard_that_does_not_answer_is_left_out_and_counted() -> None:
    with two_shards("memcached") as (proxy, nodes):
        nodes[1].process.kill()
        nodes[1].process.wait(5)
        through = wire.stats(proxy)
        assert (through["memring_shards"], through["memring_shards_answered"]) == ("2", "1")
        alone = summed(nodes[:1])
        assert int(through["curr_items"]) == alone["curr_items"]
        assert int(through["bytes"]) == alone["bytes"]
        # the per-class and settings subcommands answer too, from the shard that can
        assert without_ages(wire.stats(proxy, "items")) == \
            without_ages(wire.stats(nodes[0], "items"))
        assert wire.stats(proxy, "settings")["memring_shards_answered"] == "1"


@pytest.mark.parametrize("kind", ["memcached", "backend"])
def test_items_and_slabs_are_summed_per_class(kind: str) -> None:
    with two_shards(kind) as (proxy, nodes):
        for args in ("items", "slabs"):
            through = wire.stats(proxy, args)
            direct = summed(nodes, args)
            assert through, args
            for name, value in through.items():
                if name.rpartition(":")[2] in ("chunk_size", "chunks_per_page", "age",
                                               "age_hot", "age_warm", "evicted_time"):
                    values = [int(wire.stats(n, args).get(name, 0)) for n in nodes]
                    slack = 1 if "age" in name else 0  # seconds tick between two requests
                    assert 0 <= max(values) - int(value) <= slack, (args, name, values)
                else:
                    assert int(value) == direct[name], (args, name, value, direct[name])
            assert set(through) == set(direct), args
        numbers = [int(v) for k, v in wire.stats(proxy, "items").items() if k.endswith(":number")]
        assert sum(numbers) == len(VALUES) - 1
        reply = wire.request(proxy, b"stats items\r\n")
        classes = [int(line.split(b":")[1]) for line in reply.split(b"\r\n")[:-2]]
        assert classes == sorted(classes) and reply.endswith(b"END\r\n")  # memcached's order


def test_settings_conns_detail_and_unknown() -> None:
    with two_shards("memcached") as (proxy, nodes):
        settings = wire.stats(proxy, "settings")
        assert int(settings["maxbytes"]) == summed(nodes, "settings")["maxbytes"]
        assert settings["tcpport"] == str(proxy.port)
        assert settings["memring_on_shard_error"] == "miss"
        assert settings["item_size_max"] == "1048576"
        assert wire.request(proxy, b"stats sizes\r\n") == \
            b"STAT sizes_status disabled\r\nEND\r\n"
        with wire.connect(proxy) as sock:
            sock.sendall(b"stats conns\r\n")
            conns = wire.parse_stats(wire.read_until(sock, b"END\r\n"))
            host, port = sock.getsockname()
            mine = f"tcp:{host}:{port}"
            fd = next(name.split(":")[0] for name, value in conns.items() if value == mine)
            assert conns[f"{fd}:listen_addr"] == f"tcp:{servers.HOST}:{proxy.port}"
            assert conns[f"{fd}:state"] == "conn_parse_cmd"
        # byte for byte as memcached (detail off, no prefix figures)
        for line in (b"stats detail dump\r\n", b"stats detail\r\n", b"stats detail x\r\n",
                     b"stats detail on\r\nstats detail off\r\n", b"stats nonsense\r\n"):
            assert wire.request(proxy, line) == wire.request(nodes[0], line), line


def test_reset_resets_the_proxy_and_the_leaders() -> None:
    with two_shards("memcached") as (proxy, nodes):
        assert int(wire.stats(proxy)["get_hits"]) == 250
        assert wire.request(proxy, b"stats reset\r\n") == b"RESET\r\n"
        through = wire.stats(proxy)
        assert through["get_hits"] == through["cmd_get"] == through["total_items"] == "0"
        assert all(wire.stats(node)["get_hits"] == "0" for node in nodes)
        assert "cmd_Store" not in through
        # curr_items is a gauge: a reset leaves it
        assert int(through["curr_items"]) == len(VALUES) - 1
