#!/usr/bin/env python3
"""The container health check of memring's image: a memcached `version` on the client port.

Usage: memring-healthcheck [HOST:PORT]   (default 127.0.0.1:11211, or $MEMRING_HEALTH_ADDRESS)
With $MEMRING_HEALTH_TLS_CA the check speaks TLS (a server started with --tls), verifying the
server's certificate against that CA; $MEMRING_HEALTH_TLS_CERT and $MEMRING_HEALTH_TLS_KEY
are the client certificate for a server with --tls-verify require.
Exit 0 when the server answers `VERSION ...` (or, with --auth-file, refuses it as
memcached does before authentication) within the timeout, else 1 with the reason on
stderr (Docker keeps it in `docker inspect`). Backends and proxies both answer `version`
themselves, so one check serves both; it needs nothing but the standard library.
"""

from __future__ import annotations

import os
import socket
import ssl
import sys

TIMEOUT = 2.0  # seconds for connect + reply; Docker's own timeout is the outer bound


def tls_context() -> ssl.SSLContext | None:
    """From $MEMRING_HEALTH_TLS_*; None (plain TCP) without a CA."""
    ca = os.environ.get("MEMRING_HEALTH_TLS_CA")
    if not ca:
        return None
    context = ssl.create_default_context(cafile=ca)
    cert = os.environ.get("MEMRING_HEALTH_TLS_CERT")
    if cert:
        context.load_cert_chain(cert, os.environ.get("MEMRING_HEALTH_TLS_KEY") or None)
    return context


def check(address: str, timeout: float = TIMEOUT,
          context: ssl.SSLContext | None = None) -> str | None:
    """None when `address` answers `version` (over TLS with `context`), else what went
    wrong."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as plain:
            sock = plain if context is None else context.wrap_socket(plain,
                                                                     server_hostname=host)
            sock.sendall(b"version\r\n")
            reply = b""
            while b"\r\n" not in reply and len(reply) < 1024:
                chunk = sock.recv(1024)
                if not chunk:
                    break
                reply += chunk
    except (OSError, ValueError) as exc:
        return f"{address}: {exc}"
    # a server started with --auth-file refuses `version` until the client authenticated:
    # that refusal is memcached speaking, so it is up
    if not reply.startswith(b"VERSION ") and reply != b"CLIENT_ERROR unauthenticated\r\n":
        return f"{address}: unexpected reply {reply[:80]!r}"
    return None


def main(argv: list[str]) -> int:
    address = argv[1] if len(argv) > 1 else os.environ.get("MEMRING_HEALTH_ADDRESS",
                                                           "127.0.0.1:11211")
    try:
        context = tls_context()
    except (OSError, ssl.SSLError) as exc:
        print(f"memring-healthcheck: TLS files: {exc}", file=sys.stderr)
        return 1
    problem = check(address, context=context)
    if problem is not None:
        print(f"memring-healthcheck: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
