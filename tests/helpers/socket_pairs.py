"""A connected pair of non-blocking sockets, for unit tests of the I/O layer that need a real
kernel socket (readiness, partial sends, EOF) but no listener or port."""

from __future__ import annotations

import socket


def nonblocking_socketpair() -> tuple[socket.socket, socket.socket]:
    """Both ends non-blocking, as the servers' event loops hold them."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    return ours, peer
