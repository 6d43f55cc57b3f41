"""`stats` of live nodes and proxies over their memcached port, for `memring status`.

Why: etcd knows who leads and who is in sync, but only the nodes know how far each follower
lags, how many requests they served and their hit ratio. The status command asks every live
address concurrently, each with a short deadline, so one frozen node costs a fraction of a
second and shows as "no answer" instead of hanging the view.
"""

from __future__ import annotations

import trio

from memring.protocol.ascii_auth import Login, auth_request
from memring.protocol.request_parser import NEED_DATA
from memring.protocol.response_parser import ResponseError, ResponseParser, Unauthenticated
from memring.protocol.responses import End, Response, Stat, Status, VersionReply

STATS_TIMEOUT = 0.5
MAX_REPLY = 1 << 20


async def fetch_stats(address: str, timeout: float = STATS_TIMEOUT,
                      login: Login | None = None) -> dict[str, str] | None:
    """The `stats` of the server at HOST:PORT, or None if it does not answer in time (or
    wants memcached's ASCII authentication and `login` is missing or refused)."""
    host, _, port = address.rpartition(":")
    stats: dict[str, str] = {}
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except (OSError, ValueError):
            return None
        async with stream:
            replies = _Replies(stream)
            try:
                if login is not None and not await replies.authenticate(login):
                    return None
                await stream.send_all(b"stats\r\n")
                while True:
                    event = await replies.next()
                    if isinstance(event, Stat):
                        stats[event.name.decode()] = event.value.decode()
                    elif isinstance(event, End):
                        return stats
                    else:
                        return None
            except (OSError, trio.BrokenResourceError, ResponseError):
                return None
    return None


class _Replies:
    """One conversation's reply events, MAX_REPLY bytes at most."""

    def __init__(self, stream: trio.SocketStream) -> None:
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
            self.parser.receive_data(data)
        return event

    async def authenticate(self, login: Login) -> bool:
        """`version` first: a node without an auth file would store the auth `set` as an
        item (the password readable by anyone); one with it refuses until authenticated."""
        await self.stream.send_all(b"version\r\n")
        try:
            return type(await self.next()) is VersionReply
        except Unauthenticated:
            pass
        await self.stream.send_all(auth_request(*login))
        return await self.next() == Status(b"STORED")


async def fetch_all(addresses: list[str], timeout: float = STATS_TIMEOUT,
                    login: Login | None = None) -> dict[str, dict[str, str] | None]:
    """`fetch_stats` of every address at once."""
    results: dict[str, dict[str, str] | None] = {}

    async def one(address: str) -> None:
        results[address] = await fetch_stats(address, timeout, login)

    async with trio.open_nursery() as nursery:
        for address in dict.fromkeys(addresses):
            nursery.start_soon(one, address)
    return results
