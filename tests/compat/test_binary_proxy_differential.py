"""The binary protocol through the proxy, byte for byte: the same frames to memcached 1.6.18
and to the proxy over memring backends and over memcached backends.

Nothing is masked. Three servers are shared by the module (memcached, a proxy over one
memcached, a proxy over one memring backend), each case preceded by a flush on all three:
they get the same frames in the same order, so their CAS counters stay equal and CAS values
compare exactly. The cases that name CAS values as literals (`cas=1`, meaning the first
item's) run against fresh servers instead, where counters start from 1 on every side.
Over several shards CAS values come from several counters, so the multi-shard tests
(tests/integration/test_proxy_binary.py) check what a CAS must be (non-zero, the same for an
unchanged item, new after each write) instead of comparing values. A case whose answer is the proxy's own by design is left out,
with its reason (README "Compatibility notes").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from memring.protocol.binary_frames import Opcode
from tests.helpers import servers, wire
from tests.helpers.binary_cases import CASES, SENTINEL, SENTINEL_REPLY, BinaryCase, frame
from tests.helpers.binary_exchange import capable_lines, describe, run_case

pytestmark = pytest.mark.compat

# The proxy answers `stat` itself, as it answers the text `stats`: it describes the proxy
# (its counters, not an item store's; groups it does not keep are "Not found").
PROXY_OWN = {"stat_subgroups"}
# Cases with CAS literals: they assume counters that start at 1 (fresh servers).
CAS_LITERALS = {"cas", "delete", "incr_cas", "append_matching_cas"}
SHARED_CASES = [c for c in CASES if c.name not in PROXY_OWN | CAS_LITERALS]
FRESH_CASES = [c for c in CASES if c.name in CAS_LITERALS]
KINDS = ("memcached", "backend")


@contextlib.contextmanager
def proxy_over_fresh(kind: str) -> Iterator[servers.RunningServer]:
    with servers.start(kind) as upstream, servers.proxy([[upstream]]) as proxy:
        yield proxy


def assert_same(want: list[tuple[bytes, bool]], got: list[tuple[bytes, bool]],
                name: str) -> None:
    for index, ((want_reply, want_closed), (got_reply, got_closed)) in enumerate(
            zip(want, got, strict=True)):
        assert got_reply == want_reply, f"step {index}\n" + describe(want_reply, got_reply,
                                                                     name)
        assert got_closed == want_closed, f"step {index}: {name} closed {got_closed}, " \
                                          f"memcached {want_closed}"


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, servers.RunningServer]]:
    with servers.memcached() as memcached, proxy_over_fresh("memcached") as over_memcached, \
            proxy_over_fresh("backend") as over_backend:
        yield {"direct": memcached, "memcached": over_memcached, "backend": over_backend}


def flush(server: servers.RunningServer) -> None:
    """An immediate flush: also cancels a delayed one a case left behind."""
    got = wire.converse(server, [frame(Opcode.FLUSH) + SENTINEL], until=SENTINEL_REPLY,
                        timeout=5)
    assert not got.timed_out and got.reply.endswith(SENTINEL_REPLY), got


@pytest.mark.parametrize("case", SHARED_CASES, ids=lambda c: c.name)
def test_same_bytes_through_the_proxy(shared: dict[str, servers.RunningServer],
                                      case: BinaryCase) -> None:
    for server in shared.values():
        flush(server)
    want = run_case(shared["direct"], case)
    for kind in KINDS:
        assert_same(want, run_case(shared[kind], case), f"proxy over {kind}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"over-{k}")
@pytest.mark.parametrize("case", FRESH_CASES, ids=lambda c: c.name)
def test_cas_literals_through_a_fresh_proxy(case: BinaryCase, kind: str) -> None:
    with servers.memcached() as memcached:
        want = run_case(memcached, case)
    with proxy_over_fresh(kind) as proxy:
        got = run_case(proxy, case)
    assert_same(want, got, f"proxy over {kind}")


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"over-{k}")
def test_memccapable_binary_through_the_proxy(kind: str) -> None:
    """libmemcached's `memccapable -b` passes the same checks through a proxy over two
    shards as against memcached (27 of 27 with Debian's libmemcached-tools)."""
    with servers.memcached() as memcached:
        want = capable_lines(memcached)
    with servers.proxy_over(kind, shards=2) as proxy:
        got = capable_lines(proxy)
    assert want and all(line.endswith("[pass]") for line in want)
    assert got == want
