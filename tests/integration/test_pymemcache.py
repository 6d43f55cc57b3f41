"""pymemcache round-trips against the memring backend, and the same against memcached 1.6.18.

Every test that takes `server` runs twice, once per kind, so a pass proves the backend answers
pymemcache as memcached does. The cases that also run through the proxy live in
tests/helpers/pymemcache_cases.py and are bound here. One memcached and one backend are
shared by the whole module; tests use their own keys (prefixed with the test's name), so they
do not see each other.
Time-dependent checks (expiry, delayed flush_all) drive both servers at once to sleep only once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient

from tests.helpers import pymemcache_cases as cases
from tests.helpers import servers
from tests.helpers.pymemcache_cases import (
    CONNECT_TIMEOUT,
    MAX_ITEM_SIZE,
    TIMEOUT,
    VERSION,
    client_for,
)

pytestmark = pytest.mark.integration

KINDS = cases.KINDS


@pytest.fixture(scope="module")
def running() -> Iterator[dict[str, servers.RunningServer]]:
    with servers.start("memcached") as memcached, servers.start("backend") as backend:
        yield {"memcached": memcached, "backend": backend}


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest,
           running: dict[str, servers.RunningServer]) -> servers.RunningServer:
    return running[request.param]


# --- the cases shared with test_proxy_clients.py (tests/helpers/pymemcache_cases.py) --------

client = cases.client
noreply_client = cases.noreply_client
key = cases.key

test_noreply_default_storage_commands = cases.test_noreply_default_storage_commands
test_set_get = cases.test_set_get
test_set_many_get_many = cases.test_set_many_get_many
test_add_replace_append_prepend = cases.test_add_replace_append_prepend
test_gets_cas = cases.test_gets_cas
test_incr_decr = cases.test_incr_decr
test_incr_wraps_from_the_largest_value = cases.test_incr_wraps_from_the_largest_value
test_touch_delete_delete_many = cases.test_touch_delete_delete_many
test_flush_all = cases.test_flush_all
test_version = cases.test_version
test_binary_values = cases.test_binary_values
test_values_near_the_item_size_limit = cases.test_values_near_the_item_size_limit
test_key_lengths = cases.test_key_lengths
test_expiry_touch_and_delayed_flush = cases.test_expiry_touch_and_delayed_flush


# --- about one server: its own stats counters ---------------------------------------------

def test_stats_move(client: Client, key: Callable[[str], str]) -> None:
    before = client.stats()
    for name in (b"pid", b"uptime", b"version", b"curr_items", b"total_items", b"get_hits",
                 b"get_misses", b"cmd_get", b"cmd_set", b"curr_connections", b"bytes",
                 b"limit_maxbytes", b"threads", b"evictions"):
        assert name in before, name
    assert before[b"version"] == VERSION
    client.set(key("a"), b"1")
    client.set(key("b"), b"2")
    client.get(key("a"))
    client.get(key("a"))
    client.get(key("absent"))
    client.delete(key("b"))
    after = client.stats()
    delta = {name: after[name] - before[name]
             for name in (b"curr_items", b"total_items", b"get_hits", b"get_misses",
                          b"cmd_get", b"cmd_set", b"delete_hits")}
    assert delta == {b"curr_items": 1, b"total_items": 2, b"get_hits": 2, b"get_misses": 1,
                     b"cmd_get": 3, b"cmd_set": 2, b"delete_hits": 1}
    assert after[b"bytes"] > 0
    settings = client.stats("settings")
    assert settings[b"item_size_max"] == MAX_ITEM_SIZE


# --- HashClient over three servers ------------------------------------------------------------

@pytest.fixture(scope="module", params=KINDS)
def trio_of_servers(request: pytest.FixtureRequest) -> Iterator[list[servers.RunningServer]]:
    kind = request.param
    with servers.start(kind) as a, servers.start(kind) as b, servers.start(kind) as c:
        yield [a, b, c]


@pytest.mark.parametrize("noreply", [False, True])
def test_hash_client_spreads_keys(trio_of_servers: list[servers.RunningServer],
                                  noreply: bool) -> None:
    hc = HashClient([s.address for s in trio_of_servers], connect_timeout=CONNECT_TIMEOUT,
                    timeout=TIMEOUT, default_noreply=noreply)
    direct = [client_for(s, noreply=False) for s in trio_of_servers]
    try:
        # No flush_all first: memcached reclaims flushed items as it allocates, which would
        # make curr_items move by more than the keys set here.
        before = [d.stats()[b"curr_items"] for d in direct]
        values = {f"hash:{noreply}:{i}": f"v{i}".encode() * (1 + i % 7) for i in range(200)}
        assert hc.set_many(values) == []
        assert hc.get_many(list(values)) == values
        assert hc.get(next(iter(values))) == next(iter(values.values()))
        # Each key lives on exactly one backend, and every backend got a share.
        found = [d.get_many(list(values)) for d in direct]
        counts = [len(f) for f in found]
        assert sum(counts) == len(values), counts
        assert all(n > 0 for n in counts), counts
        merged: dict[str, bytes] = {}
        for f in found:
            merged.update(f)
        assert merged == values
        grown = [d.stats()[b"curr_items"] - b for d, b in zip(direct, before, strict=True)]
        assert grown == counts
        # A rough balance check: rendezvous hashing gives each server about a third.
        assert all(30 <= n <= 110 for n in counts), counts
        assert hc.delete_many(list(values)[:50]) is True
        assert len(hc.get_many(list(values))) == 150
    finally:
        hc.close()
        for d in direct:
            d.close()
