"""A follower's watch on its leader's process that costs nothing while the leader lives.

Theory of operation. The follower keeps one connection open to the leader's client port (over
TLS when the members' client ports serve TLS) and waits on it. The leader never sends on it
unasked, so the wait ends only when the connection does: the kernel closes it (FIN, or RST)
the moment the leader's process dies, kill -9 included. The end alone is not taken as death
(a restart, an idle timeout or a full connection table close connections too): as the earlier
per-interval probe did, death is two connects to the port actively refused (nobody listens
there). Otherwise the follower connects again after `retry_interval` (short: the port of a
process being killed may accept for a moment after its connections closed; seen as 100 ms
more failover in 1 trial of 3 with a 0.1 s retry), backing off to RETRY_MAX
while connections fail or end at once (else a TLS handshake the leader refuses would be
retried every interval for good); death is then seen on the next try. A timeout is
never taken as death: a frozen leader keeps the connection open (and a connect to it hangs),
and is left to its own lease expiry; epochs keep a wrong guess safe.

This replaced a connect every 0.1 s per follower (measured at 24 x 2 backends: 58 connects in
6 s on an idle follower, and as many accepts on its leader; docs/scaling.md).
"""

from __future__ import annotations

import errno
import ssl

import trio

CONNECT_TIMEOUT = 0.2  # one connect (a timeout is never taken as death)
RETRY_MAX = 1.0  # reconnects that fail or end at once back off to this (a TLS handshake the
# leader refuses, a full connection table): never a handshake every retry_interval for good
READ_LIMIT = 4096  # what one read of the kept connection takes (the leader sends nothing)


async def until_gone(address: str, retry_interval: float,
                     tls: ssl.SSLContext | None = None) -> None:
    """Return once the process serving `address` (HOST:PORT) is gone: its port refuses two
    connects in a row; cancel to stop watching."""
    delay = retry_interval
    while True:
        opened = trio.current_time()
        stream = await _connect(address, tls)
        if stream is not None:
            try:
                await _until_closed(stream)
            finally:
                await trio.aclose_forcefully(stream)
        if await refuses(address) and await refuses(address):
            return
        kept = stream is not None and trio.current_time() - opened >= RETRY_MAX
        delay = retry_interval if kept else min(max(delay * 2, retry_interval), RETRY_MAX)
        await trio.sleep(delay)


async def _connect(address: str, tls: ssl.SSLContext | None) -> trio.abc.Stream | None:
    """A kept connection to `address`, or None if it could not be made in time."""
    host, port = _split(address)
    tcp: trio.SocketStream | None = None
    kept: trio.abc.Stream | None = None
    try:
        with trio.move_on_after(CONNECT_TIMEOUT):
            tcp = await trio.open_tcp_stream(host, port)
            if tls is None:
                kept = tcp
            else:
                secured = trio.SSLStream(tcp, tls, server_hostname=host)
                await secured.do_handshake()
                kept = secured
    except (OSError, trio.BrokenResourceError):
        pass
    finally:
        if kept is None and tcp is not None:
            tcp.socket.close()
    return kept


async def _until_closed(stream: trio.abc.Stream) -> None:
    """Wait until the peer ends the connection (EOF, reset, or a TLS error)."""
    try:
        while await stream.receive_some(READ_LIMIT):
            pass  # the leader sends nothing unasked; anything it does send is dropped
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


async def refuses(address: str) -> bool:
    """True only if a connection to `address` is actively refused (nobody listens there)."""
    host, port = _split(address)
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family, trio.socket.SOCK_STREAM)
    try:
        with trio.move_on_after(CONNECT_TIMEOUT):
            await sock.connect((host, port))
        return False
    except OSError as exc:
        return exc.errno == errno.ECONNREFUSED
    finally:
        sock.close()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
