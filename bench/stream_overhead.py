"""What a PlainStream costs over calling netio.nonblocking directly: the per-call time of the
hot path's recv, send_now (+ the reply stream's backlog check) and send_all on a socket pair,
in one trio run, the best of several repeats (the least disturbed by other work).

    .venv/bin/python bench/stream_overhead.py [--calls 200000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Awaitable, Callable

import trio

from memring.netio import nonblocking
from memring.netio.streams import PlainStream

REQUEST = b"get key:0000001234\r\n"


async def _per_call(name: str, body: Callable[[int], Awaitable[None]], calls: int,
                    repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        await body(calls)
        best = min(best, time.perf_counter() - started)
    print(f"{name:42s} {best / calls * 1e9:8.0f} ns per call")
    return best / calls


async def main(calls: int, repeats: int) -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    stream = PlainStream(a)

    async def recv_direct(n: int) -> None:
        for _ in range(n):
            b.send(REQUEST)
            await nonblocking.recv(a, nonblocking.READ_SIZE)

    async def recv_stream(n: int) -> None:
        recv = stream.recv
        for _ in range(n):
            b.send(REQUEST)
            await recv(nonblocking.READ_SIZE)

    async def send_now_direct(n: int) -> None:
        for _ in range(n):
            sent = nonblocking.send_now(a, REQUEST)
            if sent < len(REQUEST):
                raise AssertionError
            b.recv(65536)

    async def send_now_stream(n: int) -> None:
        for _ in range(n):
            sent = stream.send_now(REQUEST)
            if sent < len(REQUEST) or stream.backlog:
                raise AssertionError
            b.recv(65536)

    async def send_all_direct(n: int) -> None:
        for _ in range(n):
            await nonblocking.send_all(a, REQUEST)
            b.recv(65536)

    async def send_all_stream(n: int) -> None:
        for _ in range(n):
            await stream.send_all(REQUEST)
            b.recv(65536)

    pairs = [("recv", recv_direct, recv_stream), ("send_now", send_now_direct, send_now_stream),
             ("send_all", send_all_direct, send_all_stream)]
    for name, direct, through in pairs:
        # alternated, so that both see the same disturbances
        d1 = await _per_call(f"{name}: nonblocking (main)", direct, calls, repeats)
        s1 = await _per_call(f"{name}: PlainStream (tls branch)", through, calls, repeats)
        d2 = await _per_call(f"{name}: nonblocking (main)", direct, calls, repeats)
        s2 = await _per_call(f"{name}: PlainStream (tls branch)", through, calls, repeats)
        print(f"{name}: PlainStream - nonblocking = {(min(s1, s2) - min(d1, d2)) * 1e9:+.0f} ns")
    a.close()
    b.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    trio.run(main, args.calls, args.repeats)
    sys.exit(0)
