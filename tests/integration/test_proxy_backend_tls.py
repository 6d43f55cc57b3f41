"""The proxy's links to its backends over TLS (issue 13, "Proxy to backend"), against Debian's
memcached 1.6.18 started with -Z: with mutual TLS (ssl_verify_mode=2, a client certificate is
required) pymemcache's values come back byte for byte through the proxy; a proxy that cannot
complete the handshake (a CA it does not know, a certificate that names another host or has
expired, no client certificate or one the backend does not trust) answers with its
node-failure error and logs the reason once, not once per retry.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from memring.cluster.certificates import CertificateAuthority, Credential
from tests.helpers import servers, wire

pytestmark = pytest.mark.integration


def answers_over_tls(client: Credential | None) -> Callable[[int], bool]:
    """Readiness of a memcached -Z port, presenting `client` (its certificate unchecked)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if client is not None:
        context.load_cert_chain(client.cert, client.key)

    def ready(port: int) -> bool:
        try:
            with socket.create_connection((servers.HOST, port), timeout=0.5) as raw, \
                    context.wrap_socket(raw) as sock:
                sock.sendall(b"version\r\n")
                return sock.recv(64).endswith(b"\r\n")  # VERSION, or an auth gate's refusal
        except OSError:
            return False

    return ready


def tls_memcached(server: Credential, client: Credential | None, verify_mode: int = 2,
                  *extra: str) -> contextlib.AbstractContextManager[servers.RunningServer]:
    """memcached -Z presenting `server`; with ssl_verify_mode 2 it requires a client
    certificate from its CA (`client` is what the readiness check shows)."""
    options = (f"ssl_chain_cert={server.cert},ssl_key={server.key},ssl_ca_cert={server.ca},"
               f"ssl_verify_mode={verify_mode}")
    return servers.memcached("-Z", "-o", options, *extra, ready=answers_over_tls(client))


def tls_flags(ca: Path, client: Credential | None) -> list[str]:
    flags = ["--backend-tls", "--backend-tls-ca", str(ca)]
    if client is not None:
        flags += ["--backend-tls-cert", str(client.cert), "--backend-tls-key", str(client.key)]
    return flags


@pytest.fixture(scope="module")
def mutual(private_ca: CertificateAuthority) -> Iterator[servers.RunningServer]:
    """A proxy over two memcached -Z shards that require its client certificate."""
    proxy_cert = private_ca.issue("proxy")
    with contextlib.ExitStack() as stack:
        shards = [[stack.enter_context(tls_memcached(
            private_ca.issue(f"backend-{n}"), proxy_cert))] for n in range(2)]
        proxy = stack.enter_context(servers.proxy(shards, *tls_flags(private_ca.cert,
                                                                     proxy_cert)))
        wait_connected(proxy)
        yield proxy


def client_of(proxy: servers.RunningServer) -> Client:
    return Client(proxy.address, connect_timeout=5, timeout=10)


def wait_connected(proxy: servers.RunningServer, timeout: float = 10.0) -> None:
    """Until a get through the proxy is answered by its backends: the proxy answers
    `version` itself as soon as it listens, before its pools have shaken hands."""
    deadline = time.monotonic() + timeout
    probe = b"get " + b" ".join(b"probe-%d" % n for n in range(20)) + b"\r\n"  # every shard
    while (reply := wire.request(proxy, probe)) != b"END\r\n":
        assert time.monotonic() < deadline, reply
        time.sleep(0.02)


def test_values_round_trip_byte_exact(mutual: servers.RunningServer) -> None:
    client = client_of(mutual)
    values = {b"k-%d" % n: bytes(range(256)) * n + b"\r\nEND\r\n" for n in range(20)}
    for key, value in values.items():
        assert client.set(key, value, noreply=False)
    assert client.get(b"k-7") == values[b"k-7"]
    assert client.get_many(list(values)) == values
    assert client.get(b"absent") is None
    assert client.delete(b"k-3", noreply=False)
    assert client.get(b"k-3") is None


def test_a_one_megabyte_value(mutual: servers.RunningServer) -> None:
    client = client_of(mutual)
    value = bytes(n * 7 % 251 for n in range(1_000_000))
    assert client.set(b"big", value, noreply=False)
    assert client.get(b"big") == value


def test_a_thousand_key_multi_get(mutual: servers.RunningServer) -> None:
    client = client_of(mutual)
    values = {b"many-%04d" % n: b"v%d" % n * (n % 50 + 1) for n in range(1000)}
    assert client.set_many(values, noreply=False) == []
    assert client.get_many(list(values)) == values
    # both shards took part (the split and the reassembly crossed TLS links)
    proxy_stats = wire.stats(mutual)
    assert all(int(wire.backend_stats(proxy_stats, node)["requests"]) > 0
               for node in mutual.upstreams), proxy_stats


def _refused(proxy: servers.RunningServer, reason: str) -> None:
    """Requests fail with the node-failure error; the reason (a pattern) is logged, once."""
    deadline = time.monotonic() + 10
    for _ in range(3):  # across the ejection and at least one probe (retry_ms 300)
        reply = wire.request(proxy, b"get some-key\r\n")
        assert reply.startswith(b"SERVER_ERROR 127.0.0.1:") and reply.endswith(b"\r\n"), reply
        assert b"is ejected" in reply or b"is not connected" in reply, reply
        time.sleep(0.4)
    while not re.search(reason, proxy.log_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    log = proxy.log_text()
    lines = [line for line in log.splitlines() if "TLS handshake with" in line and
             "level=ERROR" in line]
    assert len(lines) == 1 and re.search(reason, lines[0]), log
    port = proxy.upstreams[0].port
    assert f"127.0.0.1:{port}" in lines[0]


@contextlib.contextmanager
def proxy_to(backend: servers.RunningServer, ca: Path, client: Credential | None
             ) -> Iterator[servers.RunningServer]:
    # on_shard_error = error: _refused reads the node failure in the get's reply
    with servers.proxy([[backend]], *tls_flags(ca, client), retry_ms=300,
                       on_shard_error="error") as proxy:
        yield proxy


def test_a_backend_certificate_from_another_ca(private_ca: CertificateAuthority,
                                               tmp_path: Path) -> None:
    other = CertificateAuthority.create(tmp_path / "other")
    proxy_cert = private_ca.issue("proxy-a")
    with tls_memcached(other.issue("stranger"), None, verify_mode=0) as backend, \
            proxy_to(backend, private_ca.cert, proxy_cert) as proxy:
        # memcached sends its CA's certificate along when it has one (ssl_ca_cert)
        _refused(proxy, "certificate is not accepted: (unable to get local issuer certificate"
                        "|self-signed certificate in certificate chain)")


def test_a_backend_certificate_for_another_host(private_ca: CertificateAuthority) -> None:
    proxy_cert = private_ca.issue("proxy-b")
    elsewhere = private_ca.issue("elsewhere", hosts=("10.11.12.13", "cache.example"))
    with tls_memcached(elsewhere, proxy_cert) as backend, \
            proxy_to(backend, private_ca.cert, proxy_cert) as proxy:
        _refused(proxy, "certificate is not accepted: IP address mismatch")


def test_an_expired_backend_certificate(private_ca: CertificateAuthority) -> None:
    proxy_cert = private_ca.issue("proxy-c")
    with tls_memcached(private_ca.issue("old", days=-1), proxy_cert) as backend, \
            proxy_to(backend, private_ca.cert, proxy_cert) as proxy:
        _refused(proxy, "certificate is not accepted: certificate has expired")


def test_no_client_certificate_for_a_backend_that_requires_one(
        private_ca: CertificateAuthority) -> None:
    with tls_memcached(private_ca.issue("strict"), private_ca.issue("probe")) as backend, \
            proxy_to(backend, private_ca.cert, None) as proxy:
        _refused(proxy, "the backend requires a client certificate")


def test_a_client_certificate_the_backend_does_not_trust(private_ca: CertificateAuthority,
                                                         tmp_path: Path) -> None:
    foreign = CertificateAuthority.create(tmp_path / "foreign").issue("proxy-d")
    with tls_memcached(private_ca.issue("picky"), private_ca.issue("probe-2")) as backend, \
            proxy_to(backend, private_ca.cert, foreign) as proxy:
        _refused(proxy, "the backend does not trust the proxy's client certificate")


def test_a_plain_backend_port(private_ca: CertificateAuthority) -> None:
    with servers.memcached() as backend, \
            proxy_to(backend, private_ca.cert, private_ca.issue("proxy-e")) as proxy:
        _refused(proxy, "the backend does not speak TLS on this port")


def test_verify_none_encrypts_without_checking(private_ca: CertificateAuthority) -> None:
    """--backend-tls-verify none: an expired certificate naming another host is accepted
    (encryption only, no protection from an impostor), the client certificate still shown."""
    proxy_cert = private_ca.issue("proxy-f")
    anyone = private_ca.issue("anyone", hosts=("10.11.12.14",), days=-1)
    with tls_memcached(anyone, proxy_cert) as backend, \
            servers.proxy([[backend]], "--backend-tls", "--backend-tls-verify", "none",
                          "--backend-tls-cert", str(proxy_cert.cert), "--backend-tls-key",
                          str(proxy_cert.key)) as proxy:
        wait_connected(proxy)
        client = client_of(proxy)
        assert client.set(b"k", b"v" * 1000, noreply=False)
        assert client.get(b"k") == b"v" * 1000
        assert "TLS handshake" not in proxy.log_text()


def test_authentication_inside_tls(private_ca: CertificateAuthority, tmp_path: Path) -> None:
    """memcached -Z with -Y: the proxy shakes hands, then authenticates as its backend user
    inside TLS (--backend-auth-file), and requests pass."""
    users = tmp_path / "users"
    users.write_bytes(b"proxy:proxy-pw\n")
    proxy_cert = private_ca.issue("proxy-g")
    with tls_memcached(private_ca.issue("gated"), proxy_cert, 2, "-Y", str(users)) as backend, \
            servers.proxy([[backend]], *tls_flags(private_ca.cert, proxy_cert),
                          "--backend-auth-file", str(users)) as proxy:
        wait_connected(proxy)
        client = client_of(proxy)
        assert client.set(b"k", b"inside", noreply=False)
        assert client.get(b"k") == b"inside"


def accepts_tcp(port: int) -> bool:
    try:
        socket.create_connection((servers.HOST, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def test_a_backend_that_never_answers_the_handshake(private_ca: CertificateAuthority) -> None:
    """The handshake is bounded by the request timeout (timeout_ms) like the TCP connect."""
    silent = [sys.executable, "-c", "import socket, time; s = socket.socket(); "
              "s.bind(('127.0.0.1', {port})); s.listen(64); time.sleep(120)"]
    with servers.running("silent", silent, ready=accepts_tcp) as mute, \
            proxy_to(mute, private_ca.cert, private_ca.issue("proxy-h")) as proxy:
        _refused(proxy, "failed: timed out")
