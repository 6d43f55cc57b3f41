"""A noreply store whose big data block is cut wrong: the replies after it wait as memcached's do.

Found by `make fuzz` (seed 11, case 17520, round eight). memcached 1.6.18 reads a data block
past its 16 KiB read buffer from the socket to its end, and writes what it holds there
(protocol/write_points.py). A `noreply` store whose block ends wrong (`CLIENT_ERROR bad data
chunk`, hidden by noreply) made no request event in memring's parser, so the next request
(here the `ERROR` of the stray "\\n") took the block's write point: memring sent `ERROR` at
once, while memcached holds it behind the too-large `add` whose block it then swallows.
Real memcached, backend and proxies on loopback; the same bytes to each.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.helpers import servers

pytestmark = pytest.mark.integration

SIZE = 600_000  # past memcached's 16 KiB read buffer
# one byte too many: the block's last two bytes are "v\r", the "\n" then reads as a line
CUT_WRONG = b"set %%s 0 0 %d noreply\r\n%s\r\n" % (SIZE, b"v" * (SIZE + 1))
TOO_LARGE = b"add %s 0 0 2592001\r\nab"  # swallowed: what came before waits with it
REST = b"x" * (2592001 + 2 - 2) + b"mn\r\n"
QUIET = 0.5  # seconds of silence that show a reply is held


def exchange(port: int, parts: list[bytes]) -> list[bytes]:
    """Send each part, then read until QUIET seconds pass without a byte: what came."""
    seen: list[bytes] = []
    with socket.create_connection((servers.HOST, port), timeout=5) as sock:
        for part in parts:
            sock.sendall(part)
            got = b""
            sock.settimeout(QUIET)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    break
                if not chunk:
                    break
                got += chunk
            seen.append(got)
    return seen


@pytest.fixture(scope="module", params=["memcached", "backend", "proxy-backend",
                                        "proxy-memcached"])
def server(request: pytest.FixtureRequest) -> Iterator[servers.RunningServer]:
    kind = str(request.param)
    if kind.startswith("proxy-"):
        with servers.proxy_over(kind.removeprefix("proxy-"), shards=2) as proxy:
            yield proxy
    else:
        with servers.start(kind) as direct:
            yield direct


# with its reply: a 20 KB block past memcached's read buffer, read in one go by memring:
# memcached writes its CLIENT_ERROR where the block ends, before the next line's ERROR
SPOKEN = b"set %%s 0 0 20000\r\n%s\r\nbogus\r\n" % (b"v" * 20001)


def test_a_bad_chunk_of_a_big_block_is_written_where_the_block_ends(
        server: servers.RunningServer) -> None:
    key = b"spoken-chunk"
    seen = exchange(server.port, [SPOKEN % key + TOO_LARGE % (key + b":add"), REST])
    assert seen == [b"CLIENT_ERROR bad data chunk\r\n",  # the stray "\n", then bogus:
                    b"ERROR\r\nERROR\r\nSERVER_ERROR object too large for cache\r\nMN\r\n"]


def test_the_error_after_a_silent_bad_chunk_waits_with_the_swallowed_block(
        server: servers.RunningServer) -> None:
    key = b"silent-chunk"
    # written as one: the stray "\n" and the add arrive with the block's end
    seen = exchange(server.port, [CUT_WRONG % key + TOO_LARGE % (key + b":add"), REST])
    assert seen == [b"", b"ERROR\r\nSERVER_ERROR object too large for cache\r\nMN\r\n"]
