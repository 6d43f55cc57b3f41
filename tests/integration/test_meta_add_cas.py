"""`ms` in add mode (ME) with a C flag: memcached 1.6.18 never compares the CAS there.

Found by `make fuzz` (seed 11, case 2554, round eight). memcached.c do_store_item: for
NREAD_ADD an item that exists is NOT_STORED (and bumped in its LRU) whatever the request's
CAS is; a missing one is stored. The backend compared the CAS first and answered EX. The same
bytes run against memcached, a memring backend and a proxy over backends (real processes).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire

pytestmark = pytest.mark.integration

CASES = [
    pytest.param(b"set %(k)s 0 0 1\r\nx\r\nms %(k)s 1 ME C0\r\na\r\nmg %(k)s v\r\n",
                 b"STORED\r\nNS\r\nVA 1\r\nx\r\n", id="add-c0-on-an-item"),
    # (wire.request's own `mn` ends a quiet case: an `mn` of the case's own was taken for it
    # when its MN came in a segment of its own, and the reply cut short)
    pytest.param(b"set %(k)s 0 0 1\r\nx\r\nms %(k)s 1 ME C99999 q\r\na\r\n",
                 b"STORED\r\nNS\r\n", id="add-wrong-c-quiet-on-an-item"),
    pytest.param(b"set %(k)s 0 0 1\r\nx\r\nms %(k)s 1 ME C99999 I\r\na\r\nmg %(k)s v\r\n",
                 b"STORED\r\nNS\r\nVA 1\r\nx\r\n", id="add-wrong-c-invalidate-on-an-item"),
    pytest.param(b"ms %(k)s 1 ME C5\r\na\r\nmg %(k)s v\r\n", b"HD\r\nVA 1\r\na\r\n",
                 id="add-c-on-a-miss-stores"),
    pytest.param(b"set %(k)s 0 0 1\r\nx\r\nms %(k)s 1 MR C0\r\na\r\nmg %(k)s v\r\n",
                 b"STORED\r\nEX\r\nVA 1\r\nx\r\n", id="replace-c0-is-compared"),
]


@pytest.fixture(scope="module", params=["memcached", "backend", "proxy-backend"])
def server(request: pytest.FixtureRequest) -> Iterator[servers.RunningServer]:
    kind = str(request.param)
    if kind == "proxy-backend":
        with servers.proxy_over("backend") as proxy:
            yield proxy
    else:
        with servers.start(kind) as direct:
            yield direct


@pytest.mark.parametrize(("request_", "answer"), CASES)
def test_add_mode_answers_as_memcached(server: servers.RunningServer, request_: bytes,
                                       answer: bytes) -> None:
    key = b"add-cas-%08x" % zlib.crc32(request_)
    assert wire.request(server, request_ % {b"k": key}) == answer
