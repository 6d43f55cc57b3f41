"""What the peer link's handshake costs a follower that (re)connects (issue 13): connect ->
CHALLENGE -> HELLO -> WELCOME checked, against a real leader process, with and without a peer
secret, in one run.

For each mode it starts a one-node shard (the node leads it) on a spawned etcd, registers a
member `bench` of that shard under a lease of its own (so the leader admits it as it would a
real follower), then connects `--count` times as `bench`: reads CHALLENGE, sends HELLO (with
its proof when there is a secret), reads WELCOME and checks it (the leader's identity and,
with a secret, its proof), then hangs up. The time of each handshake, from connect() to the
checked WELCOME, is what a follower's reconnection pays before its first data byte.

    .venv/bin/python bench/peer_handshake.py [--count 300]
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Iterator
from pathlib import Path

import trio

from memring.backend.replication.peer_auth import PeerKey, new_nonce, read_secret
from memring.cluster.coordinator import Incarnation, NodeRecord
from memring.cluster.etcd_coordinator import EtcdCoordinator
from memring.cluster.etcd_process import EtcdProcess, free_port, start_etcd
from memring.cluster.launcher import write_peer_secret
from memring.protocol.replication import (
    NONCE_SIZE,
    ORIGIN,
    Challenge,
    Hello,
    ReplicationParser,
    Welcome,
    encode,
)
from memring.protocol.sentinels import NEED_DATA

HOST = "127.0.0.1"
SHARD = "s1"
READY_TIMEOUT = 20.0


@contextlib.contextmanager
def leader(etcd: EtcdProcess, cluster: str, secret_file: str) -> Iterator[tuple[str, int]]:
    """A one-node shard's backend; yields its peer address once it answers."""
    port, peer_port = free_port(), free_port()
    argv = [sys.executable, "-m", "memring.backend", "--listen", f"{HOST}:{port}",
            "--etcd", etcd.url, "--cluster", cluster, "--shard", SHARD,
            "--peer-listen", f"{HOST}:{peer_port}", "--replication", "sync",
            *(["--peer-secret-file", secret_file] if secret_file else [])]
    process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        yield HOST, peer_port
    finally:
        process.terminate()
        process.wait(10)


def read_frame(sock: socket.socket, parser: ReplicationParser) -> object:
    while True:
        event = parser.next_event()
        if event is not NEED_DATA:
            return event
        data = sock.recv(65536)
        if not data:
            return None
        parser.receive_data(data)


def one_handshake(peer: tuple[str, int], me: Incarnation, key: PeerKey,
                  leader_key: tuple[str, int, int]) -> float | None:
    """Seconds from connect() to a checked WELCOME; None if the leader refused."""
    started = time.perf_counter()
    with socket.create_connection(peer, timeout=2.0) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        parser = ReplicationParser()
        challenge = read_frame(sock, parser)
        assert isinstance(challenge, Challenge), challenge
        nonce = new_nonce()
        sock.sendall(encode(Hello(me.node_id, me.lease_id, ORIGIN, nonce,
                                  key.follower_proof(me, ORIGIN, challenge.nonce, nonce))))
        welcome = read_frame(sock, parser)
        if not isinstance(welcome, Welcome):
            return None
        assert (welcome.node_id, welcome.lease_id, welcome.epoch) == leader_key
        leader_me = Incarnation(welcome.node_id, welcome.lease_id)
        expected = key.leader_proof(leader_me, welcome.epoch, me, nonce, challenge.nonce)
        assert key.verify(expected, welcome.proof)
        return time.perf_counter() - started


async def measure(etcd: EtcdProcess, mode: str, count: int, workdir: Path) -> list[float]:
    cluster = f"hs{mode}{int(time.time())}"
    secret_file = ""
    if mode == "secret":
        workdir.mkdir(parents=True, exist_ok=True)
        secret_file = str(workdir / "peer-secret")
        write_peer_secret(Path(secret_file))
    key = PeerKey(read_secret(secret_file) if secret_file else b"", cluster, SHARD)
    with leader(etcd, cluster, secret_file) as peer:
        async with EtcdCoordinator.connect(etcd.url, cluster) as coordinator, \
                coordinator.open_session(10.0) as session:
            await coordinator.register_node(session, NodeRecord(
                "bench", "127.0.0.1:1", SHARD, peer_address="127.0.0.1:1"))
            me = Incarnation("bench", session.lease_id)
            with trio.fail_after(READY_TIMEOUT):  # the node leads and has seen `bench`
                while True:
                    view = await coordinator.snapshot()
                    shard = view.shards.get(SHARD)
                    if shard is not None and shard.leader is not None:
                        leader_key = (shard.leader.node_id, shard.leader.lease_id, shard.epoch)
                        with contextlib.suppress(OSError, AssertionError):
                            if await trio.to_thread.run_sync(one_handshake, peer, me, key,
                                                             leader_key):
                                break
                    await trio.sleep(0.1)

            def run() -> list[float]:
                times = []
                for _ in range(count):
                    took = one_handshake(peer, me, key, leader_key)
                    assert took is not None, "refused"
                    times.append(took)
                return times
            return await trio.to_thread.run_sync(run)


def summary(times: list[float]) -> str:
    ms = sorted(t * 1000 for t in times)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (f"median {statistics.median(ms):.3f} ms  p90 {ms[int(len(ms) * 0.9)]:.3f} ms  "
            f"p99 {p99:.3f} ms  max {ms[-1]:.3f} ms")


async def main_async(args: argparse.Namespace) -> None:
    key = PeerKey(b"k" * 32, "c", SHARD)
    me, nonce = Incarnation("n", 1), bytes(NONCE_SIZE)
    per_proof = min(timeit.repeat(lambda: key.follower_proof(me, ORIGIN, nonce, nonce),
                                  number=10_000, repeat=3)) / 10_000
    print(f"one HMAC-SHA256 proof (in process): {per_proof * 1e6:.1f} us")
    etcd = start_etcd()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            results = {}
            modes = ("plain", "secret", "secret", "plain")[:2 * args.rounds]  # ABBA
            for index, mode in enumerate(modes):
                times = await measure(etcd, mode, args.count, Path(workdir) / str(index))
                results.setdefault(mode, []).extend(times)
            for mode, times in results.items():
                print(f"{mode:>6}: {len(times)} handshakes  {summary(times)}")
            plain, secret = (statistics.median(results[m]) for m in ("plain", "secret"))
            print(f"secret - plain (medians): {(secret - plain) * 1000:+.3f} ms")
    finally:
        etcd.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="handshakes per mode and round")
    parser.add_argument("--rounds", type=int, default=1, choices=(1, 2))
    args = parser.parse_args()
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
