"""Multi-key gets through the proxy: a backend's VALUE blocks travel as runs
(protocol.responses.Values), forwarded whole to a one-shard client or cut at block boundaries
into the client's key order. Byte for byte what one memcached holding the same items
answers, whatever the values hold (END, VALUE lines, CRLFs) and however the reads cut
them; a backend reply that answers no request, or is malformed, fails that request and
delivers none of its bytes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.helpers import servers, wire
from tests.helpers.scripted_backend import scripted_backend

pytestmark = pytest.mark.integration

# Values that a parser scanning for "END\r\n" or "VALUE " would cut in the wrong place
TRICKY = [b"END\r\n", b"VALUE t0 0 3\r\nxyz\r\nEND\r\n", b"", b"\r\n", b"END", b"VALUE ",
          b"x" * 70000, b"\r\nEND\r\nVALUE t1 0 1\r\n"]
KEYS = [b"mg-%02d" % index for index in range(24)]
VALUES = {key: TRICKY[index % len(TRICKY)] + b"-%d" % index
          for index, key in enumerate(KEYS) if index % 3 != 1}  # every third key a miss


@pytest.fixture(scope="module")
def reference() -> Iterator[servers.RunningServer]:
    with servers.memcached() as server:
        wire.store(server, VALUES)
        yield server


@pytest.fixture(scope="module", params=[1, 3], ids=["one-shard", "three-shards"])
def proxy(request: pytest.FixtureRequest) -> Iterator[servers.RunningServer]:
    with servers.proxy_over("memcached", shards=request.param) as proxy:
        wire.store(proxy, VALUES)
        yield proxy


@pytest.mark.parametrize("keys", [
    KEYS[:10],  # hits and misses, in one read of most backends
    KEYS,  # a big value among them: replies that come in several reads
    KEYS[::-1],  # in the reverse of the order they were stored in
    [KEYS[1], KEYS[4], KEYS[7]],  # all misses
    [KEYS[6], KEYS[0], KEYS[2], KEYS[3], KEYS[5]],  # the big value first
], ids=["ten", "all", "reversed", "misses", "big-first"])
def test_a_multi_get_answers_as_memcached(reference: servers.RunningServer,
                                          proxy: servers.RunningServer,
                                          keys: list[bytes]) -> None:
    for command in (b"get", b"gets"):
        line = command + b" " + b" ".join(keys) + b"\r\n"
        expected = wire.request(reference, line)
        got = wire.request(proxy, line)
        if command == b"gets":  # CAS values are each upstream's own: compared without them
            expected, got = _without_cas(expected), _without_cas(got)
        assert got == expected, wire.first_difference(expected, got, line)


def test_pipelined_multi_gets_keep_their_order(reference: servers.RunningServer,
                                               proxy: servers.RunningServer) -> None:
    payload = b"".join(b"get " + b" ".join(KEYS[start:start + 5]) + b"\r\n"
                       for start in range(0, len(KEYS), 3))
    assert wire.request(proxy, payload) == wire.request(reference, payload)


def _without_cas(reply: bytes) -> bytes:
    """A gets reply with each VALUE line's CAS token dropped (the data left as it is)."""
    out = []
    rest = reply
    while rest.startswith(b"VALUE "):
        line, _, rest = rest.partition(b"\r\n")
        tokens = line.split(b" ")
        size = int(tokens[3])
        out.append(b" ".join(tokens[:4]) + b"\r\n" + rest[:size + 2])
        rest = rest[size + 2:]
    return b"".join(out) + rest


@pytest.mark.parametrize("answer", [
    # a run whose second block is a key the client did not ask for
    b"VALUE a 0 1\r\nx\r\nVALUE victim 0 6\r\nsecret\r\nEND\r\n",
    # a good block, then one whose data is longer than its header says
    b"VALUE a 0 1\r\nx\r\nVALUE b 0 2\r\nsecret\r\nEND\r\n",
    # a good block, then a header that is not one
    b"VALUE a 0 1\r\nx\r\nVALUE b zero 6\r\nsecret\r\nEND\r\n",
], ids=["unasked-key", "long-block", "bad-header"])
def test_a_bad_reply_to_a_multi_get_fails_it_and_delivers_nothing(answer: bytes) -> None:
    with scripted_backend(answer, lambda line: line.startswith(b"get ")) as (backend, _), \
            servers.proxy([[backend]], on_shard_error="error", pool_size=1) as proxy, \
            wire.connect(proxy) as client:
        client.sendall(b"get a b\r\n")
        reply = wire.read_until(client, b"\r\n", timeout=3.0)
        assert reply.startswith(b"SERVER_ERROR "), reply
        assert b"secret" not in reply and b"VALUE a" not in reply and b"\r\nx\r\n" not in reply



def test_a_reply_cut_short_fails_its_get_and_the_next_get_is_served() -> None:
    # the backend stalls inside the first block of its first answer: that get answers
    # SERVER_ERROR at the proxy's timeout, with none of the block's bytes; the connection is
    # made again and the next get (after it) is served whole
    def answer(count: int) -> bytes:
        return (b"VALUE a 0 10\r\nabc" if count == 0
                else b"VALUE a 0 3\r\nabc\r\nVALUE b 0 3\r\ndef\r\nEND\r\n")

    with scripted_backend(answer, lambda line: line.startswith(b"get ")) as (backend, _), \
            servers.proxy([[backend]], on_shard_error="error", pool_size=1, timeout_ms=300,
                          failure_limit=3) as proxy, \
            wire.connect(proxy) as client:
        client.sendall(b"get a b\r\n")
        reply = wire.read_until(client, b"\r\n", timeout=3.0)
        assert reply.startswith(b"SERVER_ERROR timeout"), reply
        assert b"abc" not in reply
        deadline = time.monotonic() + 5.0
        while True:  # "not connected" until the pool has made its connection again
            client.sendall(b"get a b\r\n")
            reply = wire.read_until(client, b"\r\n", timeout=3.0)
            if not reply.startswith(b"SERVER_ERROR") or time.monotonic() > deadline:
                break
            assert b"not connected" in reply, reply
            time.sleep(0.05)
        if not reply.endswith(b"END\r\n"):
            reply += wire.read_until(client, b"END\r\n", timeout=3.0)
        assert reply == b"VALUE a 0 3\r\nabc\r\nVALUE b 0 3\r\ndef\r\nEND\r\n", reply
