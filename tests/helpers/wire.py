"""Raw-socket conversations with memcached, a backend or a proxy, for the integration tests.

`converse`/`drive` stream chunks on a non-blocking socket driven by select() against a
deadline, so a server that stops reading or never answers fails the test instead of hanging
it; `request` sends one payload plus the `mn` sentinel; `store`, `get_reply` and
`assert_intact` build and check the usual exchanges. On top, for the proxy tests: one-shot
and persistent `stats`, the proxy's per-backend counters, which upstream holds a key (asked
of each upstream directly), and a process's VmRSS. Every socket operation has a timeout and
every loop a deadline.
"""

from __future__ import annotations

import concurrent.futures
import random
import select
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import trio

from tests.helpers import servers

VERSION_REPLY = b"VERSION 1.6.18\r\n"
SENTINEL = b"mn\r\n"
SENTINEL_REPLY = b"MN\r\n"
MiB = 1 << 20
CHUNK = 64 * 1024
SOCKET_TIMEOUT = 3.0


# --- talking to a server -----------------------------------------------------------------------

@dataclass
class Exchange:
    """What a server did with one conversation."""

    reply: bytes
    closed: bool  # EOF or reset seen
    sent: int  # bytes the kernel accepted before the end
    timed_out: bool


def connect(server: servers.RunningServer) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def converse(server: servers.RunningServer, chunks: Iterable[bytes], *,
             until: bytes | None = SENTINEL_REPLY, timeout: float = 10.0,
             max_reply: int = 16 * MiB) -> Exchange:
    """Stream `chunks` while reading replies, until the reply ends with `until` (None: until
    the server closes), the server closes, or `timeout` s pass. Sending stops at the close."""
    with connect(server) as sock:
        return drive(sock, chunks, until=until, timeout=timeout, max_reply=max_reply)


def converse_together(targets: Sequence[servers.RunningServer], chunks: Sequence[bytes], *,
                      until: bytes | None = SENTINEL_REPLY, timeout: float = 10.0
                      ) -> list[Exchange]:
    """`converse` with each target at once (a thread each), in `targets`' order: a check that
    every one of them waits out the timeout costs one timeout, not one per target."""
    with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
        futures = [pool.submit(converse, target, chunks, until=until, timeout=timeout)
                   for target in targets]
        return [future.result() for future in futures]


def drive(sock: socket.socket, chunks: Iterable[bytes], *, until: bytes | None,
          timeout: float, max_reply: int = 16 * MiB) -> Exchange:
    sock.setblocking(False)
    deadline = time.monotonic() + timeout
    source = iter(chunks)
    pending = memoryview(b"")
    reply = bytearray()
    sent = 0
    closed = False
    exhausted = False
    while not closed:
        left = deadline - time.monotonic()
        if left <= 0:
            return Exchange(bytes(reply), closed=False, sent=sent, timed_out=True)
        if not pending and not exhausted:
            chunk = next(source, None)
            if chunk is None:
                exhausted = True
            else:
                pending = memoryview(chunk)
        readable, writable, _ = select.select([sock], [sock] if pending else [], [],
                                              min(left, 0.5))
        if readable:
            try:
                data = sock.recv(CHUNK)
            except ConnectionResetError:
                data = b""
            if not data:
                closed = True
                break
            reply += data
            if len(reply) > max_reply:
                raise AssertionError(f"reply grew past {max_reply} bytes: {bytes(reply[:200])!r}")
            if until is not None and reply.endswith(until):
                break
        if writable and pending:
            try:
                n = sock.send(pending[:4 * CHUNK])
            except (BrokenPipeError, ConnectionResetError):
                pending = memoryview(b"")
                exhausted = True
                # The peer closed; whatever it said before that is still readable.
                continue
            pending = pending[n:]
            sent += n
    return Exchange(bytes(reply), closed=closed, sent=sent, timed_out=False)


def request(server: servers.RunningServer, payload: bytes) -> bytes:
    """Send `payload` plus the `mn` sentinel on a fresh connection; return the reply up to it."""
    ex = converse(server, [payload + SENTINEL], timeout=3)
    assert not ex.timed_out and not ex.closed, ex
    assert ex.reply.endswith(SENTINEL_REPLY), ex
    return ex.reply[: -len(SENTINEL_REPLY)]


def store(server: servers.RunningServer, values: dict[bytes, bytes]) -> None:
    payload = b"".join(b"set %s 0 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in values.items())
    assert request(server, payload) == b"STORED\r\n" * len(values)


def get_reply(values: dict[bytes, bytes]) -> bytes:
    return b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(v), v) for k, v in values.items())


def assert_intact(server: servers.RunningServer, kept: dict[bytes, bytes]) -> None:
    """The server is up, answers a fresh connection, and kept every value intact."""
    assert server.process.poll() is None, f"{server.name} exited with {server.process.returncode}"
    payload = b"version\r\n" + b"".join(b"get %s\r\n" % k for k in kept)
    expected = VERSION_REPLY + b"".join(get_reply({k: v}) + b"END\r\n" for k, v in kept.items())
    assert request(server, payload) == expected


def repeat(chunk: bytes, total: int) -> Iterator[bytes]:
    """`total` bytes as repeats of `chunk` (one buffer, so the client stays small)."""
    full, rest = divmod(total, len(chunk))
    for _ in range(full):
        yield chunk
    if rest:
        yield chunk[:rest]


def garbage(seed: int, size: int) -> bytes:
    """Seeded random bytes with every value incl. NUL and 0xff, a newline at least every 1000
    bytes (so no line reaches memcached's 2048-byte limit), and a first byte other than 0x80."""
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for pos in range(999, size, 1000):
        data[pos] = 0x0A
    if data[0] == 0x80:
        data[0] = 0x00
    return bytes(data)


def first_difference(expected: bytes, got: bytes, sent: bytes) -> str:
    exp_lines, got_lines = expected.split(b"\r\n"), got.split(b"\r\n")
    for i, (e, g) in enumerate(zip(exp_lines, got_lines, strict=False)):  # noqa: B007
        if e != g:
            break
    else:
        i = min(len(exp_lines), len(got_lines))
    lines = sent.split(b"\n")
    return (f"reply line {i}: memcached {exp_lines[i:i + 2]!r} vs backend {got_lines[i:i + 2]!r}; "
            f"({len(exp_lines)} vs {len(got_lines)} reply lines); "
            f"request line {i}: {lines[i][:120] if i < len(lines) else b''!r}")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


# --- stats, placement -------------------------------------------------------------------------


def read_until(sock: socket.socket, end: bytes, timeout: float = SOCKET_TIMEOUT,
               limit: int = 64 << 20) -> bytes:
    """Read from a blocking socket until the data ends with `end`; fail on close or deadline."""
    deadline = time.monotonic() + timeout
    data = bytearray()
    while not data.endswith(end):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no {end!r} within {timeout}s; got {bytes(data[-300:])!r}")
        sock.settimeout(left)
        chunk = sock.recv(CHUNK)
        if not chunk:
            raise ConnectionError(f"closed before {end!r}; got {bytes(data[-300:])!r}")
        data += chunk
        if len(data) > limit:
            raise AssertionError(f"reply grew past {limit} bytes")
    return bytes(data)


def parse_stats(reply: bytes) -> dict[str, str]:
    out = {}
    for line in reply.split(b"\r\n"):
        if line.startswith(b"STAT "):
            _, name, value = line.decode().split(" ", 2)
            out[name] = value
    return out


def stats(server: servers.RunningServer, args: str = "") -> dict[str, str]:
    """`stats` on a fresh connection (which itself counts in curr_connections)."""
    with connect(server) as sock:
        sock.sendall(f"stats {args}".strip().encode() + b"\r\n")
        return parse_stats(read_until(sock, b"END\r\n"))


def only_connection(server: servers.RunningServer, timeout: float = 10.0) -> socket.socket:
    """A new connection once it is the server's only one: it asks `stats` until
    curr_connections is 1 (the server notices earlier hang-ups asynchronously), within
    `timeout` s. A test of the connection limit counts from it instead of sleeping."""
    sock = connect(server)
    deadline = time.monotonic() + timeout
    while True:
        sock.sendall(b"stats\r\n")
        current = parse_stats(read_until(sock, b"END\r\n")).get("curr_connections")
        if current == "1":
            return sock
        if time.monotonic() > deadline:
            sock.close()
            raise AssertionError(f"{current} connections still open after {timeout:g} s")
        time.sleep(0.02)


class StatsConnection:
    """One connection kept open to ask a server for `stats` repeatedly."""

    def __init__(self, server: servers.RunningServer) -> None:
        self.server = server
        self.sock = connect(server)

    def __call__(self) -> dict[str, str]:
        self.sock.sendall(b"stats\r\n")
        return parse_stats(read_until(self.sock, b"END\r\n"))

    def close(self) -> None:
        self.sock.close()


def backend_stats(proxy_stats: dict[str, str], server: servers.RunningServer) -> dict[str, str]:
    """The proxy's `backend:<addr>:<name>` counters for one upstream, as {name: value}."""
    prefix = f"backend:{servers.HOST}:{server.port}:"
    return {k[len(prefix):]: v for k, v in proxy_stats.items() if k.startswith(prefix)}


def holders(upstreams: Sequence[servers.RunningServer], keys: Iterable[bytes]
            ) -> dict[bytes, list[int]]:
    """For each key, the indexes of the upstreams that hold it (asked directly)."""
    keys = list(keys)
    out: dict[bytes, list[int]] = {k: [] for k in keys}
    for index, upstream in enumerate(upstreams):
        with connect(upstream) as sock:
            for start in range(0, len(keys), 100):
                batch = keys[start:start + 100]
                sock.sendall(b"get " + b" ".join(batch) + b"\r\n")
                reply = read_until(sock, b"END\r\n")
                for line in reply.split(b"\r\n"):
                    if line.startswith(b"VALUE "):
                        out[line.split(b" ")[1]].append(index)
    return out


def placement(upstreams: Sequence[servers.RunningServer], keys: Iterable[bytes]
              ) -> dict[bytes, int]:
    """Which single upstream holds each (already stored) key; fails if not exactly one."""
    where = holders(upstreams, keys)
    bad = {k: v for k, v in where.items() if len(v) != 1}
    assert not bad, f"keys not on exactly one upstream: {dict(list(bad.items())[:5])}"
    return {k: v[0] for k, v in where.items()}


async def ask(port: int, payload: bytes, end: bytes = b"\r\n", timeout: float = 5.0) -> bytes:
    """Send `payload` to 127.0.0.1:port and read until the reply ends with `end`."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(servers.HOST, port)
        async with stream:
            await stream.send_all(payload)
            reply = b""
            while not reply.endswith(end):
                chunk = await stream.receive_some(65536)
                if not chunk:
                    break
                reply += chunk
            return reply

