"""Meta commands with a C (compare CAS) flag: memcached 1.6.18's order of checks, byte for byte.

Found by `make fuzz` (seed 1, round seven), present before round six too (489fe4d): the
backend compared the CAS where memcached does not, or not yet. memcached's `ma` on an empty
value answers CLIENT_ERROR whatever its C flag says (memcached.c do_add_delta: a value of no
bytes is NON_NUMERIC before the CAS is compared; a longer non-numeric one with a wrong CAS is
EX), and `ms` in append or prepend mode compares the CAS only when it is not 0 (do_store_item:
NREAD_APPEND / NREAD_PREPEND test `ITEM_get_cas(it) != 0` first; in set mode C0 is compared).
Each case runs against memcached and a memring backend, real processes on loopback.
"""

from __future__ import annotations

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

# an empty item (mg N vivifies it), then ma with a CAS it does not hold
MA_EMPTY = (b"mg %(k)s q h N1000 l\r\nma %(k)s c O9 k T0 C1099511627776\r\n",
            b"HD h0 l0 W\r\nCLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
CASES = [
    pytest.param(*MA_EMPTY, id="ma-empty-non-numeric-before-cas"),
    pytest.param(b"set %(k)s 0 0 3\r\nabc\r\nma %(k)s C999\r\n", b"STORED\r\nEX\r\n",
                 id="ma-non-numeric-after-cas"),
    pytest.param(b"set %(k)s 0 0 1\r\nx\r\nms %(k)s 1 C0\r\ny\r\n", b"STORED\r\nEX\r\n",
                 id="ms-set-c0-compared"),
    pytest.param(
        # prepend with C0: no CAS to compare, so it is stored
        b"set %(k)s 0 0 1\r\nx\r\nms %(k)s 3 MP C0\r\n100\r\nmg %(k)s v\r\n",
        b"STORED\r\nHD\r\nVA 4\r\n100x\r\n",
        id="ms-prepend-c0-stores"),
    pytest.param(
        b"set %(k)s 0 0 1\r\nx\r\nms %(k)s 3 MA C0\r\n100\r\nmg %(k)s v\r\n",
        b"STORED\r\nHD\r\nVA 4\r\nx100\r\n",
        id="ms-append-c0-stores"),
]


@pytest.mark.parametrize(("request_", "answer"), CASES)
def test_memcached_answers_so(module_memcached: servers.RunningServer, request_: bytes,
                              answer: bytes) -> None:
    assert wire.request(module_memcached, request_ % {b"k": b"mc-cas-order"}) == answer


@pytest.mark.parametrize(("request_", "answer"), CASES[1:])
def test_the_backend_answers_as_memcached(module_backend: servers.RunningServer,
                                          request_: bytes, answer: bytes) -> None:
    assert wire.request(module_backend, request_ % {b"k": b"be-cas-order"}) == answer


def test_the_backend_finds_an_empty_value_non_numeric_before_the_cas(
        module_backend: servers.RunningServer) -> None:
    request_, answer = MA_EMPTY
    assert wire.request(module_backend, request_ % {b"k": b"be-ma-empty"}) == answer
