"""TLS on the client listeners of real backend and proxy processes (issue 13).

pymemcache with `tls_context=` against a TLS backend and through a TLS proxy (whose backends
are plain); the handshakes a server must refuse (a client that trusts another CA, an expired
server certificate, no client certificate or a foreign one under --tls-verify require), each
seen failing by the client, logged with its reason by the server and counted in
ssl_handshake_errors; a plain and a TLS listener on one node; certificates renewed in place and
picked up on SIGHUP and on refresh_certs; a multi-get far bigger than the socket buffers read
slowly through the proxy (the TLS backlog path), byte for byte.
"""

from __future__ import annotations

import contextlib
import re
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client

from memring.cluster.certificates import CertificateAuthority, Credential
from tests.helpers import servers, tls

pytestmark = pytest.mark.integration

TIMEOUT = 5.0
KINDS = ("backend", "proxy")


@pytest.fixture(scope="module")
def server_cert(private_ca: CertificateAuthority) -> Credential:
    return private_ca.issue("tls-listener")


@pytest.fixture(scope="module")
def trusting(private_ca: CertificateAuthority) -> ssl.SSLContext:
    return tls.client_context(private_ca.cert)


@contextlib.contextmanager
def tls_server(kind: str, credential: Credential, *flags: str,
               probe: ssl.SSLContext | None = None) -> Iterator[servers.RunningServer]:
    """A backend, or a proxy over one plain backend, serving TLS on its main port;
    `probe` is the context that can complete a handshake with it (the readiness check)."""
    ready = tls.answers_version_over(probe) if probe is not None else None
    extra = tls.server_flags(credential, "--tls", *flags)
    if kind == "backend":
        with servers.backend(*extra, ready=ready) as server:
            yield server
        return
    with servers.backend() as upstream, \
            servers.proxy([[upstream]], *extra, ready=ready) as server:
        yield server


def _client(port: int, context: ssl.SSLContext) -> Client:
    return Client((tls.HOST, port), tls_context=context, connect_timeout=TIMEOUT,
                  timeout=TIMEOUT, default_noreply=False)


def _wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# --- pymemcache over TLS ------------------------------------------------------------------

def test_pymemcache_against_a_tls_backend(server_cert: Credential,
                                          trusting: ssl.SSLContext) -> None:
    with tls_server("backend", server_cert, probe=trusting) as server:
        client = _client(server.port, trusting)
        assert client.set("tls:a", b"1") is True
        assert client.set("tls:b", b"2" * 5000) is True
        assert client.get("tls:a") == b"1"
        assert client.get_many(["tls:a", "tls:b", "tls:nope"]) == {"tls:a": b"1",
                                                                   "tls:b": b"2" * 5000}
        assert client.delete("tls:a") is True
        assert client.get("tls:a") is None
        assert client.stats()[b"ssl_handshake_errors"] == 0
        client.close()
        # a plain-text client gets nothing it can read: no memcached reply in clear
        with socket.create_connection(server.address, timeout=TIMEOUT) as plain:
            plain.sendall(b"version\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert not plain.recv(100).startswith(b"VERSION")
        _wait_for(lambda: "TLS handshake with 127.0.0.1:" in server.log_text(), "the log")


def test_pymemcache_through_a_tls_proxy(server_cert: Credential,
                                        trusting: ssl.SSLContext) -> None:
    ready = tls.answers_version_over(trusting)
    with servers.backend() as first, servers.backend() as second, \
            servers.proxy([[first], [second]], *tls.server_flags(server_cert, "--tls"),
                          ready=ready) as proxy:
        client = _client(proxy.port, trusting)
        keys = {f"tls:proxy:{n}": str(n).encode() * (n + 1) for n in range(40)}
        assert client.set_many(keys) == []
        assert client.get_many(list(keys)) == keys
        assert client.get("tls:proxy:7") == b"7" * 8
        assert {int(s.port) for s in (first, second)
                if Client(s.address).get_many(list(keys))}  # both shards hold keys
        stats = client.stats()
        assert stats[b"ssl_handshake_errors"] == 0
        assert b"time_since_server_cert_refresh" in stats
        client.close()


# --- refused handshakes ---------------------------------------------------------------------

REFUSALS = {
    # name: (server's flags, how the client connects, what the server logs)
    "client_trusts_another_ca": ("", "stranger_ca", r"alert unknown ca"),
    "expired_server_certificate": ("expired", "trusting", r"alert certificate expired"),
    "no_client_certificate": ("require", "trusting", r"peer did not return a certificate"),
    "foreign_client_certificate": ("require", "foreign_client",
                                   r"certificate verify failed: unable to get local issuer "
                                   r"certificate"),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_handshakes(kind: str, case: str, private_ca: CertificateAuthority,
                            server_cert: Credential, trusting: ssl.SSLContext,
                            tmp_path: Path) -> None:
    server_side, client_side, logged = REFUSALS[case]
    stranger = CertificateAuthority.create(tmp_path / "stranger")
    own_client = private_ca.issue("tls-client")
    contexts = {
        "trusting": trusting,
        "stranger_ca": tls.client_context(stranger.cert),
        "foreign_client": tls.client_context(private_ca.cert, stranger.issue("intruder")),
    }
    credential, flags, probe = server_cert, [], trusting
    if server_side == "expired":
        credential = private_ca.issue("tls-expired", days=-1)
        probe = ssl.create_default_context(cafile=str(private_ca.cert))
        probe.check_hostname, probe.verify_mode = False, ssl.CERT_NONE  # readiness only
    elif server_side == "require":
        flags = ["--tls-ca", str(private_ca.cert), "--tls-verify", "require"]
        probe = tls.client_context(private_ca.cert, own_client)
    with tls_server(kind, credential, *flags, probe=probe) as server:
        errors_before = int(tls.stats(server.port, probe)["ssl_handshake_errors"])
        try:  # TLS 1.3: a client learns that its certificate was refused at its first read
            reply = tls.exchange(server.port, contexts[client_side], b"version\r\n")
        except (ssl.SSLError, ConnectionError) as exc:
            reply, error = b"", str(exc)
        else:
            error = "closed"  # the server's alert lost in a race with its close: EOF
        assert reply == b""  # never an answer
        if case == "expired_server_certificate":
            assert "certificate has expired" in error
        elif case == "client_trusts_another_ca":
            assert "certificate verify failed" in error
        _wait_for(lambda: re.search(r"TLS handshake with 127\.0\.0\.1:\d+ failed: .*" + logged,
                                    server.log_text()) is not None,
                  f"the server to log {logged!r}:\n{server.log_text()}")
        assert int(tls.stats(server.port, probe)["ssl_handshake_errors"]) == errors_before + 1


# --- a plain and a TLS listener on one node ---------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_plain_and_tls_listeners_at_once(kind: str, server_cert: Credential,
                                         trusting: ssl.SSLContext) -> None:
    tls_port = servers.free_port()
    extra = tls.server_flags(server_cert, "--tls-listen", f"{tls.HOST}:{tls_port}")
    with contextlib.ExitStack() as stack:
        if kind == "backend":
            server = stack.enter_context(servers.backend(*extra))
        else:
            upstream = stack.enter_context(servers.backend())
            server = stack.enter_context(servers.proxy([[upstream]], *extra))
        _wait_for(lambda: tls.answers_version_over(trusting)(tls_port), "the TLS listener")
        plain = Client(server.address, connect_timeout=TIMEOUT, timeout=TIMEOUT,
                       default_noreply=False)
        secure = _client(tls_port, trusting)
        assert plain.set("both:k", b"from plain") is True
        assert secure.get("both:k") == b"from plain"
        assert secure.set("both:k", b"from tls") is True
        assert plain.get("both:k") == b"from tls"
        assert plain.stats()[b"curr_connections"] >= 2
        assert plain.raw_command(b"refresh_certs") == b"OK"  # TLS is on, on the other port
        plain.close()
        secure.close()
        assert "served without TLS" not in server.log_text()  # loopback: no warning


def test_a_plain_listener_off_loopback_is_warned_about() -> None:
    port = servers.free_port()
    with servers.running("memring-backend", [*servers.backend_argv(), "--listen",
                                             f"0.0.0.0:{port}"], port=port) as server:
        assert "served without TLS" in server.log_text()


# --- certificates renewed in place ------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_sighup_and_refresh_certs_pick_up_a_new_certificate(
        kind: str, private_ca: CertificateAuthority, trusting: ssl.SSLContext,
        tmp_path: Path) -> None:
    live = tls.credential_copy(private_ca, f"renewed-{kind}", tmp_path)
    with tls_server(kind, live, probe=trusting) as server:
        first = tls.peer_serial(server.port, trusting)
        tls.replace_files(live, private_ca.issue(f"renewed-{kind}-2"))
        assert tls.peer_serial(server.port, trusting) == first  # not before a reload
        server.process.send_signal(signal.SIGHUP)
        _wait_for(lambda: tls.peer_serial(server.port, trusting) != first, "SIGHUP's reload")
        second = tls.peer_serial(server.port, trusting)

        tls.replace_files(live, private_ca.issue(f"renewed-{kind}-3"))
        assert tls.exchange(server.port, trusting, b"refresh_certs\r\n") == b"OK\r\n"
        third = tls.peer_serial(server.port, trusting)
        assert third not in (first, second)
        assert int(tls.stats(server.port, trusting)["time_since_server_cert_refresh"]) <= 1

        live.cert.write_text("not a certificate\n")  # a broken renewal: the old one stays
        reply = tls.exchange(server.port, trusting, b"refresh_certs\r\nversion\r\n",
                             end=b"VERSION 1.6.18\r\n")
        assert reply.startswith(f"Error loading the certificate chain: {live.cert} : ".encode())
        assert tls.peer_serial(server.port, trusting) == third
        assert "TLS certificates not reloaded" in server.log_text()


# --- the backlog path: a big reply to a slow TLS reader ------------------------------------

def test_big_multi_get_through_a_tls_proxy_is_byte_exact(server_cert: Credential,
                                                         trusting: ssl.SSLContext) -> None:
    values = {f"big:{n}".encode(): bytes([n % 251]) * (100_000 + n) for n in range(120)}
    with servers.backend() as first, servers.backend() as second, \
            servers.proxy([[first], [second]], *tls.server_flags(server_cert, "--tls"),
                          ready=tls.answers_version_over(trusting)) as proxy:
        writer = _client(proxy.port, trusting)
        for key, value in values.items():
            assert writer.set(key, value) is True
        writer.close()
        keys = [*values, b"big:missing", *list(values)[:10]]  # a miss, then repeats
        expected = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (key, len(values[key]), values[key])
                            for key in keys if key in values) + b"END\r\n"
        with tls.connect(proxy.port, trusting, timeout=30) as sock:
            # pipelined: a small get before and after, answered in order around the big one
            sock.sendall(b"get big:0\r\nget " + b" ".join(keys) + b"\r\nget big:1\r\n")
            received = bytearray()
            tail = (b"VALUE big:1 0 100001\r\n" + values[b"big:1"] + b"\r\nEND\r\n")
            head = (b"VALUE big:0 0 100000\r\n" + values[b"big:0"] + b"\r\nEND\r\n")
            deadline = time.monotonic() + 60
            while len(received) < len(head) + len(expected) + len(tail):
                assert time.monotonic() < deadline
                data = sock.recv(16384)
                assert data, "the proxy closed the connection"
                received += data
                if len(received) < 1_000_000:
                    time.sleep(0.002)  # a slow reader first: the proxy's sends back up
        assert bytes(received) == head + expected + tail
