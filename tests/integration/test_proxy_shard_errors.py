"""A shard whose nodes are all dead, behind the proxy: reads miss, writes fail (issue 14).

Measured before: with both nodes of one shard down, a 1,000-key get_many through the proxy
raised `SERVER_ERROR 127.0.0.1:<port> is ejected` for all 1,000 keys. Now, by default
(`on_shard_error = miss`, mcrouter's default), the dead shard's keys answer as misses and the
other shard's values come back; `error` keeps the SERVER_ERROR. Writes answer the error
either way. Two shards of two memcached nodes each; the second shard's nodes are killed.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheServerError

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

KEYS = [b"key:%d" % i for i in range(1000)]
SETTINGS = {"timeout_ms": 500, "failure_limit": 2, "retry_ms": 200}


@contextlib.contextmanager
def one_shard_dead(policy: str | None) -> Iterator[tuple[servers.RunningServer,
                                                         set[bytes], set[bytes]]]:
    """A proxy over two shards with every key stored, the second shard's nodes killed:
    (proxy, keys of the live shard, keys of the dead shard)."""
    settings = dict(SETTINGS) if policy is None else {**SETTINGS, "on_shard_error": policy}
    with contextlib.ExitStack() as stack:
        groups = [[stack.enter_context(servers.memcached()) for _ in range(2)] for _ in range(2)]
        proxy = stack.enter_context(servers.proxy(groups, **settings))
        wire.store(proxy, {key: key for key in KEYS})
        live = {key for key, held in wire.holders(groups[0], KEYS).items() if held}
        dead = {key for key, held in wire.holders(groups[1], KEYS).items() if held}
        assert live and dead and live.isdisjoint(dead) and len(live) + len(dead) == len(KEYS)
        for node in groups[1]:
            node.process.kill()
            node.process.wait(5)
        yield proxy, live, dead


def get_many(proxy: servers.RunningServer, command: bytes = b"get") -> bytes:
    return wire.request(proxy, command + b" " + b" ".join(KEYS) + b"\r\n")


def values(reply: bytes) -> dict[bytes, bytes]:
    """The VALUE blocks of a get reply that ends in END."""
    assert reply.endswith(b"END\r\n"), reply[-200:]
    lines = reply.split(b"\r\n")
    found = {}
    for index, line in enumerate(lines):
        if line.startswith(b"VALUE "):
            found[line.split(b" ")[1]] = lines[index + 1]
    return found


def test_with_miss_a_dead_shard_answers_misses_and_the_live_one_its_values() -> None:
    with one_shard_dead(None) as (proxy, live, dead):  # miss is the default
        before = int(wire.stats(proxy)["shard_error_misses"])
        started = time.monotonic()
        assert values(get_many(proxy)) == {key: key for key in live}
        took = time.monotonic() - started
        assert values(get_many(proxy, b"gets")).keys() == live
        assert values(get_many(proxy, b"gat 0")).keys() == live
        # the client: pymemcache's get_many raised for all 1,000 keys
        client = Client(proxy.address, connect_timeout=5, timeout=5)
        try:
            assert client.get_many([key.decode() for key in KEYS]) == \
                {key.decode(): key for key in live}
        finally:
            client.close()
        assert int(wire.stats(proxy)["shard_error_misses"]) == before + 4 * len(dead)
        print(f"\n1,000-key get with one of two shards dead: {len(live)} values, "
              f"{len(dead)} misses in {took * 1000:.0f} ms")
        gone = sorted(dead)[0]
        # one-key reads: memcached's miss replies, byte for byte
        assert wire.request(proxy, b"get %s\r\n" % gone) == b"END\r\n"
        assert wire.request(proxy, b"gats 0 %s\r\n" % gone) == b"END\r\n"
        mg_lines = [b"mg %s v\r\n" % gone, b"mg %s O123 k v t\r\n" % gone,
                    b"mg %s k s c Oab\r\n" % gone, b"mg %s q k v\r\n" % gone,
                    b"mg %s T30 v\r\n" % gone]
        with servers.memcached() as oracle:  # it holds none of these keys: its misses
            for line in mg_lines:
                assert wire.request(proxy, line) == wire.request(oracle, line), line
        # writes answer the error, whatever the read policy
        for write in (b"set %s 0 0 1\r\nx\r\n", b"delete %s\r\n", b"incr %s 1\r\n",
                      b"touch %s 0\r\n", b"ms %s 1\r\nx\r\n", b"md %s\r\n", b"ma %s\r\n"):
            reply = wire.request(proxy, write % gone)
            assert reply.startswith(b"SERVER_ERROR ") and reply.count(b"\r\n") == 1, reply
        # the live shard is untouched: reads, writes
        kept = sorted(live)[0]
        assert wire.request(proxy, b"set %s 0 0 1\r\ny\r\n" % kept) == b"STORED\r\n"
        assert wire.request(proxy, b"get %s\r\n" % kept) == \
            b"VALUE %s 0 1\r\ny\r\nEND\r\n" % kept
        assert wire.stats(proxy, "settings")["memring_on_shard_error"] == "miss"


def test_with_error_a_dead_shard_fails_the_whole_get() -> None:
    with one_shard_dead("error") as (proxy, _, dead):
        reply = get_many(proxy)
        assert reply.startswith(b"SERVER_ERROR ") and reply.count(b"\r\n") == 1, reply[:200]
        client = Client(proxy.address, connect_timeout=5, timeout=5)
        try:
            with pytest.raises(MemcacheServerError):
                client.get_many([key.decode() for key in KEYS])
        finally:
            client.close()
        gone = sorted(dead)[0]
        for read in (b"get %s\r\n", b"mg %s v\r\n", b"gat 0 %s\r\n"):
            reply = wire.request(proxy, read % gone)
            assert reply.startswith(b"SERVER_ERROR ") and reply.count(b"\r\n") == 1, reply
        reply = wire.request(proxy, b"set %s 0 0 1\r\nx\r\n" % gone)
        assert reply.startswith(b"SERVER_ERROR "), reply
        assert wire.stats(proxy)["shard_error_misses"] == "0"


def test_misses_keep_the_reply_order_in_a_pipeline() -> None:
    """Pipelined reads and writes to both shards: each request gets its own reply, in
    order, the misses in the dead shard's places."""
    with one_shard_dead(None) as (proxy, live, dead):
        kept, gone = sorted(live)[:2], sorted(dead)[:2]
        batch = [b"get %s\r\n" % kept[0], b"get %s\r\n" % gone[0],
                 b"mg %s v k\r\n" % gone[1], b"set %s 0 0 1\r\nz\r\n" % gone[0],
                 b"get %s %s %s\r\n" % (gone[0], kept[1], gone[1]), b"mg %s v\r\n" % kept[1]]
        for _ in range(3):  # before and after the ejection
            reply = wire.request(proxy, b"".join(batch))
            lines = reply.split(b"\r\n")
            assert lines[:3] == [b"VALUE %s 0 %d" % (kept[0], len(kept[0])), kept[0], b"END"]
            assert lines[3:5] == [b"END", b"EN k%s" % gone[1]], lines
            assert lines[5].startswith(b"SERVER_ERROR "), lines
            assert lines[6:9] == [b"VALUE %s 0 %d" % (kept[1], len(kept[1])), kept[1], b"END"]
            assert lines[9:] == [b"VA %d" % len(kept[1]), kept[1], b""], lines
            time.sleep(0.3)
