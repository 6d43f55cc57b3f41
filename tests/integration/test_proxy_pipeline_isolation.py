"""Isolation of clients that share the proxy's backend connections, under round six's reply path.

The proxy sends a plain client's replies inline from the backend reader's turn
(proxy/reply_stream.py) and hands a partial send to a drainer task; many clients' requests
share one pipelined connection per backend node (pool_size = 1 here), their replies matched
by order. An attacker can stop reading while pipelining thousands of multi-gets, pipeline
split multi-gets with misses from many connections at once, or reset its connection while
its backend replies are still in flight. Each test checks, with real backends behind a real
proxy on loopback, that every client gets exactly its own replies, complete and in order, and
that a stalled client holds up nobody else.
"""

from __future__ import annotations

import concurrent.futures
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from memring.protocol.binary_frames import Opcode, Status
from tests.helpers import binary_cases, servers, wire
from tests.helpers.binary_cases import frame, get, set_
from tests.helpers.binary_exchange import frames

pytestmark = pytest.mark.integration

SHARDS = 2


@pytest.fixture(scope="module", params=["backend", "memcached"])
def proxy(request: pytest.FixtureRequest) -> Iterator[servers.RunningServer]:
    # one connection per node: every client's requests to a shard share it
    with servers.proxy_over(request.param, shards=SHARDS, pool_size=1) as proxy:
        yield proxy


def value_of(key: bytes, size: int) -> bytes:
    """A value that names its key (a value delivered to the wrong request shows it)."""
    head = b"<" + key + b">"
    return (head * (size // len(head) + 1))[:size]


def get_line(keys: list[bytes]) -> bytes:
    return b"get " + b" ".join(keys) + b"\r\n"


def get_answer(keys: list[bytes], items: dict[bytes, bytes]) -> bytes:
    return b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(items[k]), items[k])
                    for k in keys if k in items) + b"END\r\n"


def assert_on_both_shards(proxy: servers.RunningServer, keys: list[bytes]) -> None:
    held = wire.placement(proxy.upstreams, keys)
    assert len(set(held.values())) == SHARDS, held


# --- (a) a client that stops reading next to one that reads ---------------------------------

STALL_KEYS = [b"stall:%d" % i for i in range(8)]
STALL_ITEMS = {k: value_of(k, 1500 + 300 * i) for i, k in enumerate(STALL_KEYS)}
STALL_REQUESTS = 3000


def stalled_request(i: int) -> tuple[bytes, bytes]:
    """Request `i` of the stalled client (a split multi-get with a miss) and its answer."""
    keys = [STALL_KEYS[i % 8], STALL_KEYS[(i + 3) % 8], b"stall:miss%d" % i,
            STALL_KEYS[(i + 5) % 8]]
    return get_line(keys), get_answer(keys, STALL_ITEMS)


def test_a_stalled_pipelining_client_holds_up_no_one_and_gets_all_its_replies(
        proxy: servers.RunningServer) -> None:
    wire.store(proxy, STALL_ITEMS)
    assert_on_both_shards(proxy, STALL_KEYS)
    requests, answers = zip(*(stalled_request(i) for i in range(STALL_REQUESTS)), strict=True)
    expected = b"".join(answers)
    assert len(expected) > 20 * wire.MiB  # far more than any socket buffer holds
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full after a reply or two
    stalled.connect(proxy.address)
    stalled.settimeout(60)
    sender_error: list[BaseException] = []

    def send_all() -> None:  # blocks once the proxy stops reading the stalled client
        try:
            stalled.sendall(b"".join(requests))
        except OSError as exc:
            sender_error.append(exc)

    sender = threading.Thread(target=send_all, daemon=True)
    sender.start()
    try:
        time.sleep(0.5)  # the stalled client's socket fills; the proxy's inline send is partial
        with wire.connect(proxy) as reader:
            rounds = 0
            stop = time.monotonic() + 1.5
            while time.monotonic() < stop and rounds < 300:
                key = b"reader:%d" % rounds
                item = value_of(key, 100 + rounds)
                reader.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(item), item))
                assert wire.read_until(reader, b"\r\n", timeout=2.0) == b"STORED\r\n"
                keys = [key, STALL_KEYS[rounds % 8], b"reader:miss", key]
                reader.sendall(get_line(keys))
                items = {**STALL_ITEMS, key: item}
                assert wire.read_until(reader, b"END\r\n", timeout=2.0) == get_answer(keys, items)
                rounds += 1
            assert rounds >= 20, f"the reading client got only {rounds} rounds through"
        got = bytearray()
        deadline = time.monotonic() + 60
        while len(got) < len(expected) and time.monotonic() < deadline:
            chunk = stalled.recv(1 << 20)
            if not chunk:
                break
            got += chunk
        assert len(got) == len(expected), (len(got), len(expected))
        assert bytes(got) == expected, wire.first_difference(expected, bytes(got), b"")
        sender.join(10)
        assert not sender.is_alive() and not sender_error, sender_error
    finally:
        stalled.close()
        sender.join(10)


# --- (b) many clients pipelining split multi-gets with misses at once -----------------------

CLIENTS = 12
PIPELINE = 400
SIZES = (0, 1, 5, 100, 2000, 70000)


def client_pipeline(number: int) -> tuple[bytes, bytes]:
    """Client `number`'s requests (sets, noreply sets, split gets with misses and repeated
    keys, mg) and the replies memcached gives them, from a model of its own keys."""
    prefix = b"c%02d:" % number
    keys = [prefix + b"%d" % i for i in range(10)]
    items: dict[bytes, bytes] = {}
    out, answer = [], []
    for i, key in enumerate(keys[:8]):  # two of the ten are never set: misses
        items[key] = value_of(key + b"#0", SIZES[(i + number) % len(SIZES)])
        out.append(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(items[key]), items[key]))
        answer.append(b"STORED\r\n")
    for step in range(PIPELINE):
        kind = (step + number) % 5
        picked = [keys[(step * 7 + j * 3 + number) % 10] for j in range(1 + step % 6)]
        if kind == 0:  # a noreply set between gets: the next gets see its value
            key = picked[0]
            items[key] = value_of(key + b"#%d" % step, SIZES[step % len(SIZES)])
            out.append(b"set %s 0 0 %d noreply\r\n%s\r\n" % (key, len(items[key]), items[key]))
        elif kind == 4:
            key = picked[0]
            out.append(b"mg %s v k\r\n" % key)
            answer.append(b"VA %d k%s\r\n%s\r\n" % (len(items[key]), key, items[key])
                          if key in items else b"EN k%s\r\n" % key)
        else:
            if kind == 3:
                picked.append(picked[0])  # a key asked twice: answered twice
            out.append(get_line(picked))
            answer.append(get_answer(picked, items))
    return b"".join(out), b"".join(answer)


def test_many_clients_pipelining_split_gets_each_get_only_their_own(
        proxy: servers.RunningServer) -> None:
    def run(number: int) -> None:
        requests, answers = client_pipeline(number)
        with wire.connect(proxy) as sock:
            exchange = wire.drive(sock, [requests, wire.SENTINEL], until=wire.SENTINEL_REPLY,
                                  timeout=60, max_reply=len(answers) + 100)
        assert not exchange.timed_out and not exchange.closed, (number, len(exchange.reply))
        expected = answers + wire.SENTINEL_REPLY
        assert exchange.reply == expected, \
            (number, wire.first_difference(expected, exchange.reply, requests))

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        for future in [pool.submit(run, n) for n in range(CLIENTS)]:
            future.result()
    assert_on_both_shards(proxy, [b"c00:%d" % i for i in range(8)])


# --- binary and text clients pipelining at once, on the same backend connections ------------

Expected = tuple[int, int, bytes, bytes]  # opcode, opaque, key, value


def binary_pipeline(number: int) -> tuple[bytes, list[Expected]]:
    """Binary client `number`'s quiet sets and GETKQ batches across shards (misses and repeats
    say nothing), each batch closed by a NOOP, and the responses memcached gives them."""
    prefix = b"b%02d:" % number
    keys = [prefix + b"%d" % i for i in range(10)]
    items: dict[bytes, bytes] = {}
    out: list[bytes] = []
    expected: list[Expected] = []
    for i, key in enumerate(keys[:8]):
        items[key] = value_of(key + b"#0", SIZES[(i + number) % len(SIZES)])
        out.append(set_(key, items[key], opcode=Opcode.SETQ))
    for step in range(PIPELINE // 2):
        picked = [keys[(step * 7 + j * 3 + number) % 10] for j in range(1 + step % 6)]
        if step % 4 == 0:
            key = picked[0]
            items[key] = value_of(key + b"#%d" % step, SIZES[step % len(SIZES)])
            out.append(set_(key, items[key], opcode=Opcode.SETQ, opaque=step))
        for key in picked:
            out.append(get(key, Opcode.GETKQ, opaque=step))
            if key in items:
                expected.append((Opcode.GETKQ, step, key, items[key]))
        out.append(frame(Opcode.NOOP, opaque=step))
        expected.append((Opcode.NOOP, step, b"", b""))
    return b"".join(out), expected


def test_binary_and_text_clients_pipelining_at_once_each_get_only_their_own(
        proxy: servers.RunningServer) -> None:
    def text(number: int) -> None:
        requests, answers = client_pipeline(100 + number)
        with wire.connect(proxy) as sock:
            exchange = wire.drive(sock, [requests, wire.SENTINEL], until=wire.SENTINEL_REPLY,
                                  timeout=60, max_reply=len(answers) + 100)
        expected = answers + wire.SENTINEL_REPLY
        assert exchange.reply == expected, \
            (number, wire.first_difference(expected, exchange.reply, requests))

    def binary(number: int) -> None:
        requests, expected = binary_pipeline(number)
        with wire.connect(proxy) as sock:
            exchange = wire.drive(sock, [requests, binary_cases.SENTINEL],
                                  until=binary_cases.SENTINEL_REPLY, timeout=60)
        assert not exchange.timed_out and not exchange.closed, (number, len(exchange.reply))
        got = frames(exchange.reply)[:-1]  # (the sentinel's NOOP)
        assert all(not isinstance(r, str) and r.status == Status.SUCCESS for r in got), got[:3]
        seen = [(r.opcode, r.opaque, r.key, r.value) for r in got if not isinstance(r, str)]
        assert seen == expected, (number, next(
            (i, a[:3], b[:3]) for i, (a, b) in enumerate(zip(seen, expected, strict=False))
            if a != b) if seen[:len(expected)] != expected[:len(seen)] else len(seen))

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(text, n) for n in range(CLIENTS // 2)]
        futures += [pool.submit(binary, n) for n in range(CLIENTS // 2)]
        for future in futures:
            future.result()


# --- (c) a client that resets mid-reply while its backend replies are in flight -------------

BIG_KEYS = [b"rst:%d" % i for i in range(4)]
BIG_ITEMS = {k: value_of(k, 200_000 + i) for i, k in enumerate(BIG_KEYS)}
RESETS = 30


def test_a_client_reset_mid_reply_leaves_the_next_client_only_its_own_replies(
        proxy: servers.RunningServer) -> None:
    wire.store(proxy, BIG_ITEMS)
    assert_on_both_shards(proxy, BIG_KEYS)
    flood = get_line(BIG_KEYS) * 40  # 32 MB of replies asked for, a few read
    with wire.connect(proxy) as steady:
        for round_ in range(RESETS):
            leaver = socket.create_connection(proxy.address, timeout=5)
            leaver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            leaver.sendall(flood)
            if round_ % 3:
                leaver.recv(1000 * round_)  # the first reply under way, cut at some byte
            leaver.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            leaver.close()  # RST, its replies still coming from the backends
            # the next client: fresh (it may get the leaver's file descriptor) and one that
            # stays, both on the same backend connections
            with wire.connect(proxy) as fresh:
                for sock, name in ((fresh, b"fresh"), (steady, b"steady")):
                    key = b"%s:%d" % (name, round_)
                    item = value_of(key, 50 + round_)
                    keys = [key, b"rst:miss", BIG_KEYS[round_ % 4], key]
                    sock.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, len(item), item)
                                 + get_line(keys))
                    expected = b"STORED\r\n" + get_answer(keys, {**BIG_ITEMS, key: item})
                    got = wire.read_until(sock, b"END\r\n", timeout=5.0)
                    assert got == expected, (round_, name, got[:300])
    # the proxy kept serving, with no error logged for the resets
    assert wire.request(proxy, b"get " + BIG_KEYS[0] + b"\r\n") == \
        get_answer(BIG_KEYS[:1], BIG_ITEMS)
    assert "Traceback" not in proxy.log_text()
