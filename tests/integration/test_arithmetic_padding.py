"""A shorter number written by decr over a longer value: padded, or the digits alone.

Found by round eight's fuzz cases of arithmetic with C flags (seed 12). memcached 1.6.18's
do_add_delta rewrites the value in place, padded with spaces to its old length, only while
nothing else holds the item (refcount 2); an `mg ... v` earlier in the same read holds it
until its reply is written, and then decr stores a new item of the digits alone. memring
always pads (README, "Compatibility notes"; the fuzzer's `arithmetic_padding` normalizer).
The number is the same either way. Real memcached and backend on loopback.
"""

from __future__ import annotations

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

# the mg's reply is not written before the decr runs (mg is no write point in 1.6.18)
HELD = b"set %(k)s 0 0 2\r\n 5\r\nmg %(k)s v\r\ndecr %(k)s 0\r\nmg %(k)s v\r\n"
# a get is a write point: its reply has left when the decr runs
WRITTEN = b"set %(k)s 0 0 2\r\n 5\r\nget %(k)s\r\ndecr %(k)s 0\r\nmg %(k)s v\r\n"


@pytest.mark.parametrize("kind", ["memcached", "backend"])
def test_padding_after_a_written_reply_is_the_same(kind: str) -> None:
    with servers.start(kind) as server:
        assert wire.request(server, WRITTEN % {b"k": b"pad-w"}) == (
            b"STORED\r\nVALUE pad-w 0 2\r\n 5\r\nEND\r\n5\r\nVA 2\r\n5 \r\n")


@pytest.mark.parametrize(("kind", "value"), [("memcached", b"VA 1\r\n5\r\n"),
                                             ("backend", b"VA 2\r\n5 \r\n")])
def test_padding_behind_an_unwritten_mg_differs(kind: str, value: bytes) -> None:
    with servers.start(kind) as server:
        assert wire.request(server, HELD % {b"k": b"pad-h"}) == (
            b"STORED\r\nVA 2\r\n 5\r\n5\r\n" + value)
