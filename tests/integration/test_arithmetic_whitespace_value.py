"""incr/decr/ma on a value of only whitespace: memring says non-numeric; memcached reads on.

Triage of fuzz seed 1 case 16779 (round seven): `ma` on a key whose value is `\\r\\n\\r ` gave
`VA 2 ... 97` from memcached and `CLIENT_ERROR ... non-numeric` from memring. The NUL byte in
that case was a bystander. memcached 1.6.18's do_add_delta calls strtoull on the item's data,
which is not NUL-terminated: strtoull skips the value's whitespace and its trailing `\\r\\n`, then
reads whatever the slab chunk holds next, here the bytes a deleted key left behind. So the
answer depends on the allocator's history and copies one key's old bytes into another key.
memring keeps to the value's own bytes (README, "Compatibility notes"; the fuzzer's
`whitespace_value_arithmetic`). Each case runs on real processes on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
# a deleted key of the same length leaves "96\r\n" right after where the next value ends
LEFTOVER = b"set %(k)s:x 0 0 8\r\nabcdef96\r\ndelete %(k)s:x\r\n"
WHITESPACE = b"set %(k)s:c 0 0 4\r\n\r\n\r \r\n"
PREFIX_REPLY = b"STORED\r\nDELETED\r\nSTORED\r\n"
CASES = [
    pytest.param(b"incr %(k)s:c 1\r\n", b"97\r\n", NON_NUMERIC, id="incr"),
    pytest.param(b"decr %(k)s:c 1\r\n", b"95\r\n", NON_NUMERIC, id="decr"),
    pytest.param(b"ma %(k)s:c v\r\n", b"VA 2\r\n97\r\n", NON_NUMERIC, id="ma"),
]


def conversation(arithmetic: bytes, key: bytes) -> bytes:
    return (LEFTOVER + WHITESPACE + arithmetic + b"get %(k)s:c\r\n") % {b"k": key}


@pytest.fixture(scope="module")
def proxy(module_backend: servers.RunningServer) -> Iterator[servers.RunningServer]:
    with servers.proxy([[module_backend]]) as server:
        yield server


@pytest.mark.parametrize(("arithmetic", "memcached_says", "memring_says"), CASES)
def test_memcached_reads_past_the_value(module_memcached: servers.RunningServer,
                                        arithmetic: bytes, memcached_says: bytes,
                                        memring_says: bytes) -> None:
    """Pins the artefact: if a memcached ever stops reading past the value, this says so."""
    key = b"mc-ws-" + arithmetic.split()[0]
    number = memcached_says.split(b"\r\n")[-2]
    value = number.ljust(4)  # rewritten in place, padded with spaces
    assert wire.request(module_memcached, conversation(arithmetic, key)) == (
        PREFIX_REPLY + memcached_says + b"VALUE %s:c 0 4\r\n%s\r\nEND\r\n" % (key, value))


@pytest.mark.parametrize("target", ["backend", "proxy"])
@pytest.mark.parametrize(("arithmetic", "memcached_says", "memring_says"), CASES)
def test_memring_keeps_to_the_value(request: pytest.FixtureRequest, target: str,
                                    arithmetic: bytes, memcached_says: bytes,
                                    memring_says: bytes) -> None:
    server: servers.RunningServer = request.getfixturevalue(
        {"backend": "module_backend"}.get(target, target))
    key = b"%s-ws-%s" % (target.encode(), arithmetic.split()[0])
    assert wire.request(server, conversation(arithmetic, key)) == (
        PREFIX_REPLY + memring_says + b"VALUE %s:c 0 4\r\n\r\n\r \r\nEND\r\n" % key)
