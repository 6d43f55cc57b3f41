"""`stats` of live nodes and proxies over their memcached port, for `memring status`.

Why: etcd knows who leads and who is in sync, but only the nodes know how far each follower
lags, how many requests they served and their hit ratio. The status command asks every live
address concurrently, each with a short deadline, so one frozen node costs a fraction of a
second and shows as "no answer" instead of hanging the view.
"""

from __future__ import annotations

import trio

from memring.protocol.request_parser import NEED_DATA
from memring.protocol.response_parser import ResponseError, ResponseParser
from memring.protocol.responses import End, Stat

STATS_TIMEOUT = 0.5
MAX_REPLY = 1 << 20


async def fetch_stats(address: str, timeout: float = STATS_TIMEOUT) -> dict[str, str] | None:
    """The `stats` of the server at HOST:PORT, or None if it does not answer in time."""
    host, _, port = address.rpartition(":")
    parser = ResponseParser()
    stats: dict[str, str] = {}
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        except (OSError, ValueError):
            return None
        async with stream:
            try:
                await stream.send_all(b"stats\r\n")
                received = 0
                while received < MAX_REPLY:
                    data = await stream.receive_some(65536)
                    if not data:
                        return None
                    received += len(data)
                    parser.receive_data(data)
                    while (event := parser.next_event()) is not NEED_DATA:
                        if isinstance(event, Stat):
                            stats[event.name.decode()] = event.value.decode()
                        elif isinstance(event, End):
                            return stats
                        else:
                            return None
            except (OSError, trio.BrokenResourceError, ResponseError):
                return None
    return None


async def fetch_all(addresses: list[str], timeout: float = STATS_TIMEOUT
                    ) -> dict[str, dict[str, str] | None]:
    """`fetch_stats` of every address at once."""
    results: dict[str, dict[str, str] | None] = {}

    async def one(address: str) -> None:
        results[address] = await fetch_stats(address, timeout)

    async with trio.open_nursery() as nursery:
        for address in dict.fromkeys(addresses):
            nursery.start_soon(one, address)
    return results
