"""A client's replies stay in its order while one of its writes waits for a leaderless shard.

Round seven's drainer (proxy/reply_stream.py) sends the replies that are ready before it
awaits a slot still waiting. Here one connection pipelines a write to a shard with no leader
(its only node killed: the write waits --leader-wait-ms, then fails) and, behind it, reads
and writes to a healthy shard whose replies are ready long before. The healthy replies must
come after the failed write's, byte for byte in order; another client of the healthy shard
is served meanwhile. Real etcd, real backends, a real proxy on loopback.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time

import pytest

from memring.cluster.etcd_process import EtcdProcess
from memring.proxy.ketama import KetamaRing
from tests.helpers import servers, wire
from tests.helpers.cluster import node_id, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.requires_etcd]

LEADER_WAIT_MS = 1500
BIG_GETS = 8  # 7 MB of replies: more than the sockets hold, so a drainer sends them


def lone_backend(etcd: EtcdProcess, cluster: str, shard: str
                 ) -> contextlib.AbstractContextManager[servers.RunningServer]:
    return servers.running("memring-backend", servers.backend_argv(
        "--etcd", etcd.url, "--cluster", cluster, "--shard", shard, "--replication", "sync",
        "--peer-listen", f"{servers.HOST}:{servers.free_port()}"))


def test_replies_ready_behind_a_waiting_write_keep_their_order(etcd: EtcdProcess) -> None:
    ring = KetamaRing([("s1", 1), ("s2", 1)], "md5")
    on = {name: [b"wo%d" % i for i in range(2000) if ring.server_for(b"wo%d" % i) == index]
          for index, name in enumerate(("s1", "s2"))}
    healthy, doomed = on["s1"][:4], on["s2"][0]
    cluster = f"wo{time.monotonic_ns()}"
    with contextlib.ExitStack() as stack:
        s1 = stack.enter_context(lone_backend(etcd, cluster, "s1"))
        s2 = stack.enter_context(lone_backend(etcd, cluster, "s2"))
        for node in (s1, s2):
            wait_for(lambda node=node: wire.stats(node).get("memring_role") == "leader", 10,
                     "each shard's leader")
        proxy = stack.enter_context(servers.running("proxy", [
            sys.executable, "-m", "memring.proxy", "--listen", servers.HOST + ":{port}",
            "--etcd", etcd.url, "--cluster", cluster, "--leader-wait-ms", str(LEADER_WAIT_MS)]))
        wait_for(lambda: wire.request(proxy, b"set %s 0 0 1\r\n0\r\nset %s 0 0 1\r\n0\r\n" % (
            healthy[0], doomed)) == b"STORED\r\nSTORED\r\n", 10, "writes to both shards")
        wire.store(proxy, {healthy[1]: b"one", healthy[2]: b"two"})

        s2.process.kill()
        s2.process.wait()
        wait_for(lambda: wire.stats(proxy).get(f"backend:{node_id(s2)}:state", "") not in
                 ("", "up"), 10, "s2's node ejected")
        ready = (b"get %s\r\n" % healthy[1] + b"mg %s v\r\n" % healthy[2]
                 + b"get %s %s %s\r\n" % (healthy[2], b"wo-miss", healthy[1])
                 + b"set %s 0 0 5\r\nafter\r\n" % healthy[0] + b"get %s\r\n" % healthy[0])
        answer = (b"VALUE %s 0 3\r\none\r\nEND\r\n" % healthy[1] + b"VA 3\r\ntwo\r\n"
                  + b"VALUE %s 0 3\r\ntwo\r\nVALUE %s 0 3\r\none\r\nEND\r\n" % (
                      healthy[2], healthy[1])
                  + b"STORED\r\n" + b"VALUE %s 0 5\r\nafter\r\nEND\r\n" % healthy[0])
        big = b"b" * 900_000  # a reply the client's socket cannot take at once
        wire.store(proxy, {healthy[3]: big})
        big_reply = b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (healthy[3], len(big), big)
        # a small receive buffer, set before connecting (shrunk after, this kernel's
        # loopback stalls the stream at ~270 KB, memcached's too)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(proxy.address)
        with sock, wire.connect(proxy) as other:
            started = time.monotonic()
            # the big reply makes the client behind: a drainer owns its queue when the
            # waiting write and the ready replies behind it come
            sock.sendall(b"get %s\r\n" % healthy[3] * BIG_GETS
                         + b"set %s 0 0 1\r\n2\r\n" % doomed + ready)
            # another client of the healthy shard is not held behind that wait
            other.sendall(b"get %s\r\n" % healthy[1])
            assert wire.read_until(other, b"END\r\n", timeout=5) == \
                b"VALUE %s 0 3\r\none\r\nEND\r\n" % healthy[1]
            other_at = time.monotonic() - started
            time.sleep(0.3)  # not reading yet
            got = b""
            sock.settimeout(0.5)
            deadline = time.monotonic() + 10
            while not got.endswith(b"after\r\nEND\r\n") and time.monotonic() < deadline:
                try:
                    chunk = sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                got += chunk
            done_at = time.monotonic() - started
        assert got.startswith(big_reply * BIG_GETS), (len(got), got[-300:])
        first, _, rest = got[len(big_reply) * BIG_GETS:].partition(b"\r\n")
        assert first.startswith(b"SERVER_ERROR "), (first, rest[:200])
        assert rest == answer, rest[:400]
        assert done_at >= LEADER_WAIT_MS / 1000 - 0.1, done_at  # the write did wait
        assert other_at < LEADER_WAIT_MS / 1000 / 2, other_at
