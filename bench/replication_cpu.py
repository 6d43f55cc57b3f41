"""CPU seconds per replicated set, leader and follower, of two checkouts of memring: an A/B
that a shared machine does not blur as much as throughput (a busy neighbour slows a process
down but hardly changes the CPU time each set costs it).

For each run it starts a sync shard of 2 backends (pinned to --server-cpu) of one checkout on
a spawned etcd, waits until both are in the ISR, sends --sets sets of --value-size bytes (100) in
pipelined batches of 50 from one connection to the leader, and reads each backend's user +
system CPU time (/proc/PID/stat) before and after. The runs alternate A, B, B, A, A, B, ...;
B is this checkout, A the one under --base (e.g. `git archive main | tar -x -C /tmp/base`),
run with the same Python and PYTHONPATH=<base>.

    .venv/bin/python bench/replication_cpu.py --base /tmp/base [--b-flags "--peer-secret-file F"]

`--clients N` sends the sets from N connections instead, one set in flight on each (as the
writers of the cluster benchmark do: every set is its own write batch and its own wait for
the follower), the load pinned to --load-cpu; with `--get-ratio R` that share of the requests
are gets of keys already set (the cluster benchmark's mix is 0.9), and the figures are per
request: what a leader costs in the cluster without the proxy and the other shards.

`--b-peer-tls` (or `--a-peer-tls`) runs that side's shard with mutual TLS on the peer link:
each node gets a certificate naming its node id from a private CA made for the run (plain vs
TLS on this checkout: `--base .  --b-peer-tls`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from memring.cluster.certificates import CertificateAuthority
from memring.cluster.etcd_process import EtcdProcess, free_port, start_etcd

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
BATCH = 50
READY_TIMEOUT = 20.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stats(port: int) -> dict[str, str]:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"stats\r\n")
        reply = b""
        while not reply.endswith(b"END\r\n"):
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    return dict(line.split(" ", 2)[1:] for line in reply.decode().splitlines()
                if line.startswith("STAT "))


@contextlib.contextmanager
def shard(root: Path, etcd: EtcdProcess, cluster: str, flags: list[str],
          args: argparse.Namespace, ca: CertificateAuthority | None = None
          ) -> Iterator[tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int]]:
    """A sync shard of 2 of the checkout at `root`: yields (leader, follower, leader's port)."""
    env = dict(os.environ)
    if root != REPO:
        env["PYTHONPATH"] = str(root)
    processes, ports = [], []
    try:
        for number in range(2):
            port = free_port()
            ports.append(port)
            tls: list[str] = []
            if ca is not None:  # a certificate naming the node id
                credential = ca.issue(f"r{number}")
                tls = ["--peer-tls", "--peer-tls-cert", str(credential.cert), "--peer-tls-key",
                       str(credential.key), "--peer-tls-ca", str(credential.ca)]
            processes.append(subprocess.Popen(
                ["taskset", "-c", str(args.server_cpu), args.python, "-m", "memring.backend",
                 "--listen", f"{HOST}:{port}", "--etcd", etcd.url, "--cluster", cluster,
                 "--shard", "s1", "--node-id", f"r{number}", "--replication", "sync",
                 "--peer-listen", f"{HOST}:{free_port()}", *tls, *flags],
                env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(0.5)  # the first one leads
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(OSError):
                seen = [stats(port) for port in ports]
                leaders = [i for i, s in enumerate(seen) if s.get("memring_role") == "leader"]
                if len(leaders) == 1 and \
                        len(seen[leaders[0]].get("memring_repl_isr", "").split(",")) == 2:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{root}: no leader with 2 in-sync replicas in time")
            time.sleep(0.1)
        lead = leaders[0]
        yield processes[lead], processes[1 - lead], ports[lead]
    finally:
        for process in processes:
            process.terminate()
            process.wait(10)


def measure(root: Path, etcd: EtcdProcess, cluster: str, flags: list[str],
            args: argparse.Namespace, ca: CertificateAuthority | None = None
            ) -> tuple[float, float, float]:
    """(leader µs/set, follower µs/set, sets/s)."""
    with shard(root, etcd, cluster, flags, args, ca) as (leader, follower, port):
        before = cpu_seconds(leader.pid), cpu_seconds(follower.pid)
        started = time.monotonic()
        value = b"v" * args.value_size
        (one_in_flight if args.clients else pipelined)(port, value, args)
        wall = time.monotonic() - started
        spent = cpu_seconds(leader.pid) - before[0], cpu_seconds(follower.pid) - before[1]
    return spent[0] / args.sets * 1e6, spent[1] / args.sets * 1e6, args.sets / wall


def pipelined(port: int, value: bytes, args: argparse.Namespace) -> None:
    """`args.sets` sets from one connection, in pipelined batches of BATCH."""
    with socket.create_connection((HOST, port)) as sock:
        for first in range(0, args.sets, BATCH):
            sock.sendall(b"".join(b"set k%d 0 0 %d\r\n%s\r\n" % (i % 10000, len(value), value)
                                  for i in range(first, first + BATCH)))
            reply = b""
            while reply.count(b"\r\n") < BATCH:
                reply += sock.recv(65536)
            assert reply.count(b"STORED\r\n") == BATCH, reply[:200]


def one_in_flight(port: int, value: bytes, args: argparse.Namespace) -> None:
    """`args.sets` requests from `args.clients` connections, one in flight on each: sets, or
    with `args.get_ratio` that share of gets of keys already set."""
    selector = selectors.DefaultSelector()
    socks = [socket.create_connection((HOST, port)) for _ in range(args.clients)]
    choice = random.Random(1)
    written = 0

    def request() -> bytes:
        nonlocal written
        if written and choice.random() < args.get_ratio:
            return b"get k%d\r\n" % choice.randrange(min(written, 10000))
        written += 1
        return b"set k%d 0 0 %d\r\n%s\r\n" % ((written - 1) % 10000, len(value), value)

    sent = done = 0
    try:
        for sock in socks:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            selector.register(sock, selectors.EVENT_READ, b"")
            sock.sendall(request())
            sent += 1
        deadline = time.monotonic() + 120.0
        while done < args.sets:
            if time.monotonic() > deadline:
                raise SystemExit("replies stopped coming")
            for key, _ in selector.select(1.0):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                reply = key.data + sock.recv(65536)
                if not (reply == b"STORED\r\n" or reply.endswith(b"END\r\n")):
                    selector.modify(sock, selectors.EVENT_READ, reply)
                    continue
                # (a get may miss: the key's set may still be in flight on another connection)
                assert reply in (b"STORED\r\n", b"END\r\n") or reply.startswith(b"VALUE "), \
                    reply[:200]
                selector.modify(sock, selectors.EVENT_READ, b"")
                done += 1
                if sent < args.sets:
                    sock.sendall(request())
                    sent += 1
    finally:
        selector.close()
        for sock in socks:
            sock.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, type=Path, help="checkout A (a directory)")
    parser.add_argument("--a-flags", default="", help="more backend flags for A")
    parser.add_argument("--b-flags", default="", help="more backend flags for B (this one)")
    parser.add_argument("--a-peer-tls", action="store_true", help="A with peer TLS")
    parser.add_argument("--b-peer-tls", action="store_true", help="B with peer TLS")
    parser.add_argument("--rounds", type=int, default=3, help="A/B pairs (%(default)s)")
    parser.add_argument("--sets", type=int, default=60_000, help="sets per run (%(default)s)")
    parser.add_argument("--value-size", type=int, default=100, help="bytes (%(default)s)")
    parser.add_argument("--clients", type=int, default=0,
                        help="connections with one set in flight each (0: one connection, "
                             f"pipelined batches of {BATCH})")
    parser.add_argument("--get-ratio", type=float, default=0.0,
                        help="with --clients: this share of the requests are gets, and --sets "
                             "counts requests (%(default)s)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    if args.get_ratio and not args.clients:
        parser.error("--get-ratio needs --clients")
    if args.clients:
        os.sched_setaffinity(0, {args.load_cpu})  # the load (this process) off the servers' CPU
    sides = {"A": (args.base.resolve(), shlex.split(args.a_flags)),
             "B": (REPO, shlex.split(args.b_flags))}
    unit = "request" if args.get_ratio else "set"
    results: dict[str, list[tuple[float, float, float]]] = {"A": [], "B": []}
    etcd = start_etcd()
    ca_dir = tempfile.TemporaryDirectory(prefix="replication-cpu-ca-")
    ca = CertificateAuthority.create(Path(ca_dir.name)) if args.a_peer_tls or \
        args.b_peer_tls else None
    with_tls = {"A": args.a_peer_tls, "B": args.b_peer_tls}
    try:
        for number in range(args.rounds):
            for side in ("A", "B") if number % 2 == 0 else ("B", "A"):
                root, flags = sides[side]
                result = measure(root, etcd, f"cpu{side}{number}", flags, args,
                                 ca if with_tls[side] else None)
                results[side].append(result)
                print(f"{side}: leader {result[0]:.1f} µs/{unit}  follower {result[1]:.1f} µs/{unit}"
                      f"  {result[2]:,.0f} {unit}s/s", flush=True)
    finally:
        etcd.stop()
        ca_dir.cleanup()
    for side, runs in results.items():
        leader, follower, rate = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"{side} median of {len(runs)}: leader {leader:.1f} µs/{unit}  follower "
              f"{follower:.1f} µs/{unit}  {rate:,.0f} {unit}s/s")
    medians = {side: [statistics.median(r[i] for r in runs) for i in range(3)]
               for side, runs in results.items()}
    ratios = [medians["B"][i] / medians["A"][i] for i in range(3)]
    print(f"B/A: leader CPU per {unit} {ratios[0]:.2f}x  follower CPU per {unit} "
          f"{ratios[1]:.2f}x  {unit}s/s {ratios[2]:.2f}x")


if __name__ == "__main__":
    main()
