"""Sync replication against a real etcd (`--replication sync`, the default with
`--peer-listen`): every acknowledged write is on every in-sync follower, the ISR in etcd
follows the followers (a frozen or dead one is dropped after the lag bound, a caught-up one
added back), kill -9 of the leader loses no acknowledged write, a frozen leader acknowledges
nothing after its successor is elected, `min_insync` refuses writes without enough replicas.

Small scale (each test a few seconds); bench/failover.py runs the long versions. Every wait
is a bounded loop.
"""

from __future__ import annotations

import contextlib
import itertools
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import trio

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.coordinator import ClusterConfig
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdProcess
from tests.helpers import servers, tls, wire
from tests.helpers.cluster import SHARD, ReplicatedShard, node_id, proxy_argv, wait_for
from tests.helpers.replicas import dump, pipeline, wait_identical

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

_clusters = itertools.count(1)
MAX_LAG_MS = 300


class SyncShard(ReplicatedShard):
    mode = "sync"
    extra = ("--max-lag-ms", str(MAX_LAG_MS))

    def isr(self) -> set[str]:
        view = trio.run(self.view)
        shard = view.shards.get(SHARD)
        return set(shard.isr.node_ids) if shard is not None and shard.isr else set()


@contextlib.contextmanager
def sync_shard(etcd: EtcdProcess, size: int) -> Iterator[SyncShard]:
    with contextlib.ExitStack() as stack:
        shard = SyncShard(etcd, stack, f"rs{next(_clusters)}", {})
        for _ in range(size):
            shard.start()
        yield shard


def settled(shard: SyncShard) -> tuple[servers.RunningServer, list[servers.RunningServer]]:
    """The leader and its followers once the etcd ISR names every live node."""
    leader = shard.leader()
    followers = [n for n in shard.live() if n is not leader]
    everyone = {node_id(n) for n in shard.live()}
    wait_for(lambda: shard.isr() == everyone, 10.0, f"ISR {sorted(everyone)}")
    return leader, followers


def set_one(sock: socket.socket, key: bytes, value: bytes) -> bytes:
    sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value))
    return wire.read_until(sock, b"\r\n")


def test_every_acknowledged_write_is_on_the_follower(etcd: EtcdProcess) -> None:
    with sync_shard(etcd, 2) as shard:
        leader, (follower,) = settled(shard)
        with wire.connect(leader) as writer, wire.connect(follower) as reader:
            for i in range(300):
                assert set_one(writer, b"k%d" % i, b"v%d" % i) == b"STORED\r\n"
                reader.sendall(b"get k%d\r\n" % i)  # right after the ack, on the follower
                assert wire.read_until(reader, b"END\r\n") == \
                    b"VALUE k%d 0 %d\r\nv%d\r\nEND\r\n" % (i, len(b"v%d" % i), i)
            reply = pipeline(writer, [b"incr n 1\r\n", b"set n 0 0 1\r\n5\r\n", b"incr n 2\r\n",
                                      b"delete k0\r\n", b"ms m 2 T60\r\nhi\r\n"])
            assert reply == b"NOT_FOUND\r\nSTORED\r\n7\r\nDELETED\r\nHD\r\n"
            reader.sendall(b"get n k0\r\nmg m v t\r\n")
            got = wire.read_until(reader, b"\r\nhi\r\n")
            assert got.startswith(b"VALUE n 0 1\r\n7\r\nEND\r\nVA 2 t")
        stats = wire.stats(leader)
        assert stats["memring_replication"] == "sync"
        assert set(stats["memring_repl_isr"].split(",")) == {node_id(leader), node_id(follower)}
        assert stats[f"memring_repl_lag_seq:{node_id(follower)}"] == "0"


def test_a_tls_client_waits_for_the_follower_as_a_plain_one_does(
        etcd: EtcdProcess, private_ca: CertificateAuthority) -> None:
    """A plain connection parks while its write replicates (no task); a TLS one, which has
    its task, awaits it there: both are answered only once the follower holds the write, and
    in order."""
    credential = private_ca.issue("sync-tls")
    context = tls.client_context(private_ca.cert)
    tls_ports: dict[int, int] = {}

    class TlsSyncShard(SyncShard):
        def start(self, port: int | None = None) -> servers.RunningServer:
            port = port or servers.free_port()
            tls_ports[port] = servers.free_port()
            self.extra = (*SyncShard.extra, *tls.server_flags(
                credential, "--tls-listen", f"{servers.HOST}:{tls_ports[port]}"))
            return super().start(port)

    with contextlib.ExitStack() as stack:
        shard = TlsSyncShard(etcd, stack, f"rs{next(_clusters)}", {})
        for _ in range(2):
            shard.start()
        leader, (follower,) = settled(shard)
        with wire.connect(follower) as reader, wire.connect(leader) as plain, \
                tls.connect(tls_ports[leader.port], context) as secure:
            for i in range(100):
                for name, writer in ((b"plain", plain), (b"tls", secure)):
                    key = b"%s%d" % (name, i)
                    writer.sendall(b"set %s 0 0 1\r\nv\r\nget %s\r\n" % (key, key))
                    assert wire.read_until(writer, b"END\r\n") == \
                        b"STORED\r\nVALUE %s 0 1\r\nv\r\nEND\r\n" % key
                    reader.sendall(b"get %s\r\n" % key)  # right after the ack
                    assert wire.read_until(reader, b"END\r\n") == \
                        b"VALUE %s 0 1\r\nv\r\nEND\r\n" % key


def test_kill9_of_the_leader_loses_no_acknowledged_write(etcd: EtcdProcess) -> None:
    with sync_shard(etcd, 3) as shard:
        leader, followers = settled(shard)
        with wire.connect(leader) as sock:
            pipeline(sock, [b"set untouched 7 0 5\r\nhello\r\n"])
            sock.sendall(b"gets untouched\r\n")
            token = int(wire.read_until(sock, b"END\r\n").split(b"\r\n")[0].split()[4])
        acked: list[bytes] = []
        failed: list[str] = []

        def writer() -> None:  # one write at a time; stops at the first failure
            try:
                with wire.connect(leader) as wsock:
                    for i in range(100000):
                        if set_one(wsock, b"tail%d" % i, b"t%05d" % i) != b"STORED\r\n":
                            return
                        acked.append(b"tail%d" % i)
            except (OSError, AssertionError) as exc:
                failed.append(type(exc).__name__)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        wait_for(lambda: len(acked) >= 150, 5.0, "150 acknowledged writes")
        leader.process.kill()
        killed = time.monotonic()
        thread.join(10)
        assert failed, "the writer did not notice the kill"
        assert len(acked) >= 150
        new = wait_for(lambda: next((n for n in followers if n.process.poll() is None
                                     and shard.role(n) == "leader"), None), 5.0, "a new leader")
        print(f"\nsync kill -9: new leader after {(time.monotonic() - killed) * 1000:.0f} ms; "
              f"{len(acked)} writes were acknowledged before the kill")
        items = dump(new, acked)
        lost = [k for k in acked if items[k] is None]
        assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {lost[:5]}"
        assert wire.request(new, b"cas untouched 7 0 3 %d\r\nnew\r\n" % token) == b"STORED\r\n"
        other = next(n for n in followers if n is not new)
        wait_for(lambda: shard.role(other) == "follower", 5.0, "the third node following")
        wait_identical(new, other, [*acked, b"untouched"], timeout=5)


def test_frozen_follower_is_dropped_after_the_lag_bound_and_rejoins(etcd: EtcdProcess
                                                                      ) -> None:
    with sync_shard(etcd, 2) as shard:
        leader, (follower,) = settled(shard)
        servers.freeze(follower.process.pid)
        try:
            with wire.connect(leader) as sock:
                started = time.monotonic()
                assert set_one(sock, b"during", b"frozen") == b"STORED\r\n"
                waited = time.monotonic() - started
                assert shard.isr() == {node_id(leader)}, "the ISR did not shrink in etcd"
                quick = []
                for i in range(50):  # no longer waiting for the frozen follower
                    t0 = time.monotonic()
                    assert set_one(sock, b"f%d" % i, b"x") == b"STORED\r\n"
                    quick.append(time.monotonic() - t0)
        finally:
            follower.process.send_signal(signal.SIGCONT)
        print(f"\nfrozen follower: first write waited {waited * 1000:.0f} ms "
              f"(bound {MAX_LAG_MS} ms), then median "
              f"{sorted(quick)[len(quick) // 2] * 1000:.1f} ms")
        assert MAX_LAG_MS / 1000 * 0.8 <= waited < 3.0
        wait_for(lambda: shard.isr() == {node_id(leader), node_id(follower)}, 10.0,
                 "the follower back in the ISR")
        keys = [b"during"] + [b"f%d" % i for i in range(50)]
        wait_identical(leader, follower, keys, timeout=5)
        assert int(wire.stats(leader)["memring_repl_isr_shrinks"]) >= 1


def test_restarted_empty_follower_takes_a_snapshot_while_writes_go_on(etcd: EtcdProcess
                                                                        ) -> None:
    with sync_shard(etcd, 2) as shard:
        leader, (follower,) = settled(shard)
        keys = [b"early%d" % i for i in range(3000)]
        with wire.connect(leader) as sock:
            for start in range(0, len(keys), 500):
                assert pipeline(sock, [b"set %s 0 0 200\r\n%s\r\n" % (k, b"y" * 200)
                                       for k in keys[start:start + 500]]) == b"STORED\r\n" * 500
        port = follower.port
        follower.process.kill()
        follower.process.wait(5)
        wait_for(lambda: shard.isr() == {node_id(leader)}, 10.0, "the ISR without the dead one")
        acked: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            with wire.connect(leader) as wsock:
                i = 0
                while not stop.is_set() and i < 20000:
                    assert set_one(wsock, b"live%d" % i, b"%08d" % i) == b"STORED\r\n"
                    acked.append(time.monotonic())
                    i += 1
                    time.sleep(0.001)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            restarted = shard.start(port)
            joined = time.monotonic()
            wait_for(lambda: int(wire.stats(restarted)["memring_repl_snapshots_received"]) >= 1,
                     10.0, "a snapshot")
            wait_for(lambda: shard.isr() == {node_id(leader), node_id(restarted)}, 10.0,
                     "the restarted follower in the ISR")
            back = time.monotonic()
            during = sum(1 for t in acked if joined <= t <= back)
        finally:
            stop.set()
            thread.join(10)
        assert during > 0, "no write was acknowledged while the follower caught up"
        live = [b"live%d" % i for i in range(len(acked))]
        wait_identical(leader, restarted, keys + live, timeout=10)
        print(f"\nrestarted follower: in the ISR {back - joined:.2f} s after it answered; "
              f"{during} writes acknowledged meanwhile; {len(keys) + len(live)} keys identical")


def test_frozen_leader_acknowledges_nothing_after_its_successor(etcd: EtcdProcess) -> None:
    with sync_shard(etcd, 2) as shard:
        leader, (follower,) = settled(shard)
        with wire.connect(leader) as sock:
            assert set_one(sock, b"before", b"1") == b"STORED\r\n"
            servers.freeze(leader.process.pid)
            stopped = time.monotonic()
            sock.sendall(b"".join(b"set q%d 0 0 1\r\nq\r\n" % i for i in range(20)))
            try:
                wait_for(lambda: shard.role(follower) == "leader", 6.0, "the follower leading")
                elected = time.monotonic()
                assert set_one_fresh(follower, b"after", b"2") == b"STORED\r\n"
            finally:
                leader.process.send_signal(signal.SIGCONT)
            sock.settimeout(3)
            replies = b""
            with contextlib.suppress(OSError):
                while replies.count(b"\r\n") < 20 and (chunk := sock.recv(65536)):
                    replies += chunk
        assert b"STORED" not in replies, replies[:200]
        answers = sorted(set(replies.split(b"\r\n")) - {b""}) or "a closed connection"
        print(f"\nfrozen leader: successor after {elected - stopped:.2f} s; the 20 queued "
              f"writes got {answers}")
        wait_for(lambda: shard.role(leader) == "follower", 10.0, "the old leader following")
        wait_identical(follower, leader, [b"before", b"after"] + [b"q%d" % i for i in range(20)],
                       timeout=10)
        assert dump(leader, [b"q0"])[b"q0"] is None


def set_one_fresh(node: servers.RunningServer, key: bytes, value: bytes) -> bytes:
    with wire.connect(node) as sock:
        return set_one(sock, key, value)


def test_min_insync_refuses_writes_without_enough_replicas(etcd: EtcdProcess) -> None:
    with sync_shard(etcd, 2) as shard:
        leader, (follower,) = settled(shard)

        async def configure(min_insync: int) -> None:
            async with EtcdCoordinator.connect(etcd.url, shard.cluster) as coordinator:
                await coordinator.put_config(ClusterConfig(min_insync=min_insync))

        trio.run(configure, 2)
        wait_for(lambda: wire.stats(leader).get("memring_repl_min_insync") == "2", 5.0,
                 "the leader seeing min_insync 2")
        assert set_one_fresh(leader, b"a", b"1") == b"STORED\r\n"
        follower.process.kill()
        wait_for(lambda: shard.isr() == {node_id(leader)}, 10.0, "the ISR shrink")
        # etcd shows the shrink a moment before the leader has heard its txn succeed
        wait_for(lambda: wire.stats(leader)["memring_repl_isr"] == node_id(leader), 5.0,
                 "the leader seeing the ISR shrink")
        reply = set_one_fresh(leader, b"b", b"2")
        assert reply.startswith(b"SERVER_ERROR fewer in-sync"), (
            reply, {k: v for k, v in wire.stats(leader).items() if k.startswith("memring")},
            leader.log_text()[-3000:])
        assert wire.request(leader, b"get a\r\n") == b"VALUE a 0 1\r\n1\r\nEND\r\n"
        trio.run(configure, 1)
        wait_for(lambda: set_one_fresh(leader, b"b", b"2") == b"STORED\r\n", 5.0,
                 "writes accepted with min_insync 1")


def test_round_robin_reads_through_the_proxy_see_every_acknowledged_write(
        etcd: EtcdProcess) -> None:

    with sync_shard(etcd, 3) as shard:
        settled(shard)

        async def round_robin() -> None:
            async with EtcdCoordinator.connect(etcd.url, shard.cluster) as coordinator:
                await coordinator.put_config(ClusterConfig(read_policy="round_robin"))

        trio.run(round_robin)
        proxy = shard.stack.enter_context(servers.running("proxy",
                                                          proxy_argv(etcd.url, shard.cluster)))
        wait_for(lambda: set_one_fresh(proxy, b"probe", b"p") == b"STORED\r\n", 10.0,
                 "writes through the proxy")
        wait_for(lambda: len(wire.stats(proxy)) > 0, 5.0, "proxy stats")
        stale = 0
        with wire.connect(proxy) as sock:
            for i in range(600):  # the same key overwritten: a stale read shows an old value
                assert set_one(sock, b"rr", b"%d" % i) == b"STORED\r\n"
                sock.sendall(b"get rr\r\n")
                got = wire.read_until(sock, b"END\r\n")
                stale += got != b"VALUE rr 0 %d\r\n%d\r\nEND\r\n" % (len(b"%d" % i), i)
        served = [int(wire.stats(n)["get_hits"]) for n in shard.live()]
        print(f"\nround_robin through the proxy: 600 write-then-read pairs, {stale} stale; "
              f"get hits per node {served}")
        assert stale == 0
        assert sum(1 for hits in served if hits >= 100) == 3, served  # followers served reads


def test_leader_transfer_under_load_fails_no_client_request(etcd: EtcdProcess) -> None:
    """The resigning leader refuses new writes (the proxy retries them on the next leader)
    and lets the in-flight ones replicate before it steps down."""

    with sync_shard(etcd, 2) as shard:
        leader, (follower,) = settled(shard)
        proxy = shard.stack.enter_context(servers.running("proxy",
                                                          proxy_argv(etcd.url, shard.cluster)))
        wait_for(lambda: set_one_fresh(proxy, b"probe", b"p") == b"STORED\r\n", 10.0,
                 "writes through the proxy")
        acked: list[bytes] = []
        failures: list[bytes] = []
        stop = threading.Event()

        def writer() -> None:
            with wire.connect(proxy) as sock:
                for i in range(50000):
                    if stop.is_set():
                        return
                    reply = set_one(sock, b"w%d" % i, b"%d" % i)
                    (acked if reply == b"STORED\r\n" else failures).append(
                        b"w%d" % i if reply == b"STORED\r\n" else reply)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            wait_for(lambda: len(acked) >= 100, 5.0, "100 writes")
            moved = subprocess.run(
                [sys.executable, "-m", "memring.cluster", "leader", "transfer", SHARD,
                 node_id(follower), "--etcd", etcd.url, "--cluster", shard.cluster],
                capture_output=True, text=True, timeout=30)
            assert moved.returncode == 0, moved.stdout + moved.stderr
            before = len(acked)
            wait_for(lambda: len(acked) >= before + 100, 5.0, "100 writes on the new leader")
        finally:
            stop.set()
            thread.join(10)
        assert shard.role(follower) == "leader"
        print(f"\nleader transfer under load: {len(acked)} writes acknowledged, "
              f"{len(failures)} failed")
        assert failures == []
        wait_for(lambda: shard.isr() == {node_id(leader), node_id(follower)}, 10.0,
                 "the old leader back in the ISR")
        items = dump(follower, acked)
        assert [k for k in acked if items[k] is None] == []


def test_unclean_election_picks_the_most_advanced_live_member(etcd: EtcdProcess) -> None:
    """No ISR member alive (both followers dropped while frozen, then the leader killed):
    with unclean_election "auto" the follower holding more of the writes must lead.

    A frozen follower still receives what fits in its socket buffers and applies it when it
    wakes, so the first one frozen misses 20 MB of writes: more than loopback TCP buffers
    hold for a process that does not read (~4-6 MB here), so it is really behind. The lag
    bound and the backlog are wider than the other tests' so that the second follower keeps
    up with those 20 MB from the backlog (dropped, or fed by snapshots, it would miss some of
    them when it is frozen: lost with the leader, rightly)."""
    class WideLagShard(SyncShard):
        extra = ("--max-lag-ms", "1500", "--max-lag-bytes", str(64 << 20),
                 "--replication-backlog", str(64 << 20))

    with contextlib.ExitStack() as stack:
        shard = WideLagShard(etcd, stack, f"rs{next(_clusters)}", {})
        for _ in range(3):
            shard.start()
        leader, followers = settled(shard)
        behind, ahead = sorted(followers, key=node_id, reverse=True)  # id order must not help
        servers.freeze(behind.process.pid)
        try:
            assert set_one_fresh(leader, b"zero", b"0") == b"STORED\r\n"  # lag: then a drop
            wait_for(lambda: node_id(behind) not in shard.isr(), 10.0, "the first drop")
            first = [b"first%d" % i for i in range(320)]
            big = b"f" * (64 << 10)
            with wire.connect(leader) as sock:
                for start in range(0, len(first), 40):
                    assert pipeline(sock, [b"set %s 0 0 %d\r\n%s\r\n" % (k, len(big), big)
                                           for k in first[start:start + 40]]) == \
                        b"STORED\r\n" * 40
            servers.freeze(ahead.process.pid)
            try:
                assert set_one_fresh(leader, b"one", b"1") == b"STORED\r\n"
                wait_for(lambda: shard.isr() == {node_id(leader)}, 10.0, "the second drop")
                with wire.connect(leader) as sock:
                    assert set_one(sock, b"last", b"2") == b"STORED\r\n"
                leader.process.kill()
                leader.process.wait(5)
            finally:
                ahead.process.send_signal(signal.SIGCONT)
        finally:
            behind.process.send_signal(signal.SIGCONT)
        new = wait_for(lambda: next((n for n in followers if shard.role(n) == "leader"), None),
                       10.0, "an unclean leader")
        assert new is ahead, f"{node_id(new)} led; {node_id(ahead)} held more\n" + "\n".join(
            f"--- {node_id(n)}:\n{n.log_text()[-2500:]}" for n in (ahead, behind))
        items = dump(new, first)
        missing = [k for k in first if items[k] is None]
        assert not missing, f"{len(missing)} of the 20 MB missing on the new leader"
        wait_for(lambda: shard.role(behind) == "follower", 10.0, "the other following")
        wait_identical(new, behind, [*first, b"last"], timeout=10)


def test_auto_mode_follows_the_cluster_config_live(etcd: EtcdProcess) -> None:
    """`--replication auto` (the default with --peer-listen): sync until `memring config set
    replication async`, and back, without a restart."""
    class AutoShard(SyncShard):
        mode = "auto"

    with contextlib.ExitStack() as stack:
        shard = AutoShard(etcd, stack, f"rs{next(_clusters)}", {})
        for _ in range(2):
            shard.start()
        leader, _ = settled(shard)
        assert wire.stats(leader)["memring_replication"] == "sync"
        for mode in ("async", "sync"):
            done = subprocess.run(
                [sys.executable, "-m", "memring.cluster", "config", "set", "replication", mode,
                 "--etcd", etcd.url, "--cluster", shard.cluster],
                capture_output=True, text=True, timeout=30)
            assert done.returncode == 0, done.stdout + done.stderr
            wait_for(lambda m=mode: all(wire.stats(n)["memring_replication"] == m
                                        for n in shard.live()), 5.0, f"{mode} everywhere")
            assert set_one_fresh(leader, b"k-" + mode.encode(), b"v") == b"STORED\r\n"


def test_no_reply_depends_on_a_write_the_followers_do_not_hold(etcd: EtcdProcess) -> None:
    """Issue 12's dirty read: another connection's get of a key whose newest write the
    in-sync followers do not hold yet waits for them, per key (a get of another key does
    not wait); it is answered once the write is replicated or its follower left the ISR."""
    with sync_shard(etcd, 2) as shard:
        leader, (follower,) = settled(shard)
        with wire.connect(leader) as writer, wire.connect(leader) as reader:
            assert set_one(writer, b"dirty", b"v1") == b"STORED\r\n"
            assert set_one(writer, b"other", b"o1") == b"STORED\r\n"
            servers.freeze(follower.process.pid)
            try:
                writer.sendall(b"set dirty 0 0 2\r\nv2\r\n")  # waits for the frozen follower
                time.sleep(0.05)
                reader.sendall(b"get other\r\n")  # another key: no wait
                assert wire.read_until(reader, b"END\r\n", timeout=2.0) == \
                    b"VALUE other 0 2\r\no1\r\nEND\r\n"
                reader.sendall(b"get dirty\r\n")
                reader.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    reader.recv(100)  # v2 is on the leader alone: no reply yet
                reader.settimeout(wire.SOCKET_TIMEOUT)
                # the follower leaves the ISR (max lag 500 ms): the write is acknowledged,
                # and the held get answered, in that order on the wire's clock
                assert wire.read_until(writer, b"\r\n", timeout=10.0) == b"STORED\r\n"
                assert wire.read_until(reader, b"END\r\n", timeout=5.0) == \
                    b"VALUE dirty 0 2\r\nv2\r\nEND\r\n"
            finally:
                follower.process.send_signal(signal.SIGCONT)
