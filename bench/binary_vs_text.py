"""Binary beside text protocol on one backend (and memcached for scale): pipelined get and
set throughput over one connection, batches of `--batch` requests, alternated rounds.

    .venv/bin/python bench/binary_vs_text.py [--seconds 3] [--rounds 3] [--batch 100]

A rough measure of the codec's cost per protocol (one client, no latency figures): the
backend and memcached are started on free loopback ports and stopped at the end.
"""

from __future__ import annotations

import argparse
import socket
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    results: dict[tuple[str, str, str], list[float]] = {}
    with servers.memcached("-t", "1") as memcached, servers.backend() as backend:
        for port in (memcached.port, backend.port):  # the gets hit
            rate(port, "text", "set", args.batch, 0.2)
        for _ in range(args.rounds):
            for name, server in (("memcached", memcached), ("backend", backend)):
                for protocol in ("text", "binary"):
                    for command in ("get", "set"):
                        results.setdefault((name, protocol, command), []).append(
                            rate(server.port, protocol, command, args.batch, args.seconds))
    print(f"{'server':10} {'protocol':8} {'cmd':4} {'ops/s (median)':>15}")
    for (name, protocol, command), rates in results.items():
        print(f"{name:10} {protocol:8} {command:4} {statistics.median(rates):15,.0f}")
    for command in ("get", "set"):
        ratio = statistics.median(results["backend", "binary", command]) / statistics.median(
            results["backend", "text", command])
        print(f"backend binary/text {command}: {ratio:.2f}")


if __name__ == "__main__":
    main()
