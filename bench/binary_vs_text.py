"""Binary beside text protocol on memcached, a memring backend and the memring proxy (in
front of its own memcached): pipelined get and set throughput over one connection, batches
of `--batch` requests, alternated rounds, medians, and a markdown table.

    .venv/bin/python bench/binary_vs_text.py [--seconds 2] [--rounds 3] [--batch 100]

A rough measure of the codec's cost per protocol (one client, no latency figures): the
servers are started on free loopback ports, pinned to --server-cpu (the client to
--load-cpu), and stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memring.protocol.binary_frames import (
    BinaryRequest,
    BinaryResponse,
    Opcode,
    encode_request,
    encode_response,
    storage_extras,
)
from tests.helpers import servers

VALUE = b"v" * 100
KEYS = [b"key%d" % i for i in range(100)]


def batches(protocol: str, command: str, size: int) -> tuple[bytes, bytes]:
    """One batch of requests and the bytes its last reply ends with."""
    keys = [KEYS[i % len(KEYS)] for i in range(size)]
    if protocol == "text":
        if command == "set":
            data = b"".join(b"set %s 0 0 100\r\n%s\r\n" % (k, VALUE) for k in keys)
        else:
            data = b"".join(b"get %s\r\n" % k for k in keys)
        return data + b"mn\r\n", b"MN\r\n"
    if command == "set":
        data = b"".join(encode_request(BinaryRequest(Opcode.SETQ, k, storage_extras(0, 0),
                                                     VALUE)) for k in keys)
    else:
        data = b"".join(encode_request(BinaryRequest(Opcode.GETKQ, k)) for k in keys)
    noop = BinaryResponse(Opcode.NOOP, opaque=1)
    return data + encode_request(BinaryRequest(Opcode.NOOP, opaque=1)), encode_response(noop)


def rate(port: int, protocol: str, command: str, size: int, seconds: float) -> float:
    """Requests per second answered on one connection for `seconds`."""
    data, end = batches(protocol, command, size)
    done = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        deadline = time.perf_counter() + seconds
        start = time.perf_counter()
        while time.perf_counter() < deadline:
            sock.sendall(data)
            reply = b""
            while not reply.endswith(end):
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("closed")
                reply += chunk
            done += size
        return done / (time.perf_counter() - start)


def pin(pid: int, cpu: int) -> None:
    """Every thread of a running server onto `cpu` (memcached -t 1 has helper threads too)."""
    subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True,
                   stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    args = parser.parse_args()
    results: dict[tuple[str, str, str], list[float]] = {}
    with contextlib.ExitStack() as stack:
        memcached = stack.enter_context(servers.memcached("-t", "1"))
        backend = stack.enter_context(servers.backend())
        # the proxy in front of its own memcached: what the proxy adds per protocol
        proxy = stack.enter_context(servers.proxy_over("memcached"))
        targets = (("memcached", memcached), ("backend", backend), ("proxy", proxy))
        for server in (memcached, backend, proxy, *proxy.upstreams):
            pin(server.pid, args.server_cpu)
        os.sched_setaffinity(0, {args.load_cpu})
        for _, server in targets:  # the gets hit
            rate(server.port, "text", "set", args.batch, 0.2)
        for r in range(args.rounds):
            for name, server in targets if r % 2 == 0 else targets[::-1]:
                for protocol in ("text", "binary"):
                    for command in ("get", "set"):
                        results.setdefault((name, protocol, command), []).append(
                            rate(server.port, protocol, command, args.batch, args.seconds))
                        print(f"round {r + 1}/{args.rounds} {name} {protocol} {command}: "
                              f"{results[name, protocol, command][-1]:,.0f}/s",
                              file=sys.stderr, flush=True)
    median = {k: statistics.median(v) for k, v in results.items()}
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"servers on CPU {args.server_cpu} (proxy -> its own memcached -t 1), this client on "
          f"CPU {args.load_cpu}; batches of {args.batch} pipelined requests on one connection, "
          f"{args.seconds:g}s each, {args.rounds} rounds alternating, medians; load average "
          f"{load}")
    print()
    print("| server | text get/s | binary get/s | binary/text get | text set/s | binary set/s "
          "| binary/text set |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _ in targets:
        cells = []
        for command in ("get", "set"):
            text, binary = median[name, "text", command], median[name, "binary", command]
            cells += [f"{text:,.0f}", f"{binary:,.0f}", f"{binary / text:.2f}x"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name in ("backend", "proxy"):
        print(f"| **{name}/memcached** | " + " | ".join(
            f"{median[name, p, c] / median['memcached', p, c]:.2f}x" if p else ""
            for c in ("get", "set") for p in ("text", "binary", "")) + " |")


if __name__ == "__main__":
    main()
