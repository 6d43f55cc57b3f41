"""TLS and plain streams over a real socket pair: the handshake, both directions, big writes
that meet a full socket (the backlog), and the end of the stream."""

from __future__ import annotations

import ssl

import pytest
import trio

from memring.cluster.certificates import CertificateAuthority
from memring.netio.streams import PlainStream, TlsStream
from memring.netio.tls import TlsSettings, client_context, server_context
from tests.helpers.socket_pairs import nonblocking_socketpair

pytestmark = pytest.mark.unit


def _tls_pair(ca: CertificateAuthority, *, client_cert: bool = True,
              verify: str = "require") -> tuple[TlsStream, TlsStream]:
    server_cred = ca.issue("server")
    client_cred = ca.issue("client")
    server = server_context(TlsSettings(cert=str(server_cred.cert), key=str(server_cred.key),
                                        ca=str(ca.cert), verify=verify))
    client = client_context(TlsSettings(
        cert=str(client_cred.cert) if client_cert else "",
        key=str(client_cred.key) if client_cert else "", ca=str(ca.cert), verify="require"))
    a, b = nonblocking_socketpair()
    return (TlsStream(a, server, server_side=True),
            TlsStream(b, client, server_side=False, server_hostname="127.0.0.1"))


async def _both(first: object, second: object) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)  # type: ignore[arg-type]
        nursery.start_soon(second)  # type: ignore[arg-type]


async def test_tls_round_trip_with_a_big_write(private_ca: CertificateAuthority) -> None:
    server, client = _tls_pair(private_ca)
    big = bytes(range(256)) * 40_000  # 10 MB: far past the socket buffers

    async def serve() -> None:
        await server.handshake()
        assert server.peer_certificate is not None  # mutual: the client showed its own
        got = bytearray()
        while len(got) < len(big):
            got += await server.recv(65536)
        assert got == big
        await server.send_all(b"thanks")

    async def talk() -> None:
        await client.handshake()
        taken = client.send_now(big)
        assert taken == len(big)  # all taken; what the kernel refused is the backlog
        assert client.backlog > 0
        assert client.send_now(b"more") == 0  # nothing more while the backlog waits
        await client.send_all(b"")
        assert client.backlog == 0
        assert await client.recv(100) == b"thanks"
        client.sock.close()

    with trio.fail_after(20):
        await _both(serve, talk)
    assert await server.recv(10) == b""  # closed without close_notify: the end, not an error


async def test_required_client_certificate(private_ca: CertificateAuthority) -> None:
    server, client = _tls_pair(private_ca, client_cert=False)

    async def serve() -> None:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE"):
            await server.handshake()
        server.sock.close()

    async def talk() -> None:
        await client.handshake()  # TLS 1.3: the client learns of the refusal on its read
        with pytest.raises((ConnectionResetError, ssl.SSLError)):
            assert await client.recv(10) == b""
            raise ConnectionResetError

    with trio.fail_after(10):
        await _both(serve, talk)


async def test_plain_stream_takes_what_the_kernel_takes() -> None:
    a, b = nonblocking_socketpair()
    stream = PlainStream(a)
    taken = stream.send_now(b"x" * 10_000_000)
    assert 0 < taken < 10_000_000
    assert stream.backlog == 0
    b.close()
    a.close()


async def test_a_tls_recv_takes_every_whole_record_already_received(
        private_ca: CertificateAuthority) -> None:
    """One recv returns the records that arrived together (up to `size`), as a plain recv
    returns what the socket holds: a replication follower parses and ACKs per read, not per
    16 KiB record; a record not whole yet waits for the next call."""
    server, client = _tls_pair(private_ca)
    data = bytes(range(256)) * 192  # 48 KiB: three full records

    async def talk() -> None:
        await client.handshake()
        await client.send_all(data)

    with trio.fail_after(10):
        await _both(server.handshake, talk)
        await trio.sleep(0.05)  # every record on the socket
        assert await server.recv(65536) == data
        await client.send_all(data)
        await trio.sleep(0.05)
        first = await server.recv(20_000)  # stops at `size`, inside the second record
        assert first == data[:20_000]
        assert first + await server.recv(65536) == data
