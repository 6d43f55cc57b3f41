"""The client ports a server opens: `--listen`, and with `--tls-listen` a TLS port beside it.

Both servers (backend, proxy) open them the same way, so it lives here once: the TLS port is
bound only after the main one (and the main one is closed if it cannot be), and a plain
listener other machines can reach is said out loud at start.
"""

from __future__ import annotations

import logging
import socket
from typing import Protocol

from memring.netio import nonblocking
from memring.netio.settings import reachable_from_other_machines, split_address

log = logging.getLogger("memring.net")


class ClientListening(Protocol):
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def tls(self) -> bool: ...
    @property
    def tls_listen(self) -> str: ...


def open_client_listeners(settings: ClientListening, backlog: int = 1024,
                          reuse_port: bool = False) -> tuple[socket.socket, socket.socket | None]:
    """The main listener and the --tls-listen one (None without it)."""
    listener = nonblocking.listen(settings.host, settings.port, backlog, reuse_port)
    tls_listener = None
    if settings.tls_listen:
        try:
            tls_host, tls_port = split_address(settings.tls_listen, listen=True)
            tls_listener = nonblocking.listen(tls_host, tls_port, backlog, reuse_port)
        except BaseException:
            nonblocking.close(listener)
            raise
    if not settings.tls and reachable_from_other_machines(settings.host):
        log.warning("clients on %s:%d are served without TLS: anyone who can reach the port "
                    "reads and writes the cache (--tls, or --tls-listen for a TLS port beside "
                    "it)", settings.host, listener.getsockname()[1])
    return listener, tls_listener
