"""The binary protocol through the proxy, byte for byte: the same frames to memcached 1.6.18
and to the proxy over memring backends and over memcached backends.

Each case runs against fresh servers (a proxy over one fresh backend of either kind), so
CAS values count from 1 on every side and compare exactly: nothing is masked here. The
multi-shard cases (tests/integration/test_proxy_binary.py) mask CAS values, which then come
from several counters. Cases whose answer is the proxy's own by design are left out, each
with its reason (README "Compatibility notes").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.helpers import servers
from tests.helpers.binary_cases import CASES, BinaryCase
from tests.helpers.binary_exchange import describe, run_case

pytestmark = pytest.mark.compat

# The proxy answers these itself, as it answers their text forms: `stat` describes the
# proxy (its counters, not an item store's; groups it does not keep are "Not found").
PROXY_OWN = {"stat_subgroups"}
PROXY_CASES = [c for c in CASES if c.name not in PROXY_OWN]
KINDS = ("memcached", "backend")


@contextlib.contextmanager
def proxy_over_fresh(kind: str) -> Iterator[servers.RunningServer]:
    with servers.start(kind) as upstream, servers.proxy([[upstream]]) as proxy:
        yield proxy


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: f"over-{k}")
@pytest.mark.parametrize("case", PROXY_CASES, ids=lambda c: c.name)
def test_same_bytes_through_the_proxy(case: BinaryCase, kind: str) -> None:
    with servers.memcached() as memcached:
        want = run_case(memcached, case)
    with proxy_over_fresh(kind) as proxy:
        got = run_case(proxy, case)
    for index, ((want_reply, want_closed), (got_reply, got_closed)) in enumerate(
            zip(want, got, strict=True)):
        assert got_reply == want_reply, f"step {index}\n" + describe(want_reply, got_reply,
                                                                     f"proxy over {kind}")
        assert got_closed == want_closed, f"step {index}: closed {got_closed}, " \
                                          f"memcached {want_closed}"
