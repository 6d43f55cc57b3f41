"""Binary clients through the proxy over two shards of real memring backends: every opcode,
quiet pipelines ending in noop, getkq batches in the client's order across shards, CAS,
incr/decr, errors, keys the text protocol cannot carry, a dead shard, SASL, and replies
that never shift between clients (the proxy hides quiet replies; the backends always
answer). Byte-for-byte comparisons with memcached: tests/compat/test_binary_proxy_differential.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from memring.cluster.etcd_process import EtcdProcess
from memring.protocol.binary_frames import (
    HEADER,
    BinaryResponse,
    Opcode,
    Status,
    counter_value,
    encode_response,
    error_response,
    flags_extras,
    storage_extras,
)
from tests.helpers import servers, wire
from tests.helpers.binary_cases import (
    NO_CREATE,
    SENTINEL,
    SENTINEL_OPAQUE,
    SENTINEL_REPLY,
    frame,
    get,
    incr,
    set_,
    touch,
)
from tests.helpers.binary_exchange import assert_big_bodies_stream_by, frames
from tests.helpers.cluster import ReplicatedShard, node_id, proxy_argv, wait_for

pytestmark = pytest.mark.integration

TIMEOUT = 5.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[servers.RunningServer]:
    """A proxy over two single-node shards of memring backends."""
    with servers.backend() as one, servers.backend() as two, \
            servers.proxy([[one], [two]]) as proxy:
        yield proxy


def exchange(server: servers.RunningServer, data: bytes, sock: socket.socket | None = None
             ) -> list[BinaryResponse]:
    """The replies to `data`, up to the NOOP sentinel appended to it (not included)."""
    with contextlib.ExitStack() as stack:
        if sock is None:
            sock = stack.enter_context(wire.connect(server))
        got = wire.drive(sock, [data + SENTINEL], until=SENTINEL_REPLY, timeout=TIMEOUT)
    assert not got.timed_out, got
    replies = frames(got.reply)
    assert all(isinstance(r, BinaryResponse) for r in replies), replies
    found = [r for r in replies if isinstance(r, BinaryResponse)]
    assert found[-1].opaque == SENTINEL_OPAQUE
    return found[:-1]


def on_each_shard(proxy: servers.RunningServer, prefix: bytes, count: int = 40
                  ) -> tuple[list[bytes], list[bytes]]:
    """Keys stored through the proxy, split by the shard that holds them."""
    keys = [b"%s-%d" % (prefix, i) for i in range(count)]
    exchange(proxy, b"".join(set_(k, b"x", opcode=Opcode.SETQ) for k in keys))
    where = wire.placement(proxy.upstreams, keys)
    first = [k for k in keys if where[k] == 0]
    second = [k for k in keys if where[k] == 1]
    assert first and second, where
    return first, second


def test_every_opcode(cluster: servers.RunningServer) -> None:
    replies = exchange(cluster, set_(b"op", b"10", 7, opaque=1) + get(b"op", opaque=2)
                       + get(b"op", Opcode.GETK, 3)
                       + frame(Opcode.ADD, b"op", storage_extras(0, 0), b"x", opaque=4)
                       + frame(Opcode.REPLACE, b"op", storage_extras(5, 0), b"20", opaque=5)
                       + frame(Opcode.APPEND, b"op", value=b"0", opaque=6)
                       + frame(Opcode.PREPEND, b"op", value=b"1", opaque=7)
                       + incr(b"op", 5) + frame(Opcode.DECREMENT, b"op",
                                                b"\0" * 7 + b"\3" + b"\0" * 12)
                       + touch(b"op", 100) + touch(b"op", 100, Opcode.GAT)
                       + touch(b"op", 100, Opcode.GATK) + frame(Opcode.DELETE, b"op")
                       + get(b"op", opaque=8) + frame(Opcode.NOOP, opaque=9)
                       + frame(Opcode.VERSION, opaque=10))
    summary = [(r.opcode, r.status, r.key, r.extras, r.value, r.opaque) for r in replies]
    assert summary == [
        (Opcode.SET, 0, b"", b"", b"", 1),
        (Opcode.GET, 0, b"", flags_extras(7), b"10", 2),
        (Opcode.GETK, 0, b"op", flags_extras(7), b"10", 3),
        (Opcode.ADD, Status.KEY_EEXISTS, b"", b"", b"Data exists for key.", 4),
        (Opcode.REPLACE, 0, b"", b"", b"", 5),
        (Opcode.APPEND, 0, b"", b"", b"", 6),
        (Opcode.PREPEND, 0, b"", b"", b"", 7),
        (Opcode.INCREMENT, 0, b"", b"", counter_value(1205), 0),
        (Opcode.DECREMENT, 0, b"", b"", counter_value(1202), 0),
        (Opcode.TOUCH, 0, b"", flags_extras(5), b"", 0),
        (Opcode.GAT, 0, b"", flags_extras(5), b"1202", 0),
        (Opcode.GATK, 0, b"op", flags_extras(5), b"1202", 0),
        (Opcode.DELETE, 0, b"", b"", b"", 0),
        (Opcode.GET, Status.KEY_ENOENT, b"", b"", b"Not found", 8),
        (Opcode.NOOP, 0, b"", b"", b"", 9),
        (Opcode.VERSION, 0, b"", b"", b"1.6.18", 10)]
    # every write's CAS is new, and a get returns the item's
    cas = [r.cas for r in replies]
    assert cas[0] and cas[1] == cas[2] == cas[0]
    assert len({cas[0], cas[4], cas[5], cas[6], cas[7], cas[8]}) == 6


def test_quiet_pipeline_across_shards_answers_only_what_is_asked(
        cluster: servers.RunningServer) -> None:
    first, second = on_each_shard(cluster, b"quiet")
    keys = [k for pair in zip(first, second, strict=False) for k in pair]  # alternate shards
    batch = b"".join(set_(k, b"v-" + k, opcode=Opcode.SETQ) for k in keys)
    batch += b"".join(frame(Opcode.DELETEQ, k) for k in keys[::3])  # every third gone
    batch += frame(Opcode.ADDQ, keys[1], storage_extras(0, 0), b"no")  # exists: an error
    batch += b"".join(get(k, Opcode.GETKQ, opaque=i) for i, k in enumerate(keys))
    batch += b"".join(get(b"missing-%d" % i, Opcode.GETQ) for i in range(10))
    batch += frame(Opcode.NOOP, opaque=77)
    replies = exchange(cluster, batch)
    expected_hits = [(i, k) for i, k in enumerate(keys) if i % 3]
    assert replies[0] == BinaryResponse(Opcode.ADDQ, Status.KEY_EEXISTS,
                                        value=b"Data exists for key.")
    assert [(r.opaque, r.key, r.value) for r in replies[1:-1]] == [
        (i, k, b"v-" + k) for i, k in expected_hits]
    assert all(r.opcode == Opcode.GETKQ and r.status == 0 for r in replies[1:-1])
    assert replies[-1] == BinaryResponse(Opcode.NOOP, opaque=77)  # after everything before


def test_getkq_batch_comes_back_in_the_clients_order(cluster: servers.RunningServer) -> None:
    first, second = on_each_shard(cluster, b"order", 60)
    # shards interleaved out of placement order, with repeats and misses between
    keys = (second[:5] + first[:5] + [b"nope-1"] + second[5:8] + [first[0], second[0]]
            + first[5:9] + [b"nope-2"])
    replies = exchange(cluster, b"".join(get(k, Opcode.GETKQ, opaque=i)
                                         for i, k in enumerate(keys)))
    assert [(r.opaque, r.key) for r in replies] == [
        (i, k) for i, k in enumerate(keys) if not k.startswith(b"nope")]


def test_a_long_mget_with_repeats_and_misses_across_batches(cluster: servers.RunningServer
                                                           ) -> None:
    """More frames than one batch takes (proxy/binary_batches.py MAX_BATCH), loud and quiet,
    repeated keys, misses: every answer in order, each hit with its item's CAS."""
    first, second = on_each_shard(cluster, b"long", 30)
    pool = [*first, *second, b"absent"]
    keys = [pool[i * 7 % len(pool)] for i in range(150)]
    opcodes = [Opcode.GETKQ, Opcode.GETK, Opcode.GETQ, Opcode.GET]
    requests = [(opcodes[i % 4], i, k) for i, k in enumerate(keys)]
    replies = exchange(cluster, b"".join(get(k, op, i) for op, i, k in requests))
    expected = [(op, i, 0 if k != b"absent" else Status.KEY_ENOENT)
                for op, i, k in requests
                if k != b"absent" or op in (Opcode.GETK, Opcode.GET)]
    assert [(r.opcode, r.opaque, r.status) for r in replies] == expected
    cas_of: dict[bytes, set[int]] = {}
    for reply in replies:
        if reply.status == 0:
            cas_of.setdefault(keys[reply.opaque], set()).add(reply.cas)
    assert all(len(c) == 1 and 0 not in c for c in cas_of.values()), cas_of


def test_cas_through_the_proxy(cluster: servers.RunningServer) -> None:
    [hit] = exchange(cluster, set_(b"caskey", b"a") + get(b"caskey"))[1:]
    stale = hit.cas + 1000
    replies = exchange(cluster, set_(b"caskey", b"b", cas=stale)
                       + set_(b"caskey", b"c", cas=hit.cas) + set_(b"caskey", b"d", cas=hit.cas)
                       + frame(Opcode.DELETE, b"caskey", cas=stale)
                       + set_(b"no-such-key", b"e", cas=hit.cas) + get(b"caskey"))
    assert [r.status for r in replies] == [Status.KEY_EEXISTS, 0, Status.KEY_EEXISTS,
                                           Status.KEY_EEXISTS, Status.KEY_ENOENT, 0]
    assert replies[-1].value == b"c" and replies[-1].cas == replies[1].cas != hit.cas
    [deleted] = exchange(cluster, frame(Opcode.DELETE, b"caskey", cas=replies[1].cas))
    assert deleted.status == 0


def test_incr_decr(cluster: servers.RunningServer) -> None:
    replies = exchange(cluster, incr(b"counter", 5, 10) + incr(b"counter", 5, 10)
                       + frame(Opcode.DECREMENT, b"counter", b"\0" * 7 + b"\x64" + b"\0" * 12)
                       + incr(b"absent", 1, 0, NO_CREATE) + set_(b"text", b"abc")
                       + incr(b"text", 1) + incr(b"counter", 1, opcode=Opcode.INCREMENTQ)
                       + get(b"counter"))
    assert [(r.status, r.value) for r in replies] == [
        (0, counter_value(10)), (0, counter_value(15)), (0, counter_value(0)),
        (Status.KEY_ENOENT, b"Not found"), (0, b""),
        (Status.DELTA_BADVAL, b"Non-numeric server-side value for incr or decr"),
        (0, b"1 ")]  # rewritten in place: space padded, as memcached


def test_keys_the_text_protocol_cannot_carry(cluster: servers.RunningServer) -> None:
    """Spaces, line ends and control bytes in a key travel base64 to the backends."""
    keys = [b"a b", b"line\r\nend", b"\x00\x01\x7f", b"get x\r\n", b" " * 186]
    batch = b"".join(set_(k, b"v%d" % i) for i, k in enumerate(keys))
    batch += b"".join(get(k, Opcode.GETK) for k in keys)
    replies = exchange(cluster, batch)
    assert [r.status for r in replies] == [0] * (2 * len(keys))
    assert [(r.key, r.value) for r in replies[len(keys):]] == [
        (k, b"v%d" % i) for i, k in enumerate(keys)]
    # the text protocol sees none of them as another key
    assert wire.request(cluster, b"get a b line get x\r\n") == b"END\r\n"
    # past 186 bytes such a key cannot be encoded within memcached's 250: refused, not sent
    assert exchange(cluster, get(b" " * 187, opaque=3)) == [BinaryResponse(
        Opcode.GET, Status.EINVAL, value=b"Invalid arguments", opaque=3)]


def test_too_large_value_drops_the_old_one_on_its_shard(cluster: servers.RunningServer
                                                        ) -> None:
    replies = exchange(cluster, set_(b"big key", b"old") + set_(b"big key", b"v" * 2_000_000)
                       + get(b"big key"))
    assert [(r.status, r.value) for r in replies] == [
        (0, b""), (Status.E2BIG, b"Too large."), (Status.KEY_ENOENT, b"Not found")]


def test_stat_version_and_flush(cluster: servers.RunningServer) -> None:
    stats = exchange(cluster, frame(Opcode.STAT, opaque=5))
    assert stats[-1] == BinaryResponse(Opcode.STAT, opaque=5)
    names = {r.key.decode(): r.value.decode() for r in stats[:-1]}
    assert names["memring_role"] == "proxy"
    assert set(names) == set(wire.stats(cluster)) - {"time", "uptime"} | {"time", "uptime"}
    assert exchange(cluster, frame(Opcode.STAT, b"nonsense", opaque=6)) == [
        BinaryResponse(Opcode.STAT, Status.KEY_ENOENT, value=b"Not found", opaque=6)]
    first, second = on_each_shard(cluster, b"flush", 10)
    replies = exchange(cluster, frame(Opcode.FLUSH, opaque=8) + get(first[0]) + get(second[0])
                       + frame(Opcode.FLUSHQ))
    assert [(r.opcode, r.status) for r in replies] == [
        (Opcode.FLUSH, 0), (Opcode.GET, Status.KEY_ENOENT), (Opcode.GET, Status.KEY_ENOENT)]
    assert wire.holders(cluster.upstreams, first + second) == {k: [] for k in first + second}


def test_bad_frames(cluster: servers.RunningServer) -> None:
    # an unknown opcode answers and swallows its body; the connection goes on
    unknown = HEADER.pack(0x80, 0x40, 0, 0, 0, 0, 3, 9, 0) + b"xyz"
    assert exchange(cluster, unknown) == [BinaryResponse(
        0x40, Status.UNKNOWN_COMMAND, value=b"Unknown command", opaque=9)]
    # a bad magic closes without a reply, as memcached
    with wire.connect(cluster) as sock:
        got = wire.drive(sock, [frame(Opcode.NOOP), b"\x81" + bytes(23)], until=None,
                         timeout=TIMEOUT)
    assert got.closed and got.reply == frames_bytes(BinaryResponse(Opcode.NOOP))


def frames_bytes(*replies: BinaryResponse) -> bytes:
    return b"".join(encode_response(r) for r in replies)


def test_quit(cluster: servers.RunningServer) -> None:
    with wire.connect(cluster) as sock:
        got = wire.drive(sock, [frame(Opcode.QUIT, opaque=4)], until=None, timeout=TIMEOUT)
    assert got.closed and got.reply == frames_bytes(BinaryResponse(Opcode.QUIT, opaque=4))
    with wire.connect(cluster) as sock:
        got = wire.drive(sock, [frame(Opcode.QUITQ)], until=None, timeout=TIMEOUT)
    assert got.closed and got.reply == b""


def test_quiet_replies_never_shift_between_clients() -> None:
    """Clients sharing one backend connection: one pipelines quiet writes and misses, the
    other reads its own key; nobody gets a reply that is not theirs."""
    with servers.backend() as backend, servers.proxy([[backend]], pool_size=1) as proxy:
        errors: list[str] = []

        def quiet_client(index: int) -> None:
            try:
                with wire.connect(proxy) as sock:
                    for round_ in range(30):
                        batch = b"".join(
                            set_(b"q%d-%d" % (index, i), b"v", opcode=Opcode.SETQ)
                            + get(b"miss%d-%d" % (index, i), Opcode.GETKQ)
                            + frame(Opcode.DELETEQ, b"q%d-%d" % (index, i))
                            for i in range(10))
                        if exchange(proxy, batch + frame(Opcode.NOOP, opaque=round_), sock) \
                                != [BinaryResponse(Opcode.NOOP, opaque=round_)]:
                            errors.append(f"quiet client {index} got a reply")
            except AssertionError as error:  # pragma: no cover - reported below
                errors.append(str(error))

        def reader() -> None:
            try:
                with wire.connect(proxy) as sock:
                    exchange(proxy, set_(b"mine", b"secret"), sock)
                    for round_ in range(100):
                        replies = exchange(proxy, get(b"mine", opaque=round_), sock)
                        if [(r.opaque, r.value) for r in replies] != [(round_, b"secret")]:
                            errors.append(f"reader got {replies}")
            except AssertionError as error:  # pragma: no cover - reported below
                errors.append(str(error))

        threads = [threading.Thread(target=quiet_client, args=(i,)) for i in range(3)]
        threads.append(threading.Thread(target=reader))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(t.is_alive() for t in threads)
        assert not errors, errors[:3]


@pytest.mark.parametrize("policy", ["miss", "error"])
def test_a_dead_shard_answers_reads_by_policy_and_writes_with_an_error(policy: str) -> None:
    """on_shard_error = miss (the default): a read of the dead shard is a miss (a quiet one
    hidden), counted; = error: status 0x86 with the reason. Writes: the error either way."""
    with servers.backend() as one, servers.backend() as two, \
            servers.proxy([[one], [two]], on_shard_error=policy,
                          timeout_ms=300, failure_limit=1) as proxy:
        first, second = on_each_shard(proxy, b"dead", 20)
        servers.stop(two.process, graceful=False)
        # the proxy hears of it on its connections (a failure each, then ejected)
        replies = exchange(proxy, get(second[0], opaque=1)
                           + set_(second[1], b"x", opcode=Opcode.SETQ, opaque=2)
                           + get(first[0], opaque=3) + get(second[2], Opcode.GETKQ, 4)
                           + frame(Opcode.NOOP, opaque=5))
        seen = [(r.opcode, r.status, r.opaque) for r in replies]
        if policy == "error":
            assert seen == [
                (Opcode.GET, Status.TEMPORARY_FAILURE, 1),
                (Opcode.SETQ, Status.TEMPORARY_FAILURE, 2),  # quiet hides successes only
                (Opcode.GET, 0, 3), (Opcode.GETKQ, Status.TEMPORARY_FAILURE, 4),
                (Opcode.NOOP, 0, 5)]
            assert all(r.value for r in replies if r.status)  # the reason is the body
        else:
            assert seen == [
                (Opcode.GET, Status.KEY_ENOENT, 1),
                (Opcode.SETQ, Status.TEMPORARY_FAILURE, 2),
                (Opcode.GET, 0, 3), (Opcode.NOOP, 0, 5)]  # the getkq miss is quiet
            assert replies[0].value == b"Not found"
            assert wire.stats(proxy)["shard_error_misses"] == "2"


@pytest.fixture
def authenticating_proxy(tmp_path: Path) -> Iterator[servers.RunningServer]:
    path = tmp_path / "auth"
    path.write_text("alice:secret\n")
    with servers.backend() as backend, \
            servers.proxy([[backend]], "--auth-file", str(path)) as proxy:
        yield proxy


def test_sasl_plain_against_the_proxys_auth_file(
        authenticating_proxy: servers.RunningServer) -> None:
    with wire.connect(authenticating_proxy) as sock:
        def step(data: bytes) -> list[BinaryResponse]:
            got = wire.drive(sock, [data], until=None, timeout=0.5)
            return [r for r in frames(got.reply) if isinstance(r, BinaryResponse)]

        assert step(frame(Opcode.SASL_LIST_MECHS)) == [
            BinaryResponse(Opcode.SASL_LIST_MECHS, value=b"PLAIN")]
        assert [r.status for r in step(frame(Opcode.SASL_AUTH, b"PLAIN",
                                             value=b"\0alice\0wrong"))] == [Status.AUTH_ERROR]
        assert step(frame(Opcode.SASL_AUTH, b"PLAIN", value=b"\0alice\0secret")) == [
            BinaryResponse(Opcode.SASL_AUTH, value=b"Authenticated")]
        assert [(r.status, r.value) for r in step(set_(b"k", b"v") + get(b"k"))] == [
            (0, b""), (0, b"v")]
    with wire.connect(authenticating_proxy) as sock:
        got = wire.drive(sock, [get(b"k"), frame(Opcode.NOOP)], until=None, timeout=TIMEOUT)
    assert got.closed and got.reply == error_response(Opcode.GET, Status.AUTH_ERROR, 0)


def test_binary_writes_through_a_cluster_proxy_survive_a_leader_kill(etcd: EtcdProcess
                                                                     ) -> None:
    """Cluster mode: binary writes go to the shard's leader (sync replication), and after
    a kill -9 of the leader the proxy sends them to the next one; nothing acknowledged is
    lost, CAS values included."""
    with contextlib.ExitStack() as stack:
        shard = ReplicatedShard(etcd, stack, "binproxy1", {})
        shard.mode = "sync"
        shard.start()
        shard.start()
        leader = shard.leader()
        everyone = {node_id(n) for n in shard.live()}
        wait_for(lambda: set(wire.stats(leader).get("memring_repl_isr", "").split(","))
                 == everyone, 10.0, "the follower in the ISR")
        proxy = stack.enter_context(servers.running("proxy", proxy_argv(etcd.url,
                                                                          shard.cluster)))

        wait_for(lambda: exchange(proxy, set_(b"probe", b"p"))[0].status == 0, 10.0,
                 "binary writes through the proxy")
        before = exchange(proxy, set_(b"before", b"v", 3) + incr(b"count", 1, 41)
                          + set_(b"quiet", b"q", opcode=Opcode.SETQ) + get(b"before"))
        assert [r.status for r in before] == [0, 0, 0]
        servers.stop(leader.process, graceful=False)  # kill -9

        def after() -> list[BinaryResponse] | None:
            replies = exchange(proxy, set_(b"after", b"w") + get(b"before")
                               + get(b"count") + get(b"quiet"))
            return replies if replies[0].status == 0 else None

        replies = wait_for(after, 10.0, "a write at the new leader")
        assert shard.leader() is not leader
        assert [(r.status, r.value) for r in replies[1:]] == [(0, b"v"), (0, b"41"), (0, b"q")]
        assert replies[1].cas == before[2].cas  # the CAS travelled with the item


def test_bodies_over_the_limit_stream_by_in_bounded_memory(cluster: servers.RunningServer
                                                           ) -> None:
    """A 64 MiB value (answered "Too large.") and an unknown opcode's 64 MiB body are
    swallowed as they stream by, without the proxy holding either."""
    assert_big_bodies_stream_by(cluster)
