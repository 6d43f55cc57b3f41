"""What every program's settings share: the bad-usage error and HOST:PORT parsing.

`SettingsError` means bad usage or configuration: each CLI prints its message, which names
the problem, and exits with status 2. An address is `HOST:PORT` (an IPv6 host in
brackets); only an address to *listen* on may leave the host empty, meaning every
interface (`:11211`), as memcached's `-l` allows; an address to connect to must name one.
"""

from __future__ import annotations

ANY_HOST = "0.0.0.0"


class SettingsError(Exception):
    """Bad usage or configuration; the message names the problem (exit code 2)."""


class Listening:
    """Host and port of a server's settings, read from its `listen` address."""

    listen: str

    @property
    def host(self) -> str:
        return split_address(self.listen, listen=True)[0]

    @property
    def port(self) -> int:
        return split_address(self.listen, listen=True)[1]


def split_address(address: str, *, listen: bool = False) -> tuple[str, int]:
    """(host, port) of `address`; `listen` lets an empty host mean every interface."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if listen and sep and not host:
        host = ANY_HOST
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        example = ":11211 or 127.0.0.1:11211" if listen else "127.0.0.1:11211"
        raise SettingsError(f"bad address {address!r}: expected HOST:PORT, e.g. {example}")
    return host, int(port)
