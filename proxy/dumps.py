"""Dumps through the proxy: `stats cachedump` and `lru_crawler metadump`, shard by shard.

Theory of operation: a dump lists the items a server holds, so the cluster's dump is every
shard leader's, one after the other, under one END. `ShardDump` asks each leader in turn,
once the client's earlier requests are answered (the reply stream's drainer reaches it in
order) and the previous leader's lines have left for the client (the drainer awaits
`next_piece`), so the proxy holds one leader's dump at a time, never the cluster's. Each
leader is asked on a connection of its own (`NodePool.ask_alone`): memcached drops what is
pipelined behind a metadump. The first refusal (`CLIENT_ERROR Illegal slab id`, `BADCLASS
invalid class id`, a backend without the command: `ERROR`) is the answer, as each leader
would say the same; a leader that fails (down, timed out) or refuses after lines have been
sent is left out. A leader's dump must come within the request timeout: this is for looking
into a cache, not for exporting a big one.
"""

from __future__ import annotations

from memring.protocol.responses import End, Line
from memring.proxy.pool import NodePool
from memring.proxy.router import ShardRouter
from memring.proxy.slots import NEEDS_TASK, Poll, Slot, StreamedReply, render

# lru_crawler subcommands that set or start the crawler of one server: a proxy has none,
# and fanned out they would change every backend at once (as cache_memlimit would)
CRAWLER_SETTINGS = frozenset({b"crawl", b"tocrawl", b"sleep", b"enable", b"disable"})
CRAWLER_REFUSED = b"SERVER_ERROR lru_crawler is set on each backend, not through the proxy\r\n"


class ShardDump(Slot, StreamedReply):
    """One dump request to each shard's leader in turn; their lines, then one END.
    `line_end`: memcached ends cachedump's lines with CRLF, metadump's with LF alone."""

    __slots__ = ("_done", "_sent", "leaders", "line", "line_end")

    def __init__(self, router: ShardRouter, line: bytes, line_end: bytes) -> None:
        self.leaders: list[NodePool] = [shard.nodes[0] for shard in router.shards
                                        if shard.nodes and shard.has_leader]
        self.line = line
        self.line_end = line_end
        self._sent = False  # a leader's lines have gone out: a refusal no longer answers
        self._done = not self.leaders

    def poll(self) -> Poll:
        return b"END\r\n" if self._done else NEEDS_TASK

    async def reply(self) -> bytes | ShardDump:
        return b"END\r\n" if self._done else self

    @property
    def done(self) -> bool:
        return self._done

    async def next_piece(self) -> bytes:
        """The next leader's lines (b"" if it is left out); END after the last."""
        leader, self.leaders = self.leaders[0], self.leaders[1:]
        pending = await leader.ask_alone(self.line, True)
        events = pending.events
        dumped = pending.error is None and bool(events) and type(events[-1]) is End
        if pending.error is None and not dumped and not self._sent:
            self._done = True
            return render(pending)  # the leaders' refusal
        out = b""
        if dumped:
            end = self.line_end
            out = b"".join([event.line + end if type(event) is Line else event.encode()
                            for event in events[:-1]])
            self._sent = True
        if not self.leaders:
            self._done = True
            out += b"END\r\n"
        return out
