"""Backends as cluster members against a real etcd: one leader per shard, fenced writes, fast
failover after kill -9, step-down of a frozen leader, and a graceful leave.

One etcd serves the module; each test uses its own cluster name. Backends are real processes
(tests/helpers/servers.py) with the cluster flags; every wait is a bounded loop or a `fail_after`.
"""

from __future__ import annotations

import os
import signal
import statistics
import time

import pytest
import trio

from memring.cluster.etcd_process import EtcdProcess
from tests.helpers import servers, wire
from tests.helpers.cluster import SHARD, node_id, shard_of, wait_for, wait_in_sync

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

TRIALS = 10


def first_stored(node: servers.RunningServer, timeout: float = 5.0) -> float:
    """Write to `node` until one write is STORED; the monotonic time it was acknowledged."""
    deadline = time.monotonic() + timeout
    with wire.connect(node) as sock:
        while time.monotonic() < deadline:
            sock.sendall(b"set failover 0 0 1\r\nx\r\n")
            line = wire.read_until(sock, b"\r\n")
            if line == b"STORED\r\n":
                return time.monotonic()
            assert line.startswith(b"SERVER_ERROR "), line
            time.sleep(0.005)
    raise AssertionError(f"no write stored on {node.port} within {timeout}s")


async def test_one_leader_and_fenced_writes(etcd: EtcdProcess) -> None:
    with trio.fail_after(20), shard_of(etcd, 2) as shard:
        leader = shard.leader()
        follower = next(n for n in shard.live() if n is not leader)
        view = await wait_in_sync(shard)
        wait_for(lambda: shard.role(follower) == "follower", 2.0, "follower role")
        record = view.shards[SHARD].leader
        assert record is not None and record.node_id == node_id(leader)
        epoch = view.shards[SHARD].epoch
        for node in (leader, follower):
            stats = wire.stats(node)
            assert stats["memring_shard"] == SHARD and stats["memring_node_id"] == node_id(node)
            assert int(stats["memring_epoch"]) == epoch
        refused = b"SERVER_ERROR not the leader of shard s1\r\n"
        writes = (b"set k 0 0 1\r\nv\r\n", b"add k 0 0 1\r\nv\r\n", b"delete k\r\n",
                  b"incr n 1\r\n", b"touch k 10\r\n", b"flush_all\r\n", b"ms k 1\r\nv\r\n",
                  b"md k\r\n", b"ma n N0\r\n", b"mg k T30 v\r\n", b"mg k N30 v\r\n",
                  b"gat 10 k\r\n", b"ms k 1 q\r\nv\r\n")
        for write in writes:
            assert wire.request(follower, write) == refused, write
        assert wire.request(follower, b"set k 0 0 1 noreply\r\nv\r\n") == b""
        assert wire.request(follower, b"get k\r\nmg k v\r\n") == b"END\r\nEN\r\n"  # reads served
        assert wire.request(leader, b"set k 0 0 1\r\nv\r\nget k\r\n") == \
            b"STORED\r\nVALUE k 0 1\r\nv\r\nEND\r\n"
        assert wire.request(follower, b"get k\r\n") == b"END\r\n"  # no replication yet


async def test_kill9_failover_under_a_second(etcd: EtcdProcess) -> None:
    times = []
    with trio.fail_after(45), shard_of(etcd, 2) as shard:
        for _ in range(TRIALS):
            await wait_in_sync(shard)
            leader = shard.leader()
            follower = next(n for n in shard.live() if n is not leader)
            killed = time.monotonic()
            leader.process.kill()
            times.append(first_stored(follower) - killed)
            leader.process.wait(5)
            shard.start(leader.port)  # back as a follower (new incarnation, empty)
            assert shard.role(follower) == "leader"
    median, worst = statistics.median(times), max(times)
    print(f"\nkill -9 -> first write on the new leader over {TRIALS} trials: "
          f"median {median * 1000:.0f} ms, max {worst * 1000:.0f} ms, "
          f"all {[round(t * 1000) for t in times]}")
    assert median < 1.0, times
    assert worst < 2.5, times


async def test_frozen_leader_steps_down_and_refuses_queued_writes(etcd: EtcdProcess) -> None:
    with trio.fail_after(25), shard_of(etcd, 2) as shard:
        await wait_in_sync(shard)
        leader = shard.leader()
        follower = next(n for n in shard.live() if n is not leader)
        with wire.connect(leader) as sock:
            servers.freeze(leader.pid)
            stopped = time.monotonic()
            try:
                queued = 20
                sock.sendall(b"".join(b"set frozen%d 0 0 1\r\nx\r\n" % i for i in range(queued)))
                took_over = wait_for(lambda: shard.role(follower) == "leader" and time.monotonic(),
                                     6.0, "takeover by the follower")
                print(f"\nSIGSTOP of the leader -> follower leads after "
                      f"{(took_over - stopped) * 1000:.0f} ms")
                assert took_over - stopped < 3.5
            finally:
                os.kill(leader.pid, signal.SIGCONT)
            replies = wire.read_until(sock, b"\r\n", timeout=5)
            while replies.count(b"\r\n") < queued:
                replies += wire.read_until(sock, b"\r\n", timeout=5)
        lines = replies.split(b"\r\n")[:-1]
        assert len(lines) == queued and all(line.startswith(b"SERVER_ERROR ") for line in lines), \
            lines
        # (until it has stepped down, a leader whose lease lapsed refuses reads too)
        wait_for(lambda: shard.role(leader) == "follower", 5.0, "old leader rejoining")
        assert wire.request(leader, b"get frozen0 frozen19\r\n") == b"END\r\n"
        assert wire.request(follower, b"set after 0 0 1\r\nx\r\n") == b"STORED\r\n"


async def test_graceful_leave_removes_the_node_at_once(etcd: EtcdProcess) -> None:
    # "At once" is against the lease: its expiry would take 4-6 s after the last keepalive
    # (every TTL/3). A long TTL leaves a wide margin to a slow but revoked exit on a busy
    # machine; half of it tells the revocation from the expiry.
    ttl = 6.0
    with trio.fail_after(30), shard_of(etcd, 2, ("--lease-ttl", f"{ttl:g}")) as shard:
        await wait_in_sync(shard)
        leader = shard.leader()
        follower = next(n for n in shard.live() if n is not leader)
        leader.process.terminate()
        stopped = time.monotonic()
        while node_id(leader) in (await shard.view()).nodes:
            assert time.monotonic() - stopped < ttl / 2, f"node key in etcd after {ttl / 2:g} s"
            await trio.sleep(0.01)
        gone = time.monotonic() - stopped
        print(f"\ngraceful stop -> node key gone from etcd after {gone * 1000:.0f} ms")
        leader.process.wait(5)
        first_stored(follower, timeout=ttl / 2)  # it resigned: no lease expiry waited for


def test_etcd_unreachable_at_start_serves_reads() -> None:
    url = f"http://{servers.HOST}:{servers.free_port()}"
    argv = servers.backend_argv("--etcd", url, "--shard", SHARD)
    with servers.running("memring-backend", argv) as node:
        assert wire.stats(node)["memring_role"] == "syncing"
        assert wire.request(node, b"get k\r\nset k 0 0 1\r\nv\r\n") == \
            b"END\r\nSERVER_ERROR not the leader of shard s1\r\n"
        time.sleep(0.5)
    err = node.log_text()
    assert url in err and "retrying" in err
    assert err.count("ERROR") <= 3, err  # bounded noise
