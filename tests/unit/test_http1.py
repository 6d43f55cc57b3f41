"""The HTTP/1.1 client codec the etcd gateway keepalive uses: every answer whole, a byte at a
time and followed by the next one; bounded sizes; hostile input is HttpProtocolError only."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.cluster.http1 import (
    HttpProtocolError,
    Response,
    ResponseReader,
    encode_request,
)

pytestmark = pytest.mark.unit

# what etcd 3.4.23's gateway sent for a keepalive (captured from /usr/bin/etcd)
KEEPALIVE = (b'{"result":{"header":{"cluster_id":"14841639068965178418","member_id":"1027665774'
             b'3932975437","revision":"1","raft_term":"2"},"ID":"7587899365077002757",'
             b'"TTL":"10"}}\n')
CHUNKED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
           b"Grpc-Metadata-Content-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n" % len(KEEPALIVE) + KEEPALIVE + b"\r\n0\r\n\r\n")
REFUSED = (b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
           b"Content-Length: 62\r\n\r\n"
           b'{"error":"unexpected EOF","message":"unexpected EOF","code":2}')


def parse(data: bytes, step: int = 0, **limits: int) -> list[Response]:
    """Every response in `data`, fed whole (step 0) or `step` bytes at a time."""
    reader = ResponseReader(**limits)
    out = []
    pieces = [data] if not step else [data[i:i + step] for i in range(0, len(data), step)]
    for piece in pieces:
        reader.receive_data(piece)
        while (response := reader.next_response()) is not None:
            out.append(response)
    return out


@pytest.mark.parametrize("step", [0, 1, 7])
def test_chunked_and_length_answers_whole_bytewise_and_back_to_back(step: int) -> None:
    responses = parse(CHUNKED + REFUSED + CHUNKED, step)
    assert [r.status for r in responses] == [200, 500, 200]
    assert responses[0].body == KEEPALIVE == responses[2].body
    assert responses[1].body.endswith(b'"code":2}')
    assert responses[0].header(b"content-type") == b"application/json"
    assert all(r.keep_alive for r in responses)


def test_several_chunks_extensions_and_trailers_join() -> None:
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nX-Trailer: yes\r\n\r\n")
    for step in (0, 1):
        [response] = parse(data, step)
        assert response.body == b"abc0123456789"


def test_informational_answers_are_skipped_and_204_has_no_body() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n" + REFUSED
    assert [(r.status, r.body[:1]) for r in parse(data, 1)] == [(204, b""), (500, b"{")]


def test_connection_close_and_a_body_until_the_end() -> None:
    reader = ResponseReader()
    reader.receive_data(b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\n\r\nno leader")
    assert reader.next_response() is None  # the body runs to the end of the connection
    reader.receive_data(b"")
    response = reader.next_response()
    assert response is not None and response.body == b"no leader" and not response.keep_alive
    [old] = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert not old.keep_alive


@pytest.mark.parametrize("cut", [0, 10, len(CHUNKED) - 3])
def test_a_connection_closed_early_is_an_error(cut: int) -> None:
    reader = ResponseReader()
    if cut:  # (b"" is the end of the connection)
        reader.receive_data(CHUNKED[:cut])
        assert reader.next_response() is None
    reader.receive_data(b"")
    with pytest.raises(HttpProtocolError, match="closed"):
        reader.next_response()


@pytest.mark.parametrize("data", [
    b"SSH-2.0-OpenSSH_9.2\r\n\r\n",  # not HTTP
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1e3\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY",  # no CRLF after data
])
def test_hostile_answers_are_protocol_errors(data: bytes) -> None:
    for step in (0, 1):
        with pytest.raises(HttpProtocolError):
            parse(data, step)


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200 + b"\r\n\r\n",  # head
    b"HTTP/1.1 200 OK\r\nX: " + b"a" * 200,  # a head that never ends
    b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n",  # announced body
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n65\r\n",  # one big chunk
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"40\r\n" + b"x" * 64 + b"\r\n"
    + b"40\r\n" + b"x" * 64 + b"\r\n",  # chunks that add up
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"0" * 100,  # size line
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nT: " + b"t" * 200,  # trailers
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 101,  # a body until the end of the connection
])
def test_sizes_are_bounded(data: bytes) -> None:
    for step in (0, 1):
        with pytest.raises(HttpProtocolError, match=r"longer|exceeds|too long"):
            parse(data, step, max_head=100, max_body=100)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_any_bytes_give_responses_or_the_protocol_error(data: bytes, step: int) -> None:
    reader = ResponseReader(max_head=120, max_body=120)
    try:
        for i in range(0, len(data), step):
            reader.receive_data(data[i:i + step])
            while reader.next_response() is not None:
                pass
        reader.receive_data(b"")
        reader.next_response()
    except HttpProtocolError:
        pass
    assert len(reader._buffer) <= len(data)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300), st.binary(min_size=1, max_size=40))
def test_any_chunked_body_round_trips(body: bytes, sizes: bytes) -> None:
    chunks, at = [], 0
    for size in sizes:
        if at >= len(body):
            break
        chunks.append(body[at:at + size + 1])
        at += size + 1
    chunks.append(body[at:])
    wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + wire + b"0\r\n\r\n"
    assert [r.body for r in parse(data, 3)] == [body]


def test_requests_carry_their_length_and_refuse_smuggled_lines() -> None:
    wire = encode_request("POST", "/v3/lease/keepalive", "127.0.0.1:2379", b'{"ID":"1"}',
                          headers=[("Authorization", "tok.en")])
    assert wire == (b"POST /v3/lease/keepalive HTTP/1.1\r\nHost: 127.0.0.1:2379\r\n"
                    b"Content-Length: 10\r\nAuthorization: tok.en\r\n\r\n" b'{"ID":"1"}')
    with pytest.raises(ValueError):
        encode_request("POST", "/x", "h", headers=[("Authorization", "a\r\nX-Evil: 1")])
    with pytest.raises(ValueError):
        encode_request("POST", "/x y", "h")
    with pytest.raises(ValueError):
        encode_request("PO ST", "/x", "h")


def test_a_chunked_body_can_be_used_before_it_ends() -> None:
    """etcd's gateway writes a streaming call's answer and the body's end apart: the answer
    is there (`partial_body`) before the response is whole, and the end still parses."""
    reader = ResponseReader()
    assert reader.partial_body() is None
    cut = CHUNKED.index(b"0\r\n\r\n")
    reader.receive_data(CHUNKED[:cut])
    assert reader.next_response() is None
    assert reader.partial_body() == (200, KEEPALIVE)
    reader.receive_data(CHUNKED[cut:] + REFUSED)
    whole = reader.next_response()
    assert whole is not None and whole.body == KEEPALIVE
    assert reader.next_response() is not None and reader.partial_body() is None
    closing = ResponseReader()  # a connection the server closes: no early use
    closing.receive_data(b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nab\n\r\n")
    assert closing.next_response() is None and closing.partial_body() is None


def test_an_endless_chunked_body_is_taken_as_it_comes_within_the_bound() -> None:
    """A watch's answer never ends: taken piece by piece (`take_partial_body`), its bound
    holds for what is received and not yet taken, not for the whole stream."""
    reader = ResponseReader(max_body=64)
    reader.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert reader.next_response() is None and reader.take_partial_body() == (200, b"")
    for n in range(20):  # 20 x 40 bytes: far past the bound in all
        message = b'{"n": %2d}' % n + b" " * 29 + b"\n"
        reader.receive_data(b"%x\r\n%s\r\n" % (len(message), message))
        assert reader.next_response() is None
        assert reader.take_partial_body() == (200, message)
    reader.receive_data(b"41\r\n" + b"x" * 0x41 + b"\r\n")  # one piece over the bound
    with pytest.raises(HttpProtocolError, match="exceeds 64"):
        reader.next_response()
