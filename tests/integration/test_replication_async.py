"""Async replication against a real etcd: one shard of two backends with
`--replication async --peer-listen`: live streaming, snapshot catch-up of a late follower
while a writer runs, and kill -9 of the leader (the follower keeps what it had acked, and a
`gets` token taken before the failover still works for `cas` on the new leader).

Items are compared as `mg <key> v f c t` shows them (value, flags, CAS, TTL within 1 s).
Every wait is a bounded loop.
"""

from __future__ import annotations

import threading
import time

import pytest

from memring.backend.settings import load_settings
from memring.cluster.etcd_process import EtcdProcess
from memring.netio.settings import SettingsError
from tests.helpers import servers, wire
from tests.helpers.cluster import replicated_shard, wait_for
from tests.helpers.replicas import dump, pipeline, wait_identical

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]


def stat(node: servers.RunningServer, name: str) -> str:
    return wire.stats(node)[name]


def in_sync(leader: servers.RunningServer) -> bool:
    stats = wire.stats(leader)
    return stats["memring_repl_followers"] == "1" and stats["memring_repl_max_lag"] == "0"


def test_mutations_stream_to_the_follower(etcd: EtcdProcess) -> None:
    with replicated_shard(etcd, 2) as shard:
        leader = shard.leader()
        follower = next(n for n in shard.live() if n is not leader)
        wait_for(lambda: shard.role(follower) == "follower", 5.0, "follower role")
        keys = [b"key%d" % i for i in range(1000)]
        commands = [b"set %s %d %d 6\r\nvalue%d\r\n" % (k, i, 0 if i % 3 else 3600, i % 10)
                    for i, k in enumerate(keys)]
        commands += [b"append %s 0 0 2\r\n+a\r\n" % k for k in keys[:100]]
        commands += [b"set n%d 0 0 2\r\n10\r\n" % i for i in range(20)]
        commands += [b"incr n%d %d\r\n" % (i, i * 7) for i in range(20)]
        commands += [b"delete %s\r\n" % k for k in keys[100:150]]
        commands += [b"ms %s 4 T600 F9\r\nmeta\r\n" % k for k in keys[150:250]]
        commands += [b"mg %s T900\r\n" % k for k in keys[250:300]]  # touch in place
        commands += [b"ma n%d D5\r\n" % i for i in range(10)]
        commands += [b"md %s I\r\n" % k for k in keys[300:310]]  # invalidate in place
        started = time.monotonic()
        with wire.connect(leader) as sock:
            for start in range(0, len(commands), 500):
                reply = pipeline(sock, commands[start:start + 500])
                assert b"ERROR" not in reply, [x for x in reply.split(b"\r\n") if b"ERROR" in x]
        everything = keys + [b"n%d" % i for i in range(20)]
        waited = wait_identical(leader, follower, everything, timeout=10)
        print(f"\n{len(commands)} mutations on the leader -> identical follower "
              f"{time.monotonic() - started:.2f} s after the first write "
              f"(waited {waited:.2f} s after the last)")
        follower_items = dump(follower, everything)
        assert follower_items[b"key100"] is None and follower_items[b"key0"] is not None
        assert follower_items[b"n3"] is not None and follower_items[b"n3"][0].strip() == b"36"
        for node in (follower, leader):  # SIGTERM still stops a replicating node at once
            node.process.terminate()
            assert node.process.wait(3) == 0


def test_replication_is_opt_in_and_needs_its_peer_port() -> None:
    assert load_settings([]).replication == "off"
    etcd = ["--etcd", "http://127.0.0.1:2379", "--shard", "s1"]
    assert load_settings([*etcd, "--replication", "async", "--peer-listen",
                          "127.0.0.1:7000"]).replication == "async"
    for argv in (["--replication", "async", "--peer-listen", "127.0.0.1:7000"],
                 [*etcd, "--replication", "async"]):
        with pytest.raises(SettingsError):
            load_settings(argv)


def test_late_follower_catches_up_by_snapshot_while_writes_go_on(etcd: EtcdProcess) -> None:
    with replicated_shard(etcd, 1) as shard:
        leader = shard.leader()
        keys = [b"early%d" % i for i in range(1000)]
        with wire.connect(leader) as sock:
            reply = pipeline(sock, [b"set %s %d 0 100\r\n%s\r\n" % (k, i, b"x" * 100)
                                    for i, k in enumerate(keys)])
            assert reply == b"STORED\r\n" * 1000
        acked: list[float] = []
        stop = threading.Event()

        def writer() -> None:
            with wire.connect(leader) as wsock:
                i = 0
                while not stop.is_set():
                    wsock.sendall(b"set live%d 0 0 8\r\n%08d\r\n" % (i, i))
                    assert wire.read_until(wsock, b"\r\n") == b"STORED\r\n"
                    acked.append(time.monotonic())
                    i += 1
                    time.sleep(0.001)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        try:
            follower = shard.start()
            joined = time.monotonic()
            caught_up = joined + wait_identical(leader, follower, keys, timeout=15)
            during = sum(1 for t in acked if joined <= t <= caught_up)
        finally:
            stop.set()
            thread.join(5)
        assert int(stat(follower, "memring_repl_snapshots_received")) >= 1
        assert during > 0, "no write was acknowledged while the follower caught up"
        live = [b"live%d" % i for i in range(len(acked))]
        wait_identical(leader, follower, keys + live, timeout=10)
        print(f"\nlate follower: 1,000 keys identical {caught_up - joined:.2f} s after it "
              f"answered (snapshot); {during} writes acknowledged meanwhile; then all "
              f"{len(keys) + len(live)} keys identical")


def test_kill9_failover_keeps_acked_writes_and_cas(etcd: EtcdProcess) -> None:
    with replicated_shard(etcd, 2) as shard:
        leader = shard.leader()
        follower = next(n for n in shard.live() if n is not leader)
        wait_for(lambda: shard.role(follower) == "follower", 5.0, "follower role")
        keys = [b"before%d" % i for i in range(500)]
        with wire.connect(leader) as sock:
            pipeline(sock, [b"set %s 5 0 4\r\nv%03d\r\n" % (k, i % 1000)
                            for i, k in enumerate(keys)])
            pipeline(sock, [b"set untouched 7 0 5\r\nhello\r\n"])
            sock.sendall(b"gets untouched\r\n")
            line = wire.read_until(sock, b"END\r\n").split(b"\r\n")[0]
        token = int(line.split()[4])
        wait_for(lambda: in_sync(leader), 5.0, "the follower acking everything")
        tail = [b"tail%d" % i for i in range(200)]
        with wire.connect(leader) as sock:
            pipeline(sock, [b"set %s 0 0 1\r\nt\r\n" % k for k in tail])
        leader.process.kill()
        killed = time.monotonic()
        wait_for(lambda: shard.role(follower) == "leader", 5.0, "the follower leading")
        print(f"\nkill -9 -> follower leads after {(time.monotonic() - killed) * 1000:.0f} ms")
        items = dump(follower, keys + tail)
        missing = [k for k in keys if items[k] is None]
        assert not missing, f"{len(missing)} acked keys lost, e.g. {missing[:5]}"
        survived = sum(1 for k in tail if items[k] is not None)
        print(f"async: {survived} of the last {len(tail)} writes (sent right before "
              f"kill -9) survived the failover")
        assert wire.request(follower, b"cas untouched 7 0 3 %d\r\nnew\r\n" % token) == \
            b"STORED\r\n"
        assert wire.request(follower, b"get untouched\r\n") == \
            b"VALUE untouched 7 3\r\nnew\r\nEND\r\n"
