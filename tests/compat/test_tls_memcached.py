"""TLS against Debian's memcached 1.6.18 started with -Z and the same certificate files.

What memcached answers, pinned: `refresh_certs` says "Error TLS not enabled" without -Z (noreply
or not), "OK" with it (hidden by noreply), and "Error loading the certificate chain: PATH :
reason" for a chain that does not load (not hidden by noreply: memcached writes errors with
write_and_free). OpenSSL's reason differs in its words (memcached prints OpenSSL's error line,
memring the ssl module's), so only what comes before it is compared. `stats` gains
ssl_handshake_errors and time_since_server_cert_refresh after `threads` with -Z only; `stats
settings` prints the same ssl_* lines with or without -Z.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from memring.cluster.certificates import CertificateAuthority, Credential
from tests.helpers import servers, tls

pytestmark = pytest.mark.compat

TIMEOUT = 5.0
REFRESH = b"refresh_certs\r\nrefresh_certs noreply\r\nrefresh_certs a b\r\n"


@pytest.fixture
def files(private_ca: CertificateAuthority, tmp_path: Path) -> Credential:
    """The server's certificate in files of its own, which a test may break."""
    return tls.credential_copy(private_ca, "differential", tmp_path)


def _converse(sock: socket.socket | ssl.SSLSocket, request: bytes) -> bytes:
    """`request`, then `mn`: the reply up to the MN (both servers answer it in order)."""
    sock.sendall(request + b"mn\r\n")
    reply = b""
    deadline = time.monotonic() + TIMEOUT
    while not reply.endswith(b"MN\r\n"):
        assert time.monotonic() < deadline, reply
        data = sock.recv(65536)
        assert data, f"closed after {reply!r}"
        reply += data
    return reply[: -len(b"MN\r\n")]


@contextlib.contextmanager
def _both_plain() -> Iterator[tuple[servers.RunningServer, servers.RunningServer]]:
    with servers.memcached() as memcached, servers.backend() as backend:
        yield memcached, backend


@contextlib.contextmanager
def _both_tls(files: Credential, context: ssl.SSLContext, *, verify_request: bool = False
              ) -> Iterator[tuple[servers.RunningServer, servers.RunningServer]]:
    ready = tls.answers_version_over(context)
    options = [f"ssl_ca_cert={files.ca}", "ssl_verify_mode=1"] if verify_request else []
    flags = ["--tls-ca", str(files.ca), "--tls-verify", "request"] if verify_request else []
    with servers.memcached(*tls.memcached_flags(files, *options), ready=ready) as memcached, \
            servers.backend(*tls.server_flags(files, "--tls", *flags), ready=ready) as backend:
        yield memcached, backend


def test_refresh_certs_without_tls() -> None:
    with _both_plain() as (memcached, backend):
        replies = []
        for server in (memcached, backend):
            with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
                replies.append(_converse(sock, REFRESH))
    assert replies[0] == b"Error TLS not enabled\r\n" * 3
    assert replies[1] == replies[0]


def test_refresh_certs_with_tls_and_with_a_broken_chain(files: Credential) -> None:
    context = tls.client_context(files.ca)
    with _both_tls(files, context) as (memcached, backend):
        ok = []
        for server in (memcached, backend):
            with tls.connect(server.port, context) as sock:
                ok.append(_converse(sock, REFRESH))
        assert ok[0] == b"OK\r\nOK\r\n"  # the noreply one is silent
        assert ok[1] == ok[0]
        connections = [tls.connect(s.port, context) for s in (memcached, backend)]
        for broken in ("garbage\n", None):
            if broken is None:
                files.cert.unlink()
            else:
                files.cert.write_text(broken)
            answers = [_converse(sock, b"refresh_certs noreply\r\nversion\r\n")
                       for sock in connections]
            prefix = f"Error loading the certificate chain: {files.cert} : ".encode()
            for answer in answers:  # noreply does not hide it; the connection stays open
                assert answer.startswith(prefix), answers
                assert answer.endswith(b"\r\nVERSION 1.6.18\r\n"), answers
                assert answer.count(b"\r\n") == 2, answers
            if broken is None:  # both name the missing file as the system says it
                assert all(b"No such file or directory\r\n" in a for a in answers), answers
        for sock in connections:
            sock.close()


def test_tls_stats_lines(files: Credential) -> None:
    context = tls.client_context(files.ca)
    with _both_tls(files, context, verify_request=True) as (memcached, backend):
        settings = [_ssl_lines(tls.exchange(s.port, context, b"stats settings\r\n", b"END\r\n"))
                    for s in (memcached, backend)]
        assert len(settings[0]) == 11 and b"STAT ssl_verify_mode 1" in settings[0]
        assert settings[1] == settings[0]
        general = [tls.exchange(s.port, context, b"stats\r\n", b"END\r\n")
                   for s in (memcached, backend)]
        for reply in general:
            names = [line.split(b" ")[1] for line in reply.split(b"\r\n")
                     if line.startswith(b"STAT ")]
            at = names.index(b"ssl_handshake_errors")
            assert names[at + 1] == b"time_since_server_cert_refresh"
            assert names.index(b"threads") < at < names.index(b"bytes")
            assert b"STAT ssl_handshake_errors 0\r\n" in reply
    with _both_plain() as plain:
        settings = [_ssl_lines(_plain_exchange(s, b"stats settings\r\n")) for s in plain]
        assert settings[0] and settings[1] == settings[0]  # ssl_enabled no, (null), ...
        for server in plain:
            assert b"ssl_handshake_errors" not in _plain_exchange(server, b"stats\r\n")


def _ssl_lines(reply: bytes) -> list[bytes]:
    return [line for line in reply.split(b"\r\n") if line.startswith(b"STAT ssl_")]


def _plain_exchange(server: servers.RunningServer, request: bytes) -> bytes:
    with socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b"END\r\n"):
            data = sock.recv(65536)
            assert data
            reply += data
        return reply

