"""The stats and administration commands, the same bytes sent to memcached 1.6.18 and a backend.

Field names and their order are compared exactly; values where they depend only on the commands
sent, and whole replies where they do not depend on time or addresses (masked otherwise: pids,
times, rusage, ports, LRU ages). Two memcacheds serve as oracles: one with its default settings
(LRU maintainer and crawler on, as memring presents itself) for the shape of the replies, and
the test suite's usual one without those background threads (tests.helpers.servers), whose flat
LRU lists items in a fixed order, for the dumps.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Iterator

import pytest

from memring.protocol.sizes import item_size, slab_class
from tests.helpers import servers, wire

pytestmark = pytest.mark.compat

ABSOLUTE_EXPIRY = 2000000000  # far future, absolute: the same expiry on both servers
# Values that describe the process, the clock, the port or memcached's background threads.
MASKED_GENERAL = frozenset({
    "pid", "uptime", "time", "libevent", "rusage_user", "rusage_system", "threads",
    "response_obj_count", "response_obj_bytes", "read_buf_count", "read_buf_bytes",
    "read_buf_bytes_free", "total_connections", "connection_structures", "bytes_read",
    "bytes_written", "lru_crawler_starts", "lru_maintainer_juggles", "moves_to_cold",
    "moves_to_warm", "moves_within_lru", "crawler_items_checked"})
MASKED_SETTINGS = frozenset({"tcpport", "num_threads", "num_threads_per_udp"})
# memcached's LRU maintainer moves items between its hot, warm and cold LRUs over time;
# memring has one LRU, and no per-class hit counters (README, Compatibility notes).
MASKED_ITEMS = re.compile(r"items:\d+:(number_hot|number_warm|number_cold|age_hot|age_warm|age"
                          r"|moves_to_cold|moves_to_warm|moves_within_lru|hits_to_\w+)")
MASKED_SLABS = re.compile(r"\d+:(get_hits|cmd_set|delete_hits|incr_hits|decr_hits|cas_hits"
                          r"|cas_badval|touch_hits)")


@contextlib.contextmanager
def default_memcached() -> Iterator[servers.RunningServer]:
    """memcached with its default background threads, as memring describes itself."""
    with servers.running("memcached", servers.memcached_argv(), graceful=False) as server:
        yield server


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[servers.RunningServer, servers.RunningServer]]:
    with default_memcached() as memcached, servers.backend() as backend:
        yield memcached, backend


@pytest.fixture
def fresh_pair() -> Iterator[tuple[servers.RunningServer, servers.RunningServer]]:
    """The usual oracle (flat LRU, no crawler) and a backend, both empty."""
    with servers.memcached() as memcached, servers.backend() as backend:
        yield memcached, backend


def names(reply: bytes) -> list[str]:
    return [line.split(b" ")[1].decode() for line in reply.split(b"\r\n")
            if line.startswith(b"STAT ")]


def values(reply: bytes) -> dict[str, str]:
    return wire.parse_stats(reply)


def ask(server: servers.RunningServer, payload: bytes, end: bytes = b"END\r\n",
        timeout: float = 10.0) -> bytes:
    """`payload` on a fresh connection; the reply up to and including `end`."""
    with wire.connect(server) as sock:
        sock.sendall(payload)
        return wire.read_until(sock, end, timeout=timeout)


def both(pair: tuple[servers.RunningServer, servers.RunningServer], payload: bytes,
         end: bytes = b"END\r\n") -> tuple[bytes, bytes]:
    return ask(pair[0], payload, end), ask(pair[1], payload, end)


def memring_free(reply: bytes) -> bytes:
    """The reply without memring's own STAT lines (memring_*, max_line), which follow
    memcached's."""
    return b"".join(line + b"\r\n" for line in reply.split(b"\r\n")[:-1]
                    if not re.match(rb"STAT (memring_|max_line )", line))


def stores(keys: list[bytes], exptime: int = ABSOLUTE_EXPIRY) -> bytes:
    return b"".join(b"set %s %d %d %d\r\n%s\r\n" % (key, i % 3, exptime if i % 2 else 0,
                                                     len(key) + i, b"v" * (len(key) + i))
                    for i, key in enumerate(keys))


# --- the shape of every stats reply --------------------------------------------------------

def test_general_stats_fields_in_memcacheds_order(
        pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    want, got = both(pair, b"stats\r\n")
    assert names(memring_free(got)) == names(want)
    assert names(got)[-1].startswith("memring_")  # memring's own fields come last
    mine, theirs = values(got), values(want)
    for name in names(want):
        if name not in MASKED_GENERAL and name not in ("curr_items", "total_items", "bytes",
                                                       "cmd_set", "curr_connections"):
            assert mine[name] == theirs[name], name


def test_settings_fields_and_defaults(
        pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    want, got = both(pair, b"stats settings\r\n")
    assert names(memring_free(got)) == names(want)
    mine, theirs = values(got), values(want)
    differ = {n: (theirs[n], mine[n]) for n in theirs
              if n not in MASKED_SETTINGS and theirs[n] != mine[n]}
    assert not differ, f"(memcached, backend): {differ}"


def test_runtime_settings_show_in_stats_settings(
        pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    """lru, lru_crawler and slabs automove change what stats settings reports, identically;
    the defaults are put back afterwards (the servers are shared by this module)."""
    script = (b"lru tune 10 45 0.5 3.5\r\nlru mode flat\r\nlru temp_ttl 30\r\n"
              b"slabs automove 2\r\nslabs automove ratio 0.5\r\nlru_crawler sleep 250\r\n"
              b"lru_crawler tocrawl 4294967297\r\nstats detail on\r\nverbosity 1\r\n"
              b"stats settings\r\n")
    restore = (b"lru tune 20 40 0.2 2.0\r\nlru mode segmented\r\nlru temp_ttl -1\r\n"
               b"slabs automove 1\r\nslabs automove ratio 0.8\r\nlru_crawler sleep 100\r\n"
               b"lru_crawler tocrawl 0\r\nstats detail off\r\nverbosity 0\r\nmn\r\n")
    want, got = both(pair, script)
    try:
        assert memring_free(got).replace(b"tcpport %d" % pair[1].port, b"") == \
            want.replace(b"tcpport %d" % pair[0].port, b"").replace(
                b"num_threads 4", b"num_threads 1").replace(
                b"num_threads_per_udp 4", b"num_threads_per_udp 1")
        assert values(got)["temp_lru"] == "yes" and values(got)["lru_crawler_tocrawl"] == "1"
    finally:
        both(pair, restore, end=b"MN\r\n")


def test_items_and_slabs_after_the_same_stores(
        fresh_pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    keys = [b"key%d" % i for i in range(40)] + [b"big%d" % i for i in range(3)]
    payload = stores(keys) + b"set huge 0 0 20000\r\n" + b"h" * 20000 + b"\r\nmn\r\n"
    for server in fresh_pair:
        wire.request(server, payload)
    for sub, masked in ((b"items", MASKED_ITEMS), (b"slabs", MASKED_SLABS)):
        want, got = both(fresh_pair, b"stats %s\r\n" % sub)
        assert names(got) == names(want) or sub == b"items"
        mine, theirs = values(got), values(want)
        # the oracle runs without the LRU maintainer, which drops the segmented-LRU fields
        shared = [n for n in names(want) if not masked.fullmatch(n)]
        assert shared and all(n in mine for n in shared)
        differ = {n: (theirs[n], mine[n]) for n in shared if theirs[n] != mine[n]}
        assert not differ, f"stats {sub.decode()} (memcached, backend): {differ}"


def test_items_fields_with_the_lru_maintainer(
        pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    payload = stores([b"shape%d" % i for i in range(5)]) + b"stats items\r\n"
    want, got = both(pair, payload)
    assert names(got) == names(want)
    assert len(names(got)) >= 28


# --- the other subcommands ---------------------------------------------------------------

@pytest.mark.parametrize("command", [
    b"stats detail", b"stats detail x", b"stats detail off", b"stats nonsense",
    b"stats x y z", b"stats extstore", b"stats extstore x", b"stats reset", b"stats reset x",
    b"stats cachedump 1", b"stats cachedump x y", b"stats cachedump 1 -1",
    b"stats cachedump 64 0", b"stats cachedump 63 0", b"stats cachedump 0 0",
    b"stats sizes", b"stats sizes_disable",
])
def test_stats_subcommand_replies(
        pair: tuple[servers.RunningServer, servers.RunningServer], command: bytes) -> None:
    want = wire.request(pair[0], command + b"\r\n")
    got = wire.request(pair[1], command + b"\r\n")
    assert got == want


def test_sizes_histogram_counts_items_stored_after_enabling(
        fresh_pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    before = stores([b"old%d" % i for i in range(4)])
    after = stores([b"new%d" % i for i in range(30)])
    script = (before + b"stats sizes_enable\r\n" + after + b"stats sizes\r\nstats settings\r\n"
              b"stats sizes_disable\r\nstats sizes\r\ngets new0\r\n")
    want = wire.request(fresh_pair[0], script)
    got = wire.request(fresh_pair[1], script)
    sizes = re.compile(rb"(STAT sizes_status \w+\r\n|(STAT \d+ \d+\r\n)*END\r\n)")
    assert sizes.findall(got) == sizes.findall(want)
    assert b"STAT track_sizes yes" in got
    assert got.rsplit(b"VALUE", 1)[1] == want.rsplit(b"VALUE", 1)[1]  # enabling drew a CAS


def test_stats_detail_dump_in_memcacheds_order(
        fresh_pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    prefixes = [b"user", b"session", b"a", b"page", b"x-y", b"cart", b"feed", b"b", b"zz"]
    keys = [p + b":" + str(i).encode() for i, p in enumerate(prefixes)] + [b"noprefix"]
    script = (b"stats detail on\r\n" + stores(keys) + b"get " + b" ".join(keys) +
              b" user:nope cart:x\r\ngets user:0 feed:nope\r\ndelete page:3\r\n"
              b"delete page:gone\r\nmg user:0 v\r\nstats detail dump\r\nstats detail off\r\n"
              b"get session:1\r\nstats detail dump\r\nstats reset\r\nstats detail dump\r\n")
    want = wire.request(fresh_pair[0], script)
    got = wire.request(fresh_pair[1], script)
    assert got == want
    assert got.count(b"PREFIX ") == 2 * len(prefixes)


def test_stats_conns_lists_listener_and_connections(
        pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    shapes = []
    for server in pair:
        with wire.connect(server) as idle, wire.connect(server) as half:
            idle.sendall(b"version\r\n")
            wire.read_until(idle, b"\r\n")
            half.sendall(b"set k 0 0 10\r\nabc")  # a data block half sent: conn_nread
            time.sleep(0.2)
            reply = ask(server, b"stats conns\r\n")
        entries: dict[str, dict[str, str]] = {}
        for name, value in values(reply).items():
            fd, field = name.split(":", 1)
            entries.setdefault(fd, {})[field] = value
        ordered = sorted(entries.items(), key=lambda entry: int(entry[0]))
        listener = ordered[0][1]
        assert listener == {"addr": f"tcp:127.0.0.1:{server.port}", "state": "conn_listening",
                            "secs_since_last_cmd": listener["secs_since_last_cmd"]}
        conns = [fields for _, fields in ordered[1:]]
        assert all(list(c) == ["addr", "listen_addr", "state", "secs_since_last_cmd"]
                   for c in conns), conns
        assert all(c["listen_addr"] == f"tcp:127.0.0.1:{server.port}" for c in conns)
        shapes.append(sorted(c["state"] for c in conns))
    assert shapes[1] == shapes[0] == ["conn_nread", "conn_parse_cmd", "conn_read"]


# --- the dumps --------------------------------------------------------------------------

def test_cachedump_lines(fresh_pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    keys = [b"dump%d" % i for i in range(12)] + [b"k" * 200]
    for server in fresh_pair:
        wire.request(server, stores(keys))
    commands = (b"stats cachedump 1 0\r\n", b"stats cachedump 1 3\r\n",
                b"stats cachedump 2 0\r\n", b"stats cachedump 3 1\r\n",
                b"stats cachedump 5 0\r\n")
    for command in commands:
        want, got = both(fresh_pair, command)
        assert got == want, command
    assert want == b"END\r\n" and b"ITEM dump" in ask(fresh_pair[1], commands[0])
    # A hit moves an item to the head of memring's LRU at once, memcached's at most once a
    # minute (README, Compatibility notes): then only the lines agree, not their order.
    for server in fresh_pair:
        wire.request(server, b"get dump3 dump7\r\n")
    want, got = both(fresh_pair, commands[0])
    assert sorted(got.split(b"\r\n")) == sorted(want.split(b"\r\n"))


def test_cachedump_stops_at_two_megabytes(
        fresh_pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    keys = [b"%0240d" % i for i in range(8500)]  # ~270-byte lines: past 2 MB in one class
    payload = b"".join(b"set %s 0 0 1\r\nx\r\n" % key for key in keys) + b"mn\r\n"
    for server in fresh_pair:
        assert wire.converse(server, [payload], timeout=30).reply.endswith(b"MN\r\n")
    cls = slab_class(item_size(240, 1, 0))
    want, got = both(fresh_pair, b"stats cachedump %d 0\r\n" % cls)
    assert got == want
    assert 2 * 1024 * 1024 - 300 < len(got) <= 2 * 1024 * 1024
    assert got.count(b"ITEM ") < len(keys)


def metadump_masked(reply: bytes) -> bytes:
    return re.sub(rb" la=\d+", b" la=*", reply)


def test_metadump_lines(fresh_pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    keys = [b"meta%d" % i for i in range(10)] + [b"a:b%c/d~e", b"\xc3\xa9t\xc3\xa9"]
    setup = stores(keys, exptime=ABSOLUTE_EXPIRY)
    # the oracle runs without its crawler: enabling it is the first command on both
    for server in fresh_pair:
        assert wire.request(server, b"lru_crawler disable\r\nlru_crawler enable\r\n" + setup)
    for command in (b"lru_crawler metadump 1\r\n", b"lru_crawler metadump 1,2,\r\n",
                    b"lru_crawler metadump 2\r\n"):
        want, got = both(fresh_pair, command)
        assert metadump_masked(got) == metadump_masked(want), command
    # hits reorder memring's LRU at once (see test_cachedump_lines): compare lines, not order
    for server in fresh_pair:
        wire.request(server, b"get meta2 a:b%c/d~e\r\nmg meta4 v\r\n")
    want, got = both(fresh_pair, b"lru_crawler metadump all\r\n")
    assert sorted(metadump_masked(got).split(b"\n")) == sorted(metadump_masked(want).split(b"\n"))
    assert b"key=a%3Ab%25c%2Fd~e exp=" in got and b"key=%C3%A9t%C3%A9 exp=" in got
    want, got = both(fresh_pair, b"lru_crawler metadump hash\r\n")
    assert sorted(metadump_masked(got).split(b"\n")) == sorted(metadump_masked(want).split(b"\n"))


def test_metadump_of_a_large_store_streams_while_others_are_served() -> None:
    """200,000 items: the dump arrives in pieces and another client is answered before it
    ends (the backend lets other connections run between chunks)."""
    with servers.backend() as backend:
        payload = b"".join(b"set item:%d 0 0 4\r\nabcd\r\n" % i for i in range(200000))
        ex = wire.converse(backend, [payload + b"mn\r\n"], timeout=60)
        assert ex.reply.endswith(b"MN\r\n") and ex.reply.count(b"STORED") == 200000
        with wire.connect(backend) as dumper, wire.connect(backend) as other:
            dumper.sendall(b"lru_crawler metadump all\r\n")
            first = dumper.recv(65536)
            assert first.startswith(b"key=item%3A0 ")
            other.sendall(b"version\r\n")
            assert wire.read_until(other, b"\r\n").startswith(b"VERSION")
            other.sendall(b"lru_crawler metadump all\r\n")  # one crawl at a time
            assert wire.read_until(other, b"\r\n") == \
                b"BUSY currently processing crawler request\r\n"
            other.sendall(b"stats cachedump 1 2\r\n")  # waits for its turn: one dump at a time
            rest = wire.read_until(dumper, b"END\r\n", timeout=60)
            assert wire.read_until(other, b"END\r\n", timeout=30) == (
                b"ITEM item:199999 [4 b; 0 s]\r\nITEM item:199998 [4 b; 0 s]\r\nEND\r\n")
        dump = first + rest
        assert dump.count(b"\n") == 200001
        assert values(ask(backend, b"stats\r\n"))["lru_crawler_starts"] == "1"
        # stats items walks the items in chunks too, while the version is answered
        with wire.connect(backend) as census, wire.connect(backend) as other:
            census.sendall(b"stats slabs\r\n")
            other.sendall(b"version\r\n")
            assert wire.read_until(other, b"\r\n").startswith(b"VERSION")
            slabs = values(wire.read_until(census, b"END\r\n", timeout=60))
            census.sendall(b"stats items\r\n")
            items = values(wire.read_until(census, b"END\r\n", timeout=60))
        assert items["items:1:number"] == slabs["1:used_chunks"] == "200000"
        assert slabs["total_malloced"] == str(-(-200000 // 10922) << 20)  # 19 pages of 1 MB


# --- administration commands ---------------------------------------------------------------

ADMIN_COMMANDS = [
    b"lru_crawler", b"lru_crawler foo", b"lru_crawler mgdump 1", b"lru_crawler crawl x",
    b"lru_crawler crawl hash", b"lru_crawler crawl ,", b"lru_crawler crawl 0",
    b"lru_crawler crawl 64", b"lru_crawler metadump x", b"lru_crawler metadump 0",
    b"lru_crawler tocrawl x", b"lru_crawler sleep 2000000",
    b"lru_crawler sleep -1", b"lru_crawler enable", b"lru_crawler disable",
    b"lru_crawler disable", b"lru_crawler metadump all", b"lru_crawler crawl all",
    b"lru_crawler enable",
    b"lru", b"lru x", b"lru tune x", b"lru tune 50 40 0.2 2.0", b"lru tune 10 40 0 2.0",
    b"lru tune 1 2 3", b"lru tune a 40 0.2 2.0", b"lru tune 10 40 0.2 2.0 noreply",
    b"lru mode x", b"lru mode x noreply", b"lru mode", b"lru temp_ttl x", b"lru temp_ttl",
    b"slabs", b"slabs x", b"slabs automove 3", b"slabs automove x", b"slabs automove ratio",
    b"slabs automove ratio x", b"slabs automove 1 noreply", b"slabs reassign 1 1",
    b"slabs reassign 99 2", b"slabs reassign x 2", b"slabs reassign -1 2",
    b"slabs reassign 1 2", b"slabs reassign 1", b"slabs reassign 1 2 3",
    b"watch foo", b"watch fetchers x", b"watch noreply",
    b"lru tune 20 40 0.2 2.0", b"lru mode segmented", b"lru temp_ttl -1", b"slabs automove 1",
    b"lru_crawler sleep 100", b"lru_crawler tocrawl 0",
]


def test_admin_command_replies(pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    """Each command alone, in this order on both (some change what later ones answer)."""
    for command in ADMIN_COMMANDS:
        want = wire.request(pair[0], command + b"\r\n")
        got = wire.request(pair[1], command + b"\r\n")
        assert got == want, command


def test_metadump_and_watch_refuse_pipelined_commands(
        pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    for command in (b"lru_crawler metadump all", b"watch"):
        want = wire.request(pair[0], b"version\r\n" + command + b"\r\n")
        got = wire.request(pair[1], b"version\r\n" + command + b"\r\n")
        assert got == want and b"cannot pipeline" in got


def test_watch_answers_ok_then_holds_the_connection(
        pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    for server in pair:
        with wire.connect(server) as watcher:
            watcher.sendall(b"watch fetchers\r\nversion\r\n")
            assert wire.read_until(watcher, b"\r\n") == b"OK\r\n"
            assert values(ask(server, b"stats\r\n"))["log_watchers"] == "1"
            watcher.sendall(b"version\r\nstats\r\n")  # no longer read as commands
            watcher.settimeout(0.3)
            with contextlib.suppress(TimeoutError, socket.timeout):
                data = watcher.recv(65536)
                assert not data.startswith((b"VERSION", b"STAT")), data
        deadline = time.monotonic() + 3
        while values(ask(server, b"stats\r\n"))["log_watchers"] != "0":
            assert time.monotonic() < deadline, "the closed watcher is still counted"
            time.sleep(0.05)


def test_proxy_answers_admin_commands_error_and_goes_on() -> None:
    """Through the proxy they would tune or watch one backend of many: ERROR, as before
    memring knew them (README, Compatibility notes), and the session continues. (The dumps
    are answered there: tests/integration/test_proxy_dumps.py.)"""
    with servers.proxy_over("backend") as proxy:
        reply = wire.request(proxy, b"lru tune 10 40 0.2 2.0\r\n"
                                    b"slabs automove 1\r\nwatch\r\nversion\r\n")
    assert reply == b"ERROR\r\n" * 3 + b"VERSION 1.6.18\r\n"
