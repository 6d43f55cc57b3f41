"""The binary protocol, byte for byte: the same frames to memcached 1.6.18 and to a backend.

Each case runs against a fresh pair (CAS values count from 1 on both, so they compare
exactly). Replies are compared whole; where they differ the message lists both sides
frame by frame. Stats are compared by shape and by their deterministic counters.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from memring.protocol.binary_frames import BinaryResponse, Opcode, Status
from tests.helpers import servers, wire
from tests.helpers.binary_cases import (
    CASES,
    SENTINEL,
    SENTINEL_REPLY,
    BinaryCase,
    frame,
    get,
    incr,
    set_,
    touch,
)
from tests.helpers.binary_exchange import (
    STEP_TIMEOUT,
    assert_big_bodies_stream_by,
    capable_lines,
    describe,
    frames,
    run_case,
)

pytestmark = pytest.mark.compat


@pytest.fixture
def pair() -> Iterator[tuple[servers.RunningServer, servers.RunningServer]]:
    with servers.memcached() as memcached, servers.backend() as backend:
        yield memcached, backend


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_same_bytes(pair: tuple[servers.RunningServer, servers.RunningServer],
                    case: BinaryCase) -> None:
    memcached, backend = pair
    want = run_case(memcached, case)
    got = run_case(backend, case)
    for index, ((want_reply, want_closed), (got_reply, got_closed)) in enumerate(
            zip(want, got, strict=True)):
        assert got_reply == want_reply, f"step {index}\n" + describe(want_reply, got_reply)
        assert got_closed == want_closed, f"step {index}: closed {got_closed}, " \
                                          f"memcached {want_closed}"


SPLIT_CASES = [c for c in CASES if c.name in (
    "get_family", "quiet_pipeline", "incr_create", "too_large", "stat_body_past_key",
    "unknown_opcode_swallows_body", "key_too_long")]


@pytest.mark.parametrize("case", SPLIT_CASES, ids=lambda c: c.name)
def test_truncated_frames_wait_for_the_rest(
        pair: tuple[servers.RunningServer, servers.RunningServer], case: BinaryCase) -> None:
    """Frames cut anywhere (here in writes of 7 bytes) answer as when sent whole."""
    memcached, backend = pair
    want = run_case(memcached, case)
    got = run_case(backend, case, chunk=7 if case.name != "too_large" else 65536)
    assert got == want


def test_frame_cut_mid_header_waits(backend_server: servers.RunningServer) -> None:
    """Half a header, a pause, then the rest: one reply, nothing before it."""
    data = set_(b"k", b"v") + get(b"k")
    with wire.connect(backend_server) as sock:
        sock.sendall(data[:10])
        time.sleep(0.2)
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(100)
        got = wire.drive(sock, [data[10:] + SENTINEL], until=SENTINEL_REPLY,
                         timeout=STEP_TIMEOUT)
    replies = frames(got.reply)
    assert [(r.opcode, r.status) for r in replies if isinstance(r, BinaryResponse)] == [
        (Opcode.SET, Status.SUCCESS), (Opcode.GET, Status.SUCCESS), (Opcode.NOOP, 0)]


def test_body_over_limit_is_swallowed_in_bounded_memory(
        backend_server: servers.RunningServer) -> None:
    """A 64 MiB value is streamed past (answered "Too large.") and an unknown opcode's
    64 MiB body is swallowed, without the backend holding either."""
    assert_big_bodies_stream_by(backend_server)


# --- stats: shape and deterministic counters -------------------------------------------------

DETERMINISTIC_STATS = (
    "cmd_get", "cmd_set", "cmd_touch", "get_hits", "get_misses", "delete_hits", "delete_misses",
    "incr_hits", "incr_misses", "decr_hits", "decr_misses", "cas_hits", "cas_misses",
    "cas_badval", "touch_hits", "touch_misses", "curr_items", "total_items")

STATS_SCRIPT = BinaryCase("stats_script", (
    set_(b"a", b"1") + set_(b"b", b"2") + set_(b"c", b"x")
    + frame(Opcode.ADD, b"a", b"\0" * 8, b"9") + get(b"a") + get(b"nope")
    + get(b"a", Opcode.GETKQ) + get(b"nope", Opcode.GETQ) + touch(b"a", 100, Opcode.GAT)
    + touch(b"nope", 100) + frame(Opcode.DELETE, b"c") + frame(Opcode.DELETE, b"c")
    + incr(b"a", 5) + incr(b"nope", 1, 0, 0xFFFFFFFF) + incr(b"new", 1, 5)
    + frame(Opcode.DECREMENT, b"b", b"\0" * 7 + b"\1" + b"\0" * 12)
    + set_(b"a", b"z", cas=999) + set_(b"nope", b"z", cas=1) + set_(b"b", b"z", cas=5)
    + frame(Opcode.APPEND, b"b", value=b"+") + frame(Opcode.STAT, opaque=42),))


def test_stats_counters_and_shape(pair: tuple[servers.RunningServer, servers.RunningServer]
                                  ) -> None:
    memcached, backend = pair
    [(want, _)] = run_case(memcached, STATS_SCRIPT)
    [(got, _)] = run_case(backend, STATS_SCRIPT)

    def stats(reply: bytes) -> tuple[dict[str, str], list[BinaryResponse]]:
        found = [r for r in frames(reply) if isinstance(r, BinaryResponse)]
        stat = [r for r in found if r.opcode == Opcode.STAT]
        assert stat[-1] == BinaryResponse(Opcode.STAT, opaque=42)  # the terminator
        assert all(r.opaque == 42 and r.cas == 0 and r.status == 0 for r in stat)
        return {r.key.decode(): r.value.decode() for r in stat[:-1]}, found

    want_stats, want_frames = stats(want)
    got_stats, got_frames = stats(got)
    non_stat = [[r for r in f if r.opcode != Opcode.STAT] for f in (want_frames, got_frames)]
    assert non_stat[0] == non_stat[1]
    diff = {n: (want_stats.get(n), got_stats.get(n)) for n in DETERMINISTIC_STATS
            if want_stats.get(n) != got_stats.get(n)}
    assert not diff, f"counters (memcached, backend) differ: {diff}"


# --- clients ---------------------------------------------------------------------------------

def test_memccapable_binary(pair: tuple[servers.RunningServer, servers.RunningServer]) -> None:
    """libmemcached's `memccapable -b` passes the same checks as against memcached."""
    memcached, backend = pair
    want = capable_lines(memcached)
    assert want and all(line.endswith("[pass]") for line in want)
    assert capable_lines(backend) == want
