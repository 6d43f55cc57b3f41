"""What TLS costs a server per request: its CPU time per request, plain vs TLS, on one process.

A backend (or a proxy over one plain backend) runs with `--tls-listen`, so the same process
serves a plain and a TLS port; client threads (pymemcache, 90% get / 10% set, 100-byte values,
one request in flight each) load one port, then the other, alternating, and the server's CPU
time (/proc/PID/stat, user + system) is divided by the requests it answered. The client's own
TLS cost does not enter the figure (only the server's CPU is counted), nor does its throughput,
so the figure holds on a machine shared with other work better than ops/s would. Handshakes are
excluded (connections are opened before the window).

    .venv/bin/python bench/tls_cpu_cost.py [--target backend|proxy] [--rounds 4] [--seconds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from pymemcache.client.base import Client

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from memring.cluster.certificates import CertificateAuthority  # noqa: E402
from tests.helpers import servers, tls  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
KEYS = [f"k{n}" for n in range(1000)]
VALUE = b"v" * 100


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def load(port: int, context: ssl.SSLContext | None, threads: int, seconds: float,
         pid: int) -> tuple[int, float]:
    """(requests answered, server CPU seconds) in a window of `seconds`."""
    clients = [Client((servers.HOST, port), tls_context=context, default_noreply=False,
                      timeout=5) for _ in range(threads)]
    for client in clients:
        client.set("warm", VALUE)  # connect (and handshake) before the window
    counts = [0] * threads
    stop = threading.Event()

    def run(index: int) -> None:
        client = clients[index]
        rng = random.Random(index)
        while not stop.is_set():
            key = rng.choice(KEYS)
            if rng.random() < 0.9:
                client.get(key)
            else:
                client.set(key, VALUE)
            counts[index] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    before = cpu_seconds(pid)
    for worker in workers:
        worker.start()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    used = cpu_seconds(pid) - before
    for client in clients:
        client.close()
    return sum(counts), used


@contextlib.contextmanager
def target(kind: str, flags: list[str]) -> Iterator[servers.RunningServer]:
    if kind == "backend":
        with servers.backend(*flags) as server:
            yield server
        return
    with servers.backend() as upstream, servers.proxy([[upstream]], *flags) as server:
        yield server


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("backend", "proxy"), default="backend")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        ca = CertificateAuthority.create(directory)
        credential = ca.issue("bench")
        context = tls.client_context(ca.cert)
        tls_port = servers.free_port()
        flags = tls.server_flags(credential, "--tls-listen", f"{servers.HOST}:{tls_port}")
        with target(args.target, flags) as server:
            time.sleep(0.5)
            per_request: dict[str, list[float]] = {"plain": [], "tls": []}
            for round_ in range(args.rounds):
                order = ["plain", "tls"] if round_ % 2 == 0 else ["tls", "plain"]
                for mode in order:
                    port, ctx = (server.port, None) if mode == "plain" else (tls_port, context)
                    count, used = load(port, ctx, args.threads, args.seconds, server.pid)
                    per_request[mode].append(used / count * 1e6)
                    print(f"round {round_ + 1} {mode:5s}: {count / args.seconds:9,.0f} req/s, "
                          f"server CPU {used / args.seconds:5.0%}, "
                          f"{used / count * 1e6:6.1f} µs CPU per request", flush=True)
    plain = statistics.median(per_request["plain"])
    secure = statistics.median(per_request["tls"])
    print(f"{args.target}: median server CPU per request plain {plain:.1f} µs, TLS {secure:.1f} "
          f"µs: TLS/plain {secure / plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
