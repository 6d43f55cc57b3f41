"""Bounded work and memory per client in the proxy (real processes).

A `get` line repeating keys answers exactly memcached's bytes while the proxy holds one copy
per distinct key (proxy/slots.py SplitGet/SlicedReply); clients that pipeline gets and never
read stay within --client-buffer-bytes and are closed after --client-write-timeout-ms while
another client is served; the proxy-wide --max-buffered-bytes refuses the connection that
would pass it with memcached's `SERVER_ERROR out of memory reading request` and closes it,
the others keep working, and the memory comes back once the hostile connections close.
"""

from __future__ import annotations

import hashlib
import socket
import time

import pytest
import trio

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

MiB = wire.MiB
OUT_OF_MEMORY_READING = b"SERVER_ERROR out of memory reading request\r\n"


class PeakRss:
    """VmRSS of one process, polled every 20 ms by a task while the test runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.start = wire.rss_kib(pid)
        self.peak = self.start

    async def poll(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                   ) -> None:
        task_status.started()
        for _ in range(100_000):  # cancelled long before: the test's fail_after bounds it
            self.peak = max(self.peak, wire.rss_kib(self.pid))
            await trio.sleep(0.02)

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 1024


async def read_reply(port: int, payload: bytes, end: bytes = b"END\r\n") -> tuple[int, str]:
    """Send `payload`, read the reply until it ends with `end` or the server closes: its
    length and sha256 (the reply itself may be large)."""
    digest = hashlib.sha256()
    size = 0
    tail = b""
    stream = await trio.open_tcp_stream(servers.HOST, port)
    async with stream:
        await stream.send_all(payload)
        for _ in range(1_000_000):
            chunk = await stream.receive_some(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
            tail = (tail + chunk)[-len(end):]
            if tail == end:
                break
    return size, digest.hexdigest()


async def served(port: int, tag: int) -> float:
    """A well-behaved set then get; how long it took (asserting the replies)."""
    started = time.perf_counter()
    key = b"budget:good:%d" % tag
    value = b"g%d" % tag
    assert await wire.ask(port, b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)
                          ) == b"STORED\r\n"
    assert await wire.ask(port, b"get %s\r\n" % key, b"END\r\n") == (
        b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(value), value))
    return time.perf_counter() - started


# --- repeated keys -------------------------------------------------------------------------

REPEAT_GROWTH_BOUND_MB = 100  # measured: +2-3 MB; the whole reply would be 33 MB x 2


@pytest.mark.parametrize("shards", [1, 3])
async def test_a_get_line_repeating_keys_is_memcacheds_bytes_in_bounded_memory(
        shards: int, capsys: pytest.CaptureFixture[str]) -> None:
    with servers.proxy_over("memcached", shards=shards) as proxy, \
            servers.memcached() as oracle:
        with trio.fail_after(120):
            value = bytes(i % 251 for i in range(100))
            keys = [b"rk0", b"rk1", b"rk2", b"rk3"]  # on 2-3 shards of 3; rk3 is never set
            for port in (proxy.port, oracle.port):
                for key in keys[:3]:
                    assert await wire.ask(port, b"set %s 0 0 100\r\n%s\r\n" % (key, value)
                                          ) == b"STORED\r\n"
            unit = b" " + b" ".join(keys)
            line = b"get" + unit * ((MiB - 3) // len(unit)) + b"\r\n"  # just under --max-line
            rss = PeakRss(proxy.pid)
            async with trio.open_nursery() as nursery:
                await nursery.start(rss.poll)
                got = await read_reply(proxy.port, line)
                nursery.cancel_scope.cancel()
            expected = await read_reply(oracle.port, line)
            with capsys.disabled():
                print(f"\n{shards} shard(s): get of {line.count(b' ')} keys ({len(line)} bytes) "
                      f"-> {got[0] / MiB:.0f} MiB reply; proxy RSS {rss.start / 1024:.0f} MB, "
                      f"peak +{rss.growth_mb:.1f} MB")
            assert got == expected
            assert rss.growth_mb < REPEAT_GROWTH_BOUND_MB


# --- clients that never read ------------------------------------------------------------

CLIENT_BUDGET = 256 * 1024
STUCK_CLIENTS = 20
STUCK_GETS = 100  # 10 MB of replies each: more than the sockets' buffers take
BIG = 100_000
# 20 clients x at most a window of 100 KB replies within the 256 KiB budget (their socket
# buffers took the rest); holding all 20 x 100 x 100 KB = 200 MB would not pass.
STUCK_GROWTH_BOUND_MB = 40


async def test_clients_that_never_read_stay_within_their_budget_and_are_closed(
        capsys: pytest.CaptureFixture[str]) -> None:
    with servers.backend() as b1, servers.backend() as b2, servers.backend() as b3, \
            servers.proxy([[b1], [b2], [b3]], "--client-buffer-bytes", str(CLIENT_BUDGET),
                          "--client-write-timeout-ms", "1500") as proxy:
        with trio.fail_after(60):
            big = b"b" * BIG
            assert await wire.ask(proxy.port, b"set big 0 0 %d\r\n%s\r\n" % (BIG, big)
                                  ) == b"STORED\r\n"
            await served(proxy.port, 0)
            rss = PeakRss(proxy.pid)
            latencies: list[float] = []
            stuck: list[trio.SocketStream] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(rss.poll)
                for _ in range(STUCK_CLIENTS):
                    stream = await trio.open_tcp_stream(servers.HOST, proxy.port)
                    stream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    stuck.append(stream)
                    await stream.send_all(b"get big\r\n" * STUCK_GETS)  # and never read
                for tag in range(1, 21):
                    latencies.append(await served(proxy.port, tag))
                    await trio.sleep(0.05)
                during = wire.stats(proxy)
                # Past the write timeout the stuck clients are closed and give back all.
                await trio.sleep(2.5)
                after = wire.stats(proxy)
                nursery.cancel_scope.cancel()
            for stream in stuck:
                await stream.aclose()
            with capsys.disabled():
                print(f"\n{STUCK_CLIENTS} clients pipelining {STUCK_GETS} gets of {BIG} bytes, "
                      f"never reading: proxy RSS {rss.start / 1024:.0f} MB, peak "
                      f"+{rss.growth_mb:.1f} MB; buffered_bytes {during['buffered_bytes']}; "
                      f"a well-behaved client served meanwhile in max "
                      f"{max(latencies) * 1000:.0f} ms; curr_connections "
                      f"{during['curr_connections']}, {after['curr_connections']} after the "
                      f"write timeout")
            assert max(latencies) < 1.0, latencies
            assert rss.growth_mb < STUCK_GROWTH_BOUND_MB
            assert int(during["curr_connections"]) == STUCK_CLIENTS + 1
            assert int(after["curr_connections"]) == 1  # the stuck ones were closed
            assert after["buffered_bytes"] == "0"
            await served(proxy.port, 99)


# --- the proxy-wide budget ---------------------------------------------------------------

GLOBAL_BUDGET = 8 * MiB
HALF_LINES = 30
HALF_LINE = b"get" + b" hk" * ((1_000_000 - 3) // 3)  # 1 MB, no newline: waits for more


async def send_half_line(port: int, streams: list[trio.SocketStream]) -> None:
    stream = await trio.open_tcp_stream(servers.HOST, port)
    streams.append(stream)
    try:
        await stream.send_all(HALF_LINE)
    except trio.BrokenResourceError:
        pass  # refused and closed by the proxy mid-send


async def test_the_global_budget_refuses_like_memcached_and_others_keep_working(
        capsys: pytest.CaptureFixture[str]) -> None:
    with servers.memcached() as m1, servers.memcached() as m2, servers.memcached() as m3, \
            servers.proxy([[m1], [m2], [m3]], "--max-buffered-bytes", str(GLOBAL_BUDGET)
                          ) as proxy:
        with trio.fail_after(60):
            await served(proxy.port, 0)
            rss = PeakRss(proxy.pid)
            streams: list[trio.SocketStream] = []
            async with trio.open_nursery() as nursery:
                await nursery.start(rss.poll)
                async with trio.open_nursery() as senders:
                    for _ in range(HALF_LINES):
                        senders.start_soon(send_half_line, proxy.port, streams)
                    with trio.move_on_after(5):  # the accepted ones wait for their newline
                        while len(streams) < HALF_LINES:
                            await trio.sleep(0.05)
                        await trio.sleep(1.0)
                    senders.cancel_scope.cancel()
                latency = await served(proxy.port, 1)
                held = wire.stats(proxy)
                nursery.cancel_scope.cancel()
            answers: dict[bytes, int] = {}
            for stream in streams:
                reply = b""
                with trio.move_on_after(0.5):
                    try:
                        for _ in range(100):
                            chunk = await stream.receive_some(4096)
                            if not chunk:
                                break
                            reply += chunk
                    except trio.BrokenResourceError:
                        reply += b"(reset)"
                answers[reply] = answers.get(reply, 0) + 1
            for stream in streams:
                await stream.aclose()
            await trio.sleep(1.5)  # netio.heap trims the heap once after a burst of closes
            after_kib = wire.rss_kib(proxy.pid)
            after = wire.stats(proxy)
            with capsys.disabled():
                print(f"\n{HALF_LINES} half-sent 1 MB get lines under --max-buffered-bytes "
                      f"{GLOBAL_BUDGET}: buffered_bytes {held['buffered_bytes']}, refusals "
                      f"{held['buffer_refusals']}; answers {sorted(answers.values())} "
                      f"({[a[:50] for a in answers]}); proxy RSS {rss.start / 1024:.0f} MB, "
                      f"peak +{rss.growth_mb:.1f} MB, after close {after_kib / 1024:.0f} MB; "
                      f"another client served in {latency * 1000:.0f} ms")
            refusals = int(held["buffer_refusals"])
            assert refusals >= HALF_LINES - GLOBAL_BUDGET // len(HALF_LINE) - 1
            # The refused got memcached's answer (or, rarely, a reset that overtook it); the
            # others nothing: nobody got anyone else's data.
            assert answers.get(OUT_OF_MEMORY_READING, 0) >= refusals // 2
            assert set(answers) <= {OUT_OF_MEMORY_READING, b"", b"(reset)"}
            assert int(held["buffered_bytes"]) <= GLOBAL_BUDGET
            assert latency < 1.0
            assert after["buffered_bytes"] == "0"
            assert (after_kib - rss.start) / 1024 < 8  # handed back, not kept
            assert proxy.process.poll() is None
            await served(proxy.port, 2)
