"""What a PlainStream costs over calling netio.nonblocking directly: the per-call time of the
hot path's recv, send_now (+ the reply stream's backlog check) and send_all on a socket pair,
in one trio run, the best of several repeats (the least disturbed by other work). Then what a
TlsStream costs the server per request: its recv of a get and send_all of the reply, plain and
TLS (a private CA in a temporary directory; the client's side is not timed).

    .venv/bin/python bench/stream_overhead.py [--calls 200000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable

import trio

from memring.cluster.certificates import CertificateAuthority
from memring.netio import nonblocking
from memring.netio.streams import PlainStream, Stream, TlsStream
from memring.netio.tls import TlsSettings, client_context, server_context

REQUEST = b"get key:0000001234\r\n"
REPLY = b"VALUE key:0000001234 0 100\r\n" + b"v" * 100 + b"\r\nEND\r\n"


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
    await _tls_round_trips(calls // 4, repeats)


async def _tls_round_trips(calls: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as directory:
        ca = CertificateAuthority.create(directory)
        cert = ca.issue("bench")
        server_side = server_context(TlsSettings(cert=str(cert.cert), key=str(cert.key)))
        client_side = client_context(TlsSettings(ca=str(ca.cert), verify="require"))

        async def pair(secure: bool) -> tuple[Stream, Stream]:
            a, b = socket.socketpair()
            a.setblocking(False)
            b.setblocking(False)
            if not secure:
                return PlainStream(a), PlainStream(b)
            server = TlsStream(a, server_side, server_side=True)
            client = TlsStream(b, client_side, server_side=False, server_hostname="127.0.0.1")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.handshake)
                nursery.start_soon(client.handshake)
            return server, client

        best: dict[bool, float] = {}
        for _ in range(repeats):
            for secure in (False, True):
                server, client = await pair(secure)
                spent = 0.0
                for _ in range(calls):
                    client.send_now(REQUEST)
                    started = time.perf_counter()
                    await server.recv(nonblocking.READ_SIZE)
                    await server.send_all(REPLY)
                    spent += time.perf_counter() - started
                    await client.recv(nonblocking.READ_SIZE)
                best[secure] = min(best.get(secure, float("inf")), spent / calls)
                server.sock.close()
                client.sock.close()
        print(f"server recv + send_all of a get: plain {best[False] * 1e9:.0f} ns, "
              f"TLS {best[True] * 1e9:.0f} ns ({(best[True] - best[False]) * 1e9:+.0f} ns)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    trio.run(main, args.calls, args.repeats)
    sys.exit(0)
