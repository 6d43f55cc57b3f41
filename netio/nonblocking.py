"""Non-blocking sockets driven by trio's low-level readiness waits.

Why not `trio.socket`: each of its recv/send calls yields to the scheduler even when the
operation succeeds at once, so a request-reply exchange costs three scheduler round
trips. Here a send tries the syscall first and waits (`trio.lowlevel.wait_writable`)
only when the kernel says EAGAIN, and a recv waits for readability (one round trip, and
the only one of a closed-loop request).
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket

import trio

READ_SIZE = 65536  # one recv at most: a connection's input is read in pieces of this size
# Errors that mean the peer went away: routine, not worth a log line.
PEER_GONE = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT})


class PortInUse(Exception):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is already in use")

    @staticmethod
    def alone_in(exc: BaseException) -> PortInUse | None:
        """The bind error alone inside `exc`, however many nurseries' groups wrap it (the
        servers bind inside nurseries; their CLIs print it as one line)."""
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return exc if isinstance(exc, PortInUse) else None


def raise_fd_limit(wanted: int) -> int:
    """Lift this process's soft limit on open files towards `wanted` (capped by the hard
    limit), as memcached does for -c, so max_connections is not cut short by ulimit -n."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def listen(host: str, port: int, backlog: int = 1024, reuse_port: bool = False
           ) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        # Several worker processes share the port; the kernel spreads the connections.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(host, port) from None
        raise
    listener.listen(backlog)
    listener.setblocking(False)
    return listener


async def accept(listener: socket.socket) -> socket.socket:
    while True:
        try:
            conn, _address = listener.accept()
        except BlockingIOError:
            await trio.lowlevel.wait_readable(listener)
            continue
        conn.setblocking(False)
        with contextlib.suppress(OSError):  # as trio's SocketStream: a reset peer may refuse it
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn


async def recv(sock: socket.socket, size: int) -> bytes:
    """Wait for readability, then read: after a reply the next request is rarely there
    yet, so trying first would mostly cost a failed syscall. Waiting first also makes
    every read a scheduling point, which keeps a pipelining client from starving others."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return sock.recv(size)
        except BlockingIOError:
            continue


async def connect(host: str, port: int) -> socket.socket:
    """A connected non-blocking TCP socket with TCP_NODELAY (callers bound the time)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        try:
            sock.connect((host, port))
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, os.strerror(error)) from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        close(sock)
        raise
    return sock


def send_now(sock: socket.socket, data: bytes | memoryview) -> int:
    """Send what the kernel takes right now without waiting; returns the bytes sent."""
    try:
        return sock.send(data)
    except BlockingIOError:
        return 0


def send_last(sock: socket.socket, data: bytes) -> None:
    """Send a last reply if the kernel takes it now, then read (and drop) what the peer sent
    already, before the caller closes: closing with unread input sends a reset instead of a
    FIN, and a reset can destroy the reply before the peer reads it. Errors are ignored: the
    peer may be gone."""
    with contextlib.suppress(OSError):  # BlockingIOError included: nothing to read
        sock.send(data)
        sock.recv(READ_SIZE)


async def send_all(sock: socket.socket, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


def close(sock: socket.socket) -> None:
    trio.lowlevel.notify_closing(sock)
    sock.close()
