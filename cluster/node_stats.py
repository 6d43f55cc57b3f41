"""`stats` of live nodes and proxies over their memcached port, for `memring status`.

Why: etcd knows who leads and who is in sync, but only the nodes know how far each follower
lags, how many requests they served and their hit ratio. The status command asks every live
address concurrently, each with a short deadline, so one frozen node costs a fraction of a
second and shows as "no answer" instead of hanging the view.

Over TLS (`tls`, a client context: the cluster's CA, and a certificate of the cluster's for
backends that require one, `--tls-verify require`) the conversation runs in a trio.SSLStream:
this is off the hot path. `settings=True` also asks `stats settings` on the same connection
(a backend's; a proxy answers it ERROR), its lines kept under `settings:NAME`, since some of
its names (`evictions`) are also `stats` names. `plain_fallback` asks again without TLS when
the TLS conversation failed: `memring status` reports which one a node serves (`TRANSPORT`).
"""

from __future__ import annotations

import ssl

import trio

from memring.protocol.ascii_auth import Login, auth_request
from memring.protocol.request_parser import NEED_DATA
from memring.protocol.response_parser import ResponseError, ResponseParser, Unauthenticated
from memring.protocol.responses import End, Response, Stat, Status, VersionReply

STATS_TIMEOUT = 0.5
MAX_REPLY = 1 << 20
TRANSPORT = "memring_status_transport"  # added to what fetch_stats returns: "tls" or "plain"
AUTHENTICATED = "memring_status_authenticated"  # "yes": the node refused us until we did


async def fetch_stats(address: str, timeout: float = STATS_TIMEOUT,
                      login: Login | None = None, tls: ssl.SSLContext | None = None,
                      *, settings: bool = False, plain_fallback: bool = False
                      ) -> dict[str, str] | None:
    """The `stats` of the server at HOST:PORT, or None if it does not answer in time (or
    wants memcached's ASCII authentication and `login` is missing or refused, or TLS and
    `tls` is missing or refused)."""
    stats = await _fetch(address, timeout, login, tls, settings)
    if stats is None and tls is not None and plain_fallback:
        stats = await _fetch(address, timeout, login, None, settings)
    return stats


async def _fetch(address: str, timeout: float, login: Login | None,
                 tls: ssl.SSLContext | None, settings: bool) -> dict[str, str] | None:
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    stats: dict[str, str] = {}
    with trio.move_on_after(timeout):
        try:
            tcp = await trio.open_tcp_stream(host, int(port))
        except (OSError, ValueError):
            return None
        stream: trio.abc.Stream = tcp
        if tls is not None:
            stream = trio.SSLStream(tcp, tls, server_hostname=host)
        async with stream:
            replies = _Replies(stream)
            try:
                if isinstance(stream, trio.SSLStream):
                    await stream.do_handshake()
                if login is not None:
                    answered = await replies.authenticate(login)
                    if answered is None:
                        return None
                    if answered:
                        stats[AUTHENTICATED] = "yes"
                for request, prefix in ((b"stats\r\n", ""),
                                        *([(b"stats settings\r\n", "settings:")]
                                          if settings else [])):
                    await stream.send_all(request)
                    while True:
                        event = await replies.next()
                        if isinstance(event, Stat):
                            stats[prefix + event.name.decode()] = event.value.decode()
                        elif isinstance(event, End):
                            break
                        else:
                            return None
                stats[TRANSPORT] = "plain" if tls is None else "tls"
                return stats
            except (OSError, trio.BrokenResourceError, ResponseError):
                return None
    return None


class _Replies:
    """One conversation's reply events, MAX_REPLY bytes at most."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = ResponseParser()
        self.received = 0

    async def next(self) -> Response | None:
        """The next reply event; None when the server closed or sent too much."""
        while (event := self.parser.next_event()) is NEED_DATA:
            data = await self.stream.receive_some(65536)
            self.received += len(data)
            if not data or self.received > MAX_REPLY:
                return None
            self.parser.receive_data(bytes(data))
        return event

    async def authenticate(self, login: Login) -> bool | None:
        """`version` first: a node without an auth file would store the auth `set` as an
        item (the password readable by anyone); one with it refuses until authenticated.
        False: no auth asked; True: authenticated; None: refused or no answer."""
        await self.stream.send_all(b"version\r\n")
        try:
            return False if type(await self.next()) is VersionReply else None
        except Unauthenticated:
            pass
        await self.stream.send_all(auth_request(*login))
        return True if await self.next() == Status(b"STORED") else None


async def fetch_all(addresses: list[str], timeout: float = STATS_TIMEOUT,
                    login: Login | None = None, tls: ssl.SSLContext | None = None, *,
                    settings_of: frozenset[str] = frozenset(), plain_fallback: bool = False
                    ) -> dict[str, dict[str, str] | None]:
    """`fetch_stats` of every address at once (with `stats settings` from `settings_of`)."""
    results: dict[str, dict[str, str] | None] = {}

    async def one(address: str) -> None:
        results[address] = await fetch_stats(address, timeout, login, tls,
                                             settings=address in settings_of,
                                             plain_fallback=plain_fallback)

    async with trio.open_nursery() as nursery:
        for address in dict.fromkeys(addresses):
            nursery.start_soon(one, address)
    return results
