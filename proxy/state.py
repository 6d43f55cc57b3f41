"""What every client session reads: the proxy's settings, current router and stats.

Its own module so that the server (which owns and swaps it), the sessions and slots (which
read it) and the metrics collector import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

from memring.netio.connection import Connection
from memring.netio.tls import ServerTls
from memring.proxy.buffer_budget import BufferBudget
from memring.proxy.leader_claims import LeaderClaims
from memring.proxy.pool import NodePool
from memring.proxy.router import ShardRouter
from memring.proxy.settings import ProxySettings
from memring.proxy.stats import ProxyStats


@dataclass
class ProxyState:
    """What every session reads: settings, the current router (swapped whole), stats, and
    the proxy-wide budget of buffered client data."""

    settings: ProxySettings
    router: ShardRouter
    stats: ProxyStats
    buffers: BufferBudget
    pools_by_address: dict[str, NodePool] = field(default_factory=dict)
    # set (and replaced) on every topology swap: writes waiting for a leader wake on it
    topology_changed: trio.Event = field(default_factory=trio.Event)
    # cluster mode: nodes that say they lead before the view names them (waiting writes only)
    claims: LeaderClaims = field(default_factory=LeaderClaims)
    # the client listeners' TLS: refresh_certs reloads it, `stats` shows its counters
    tls: ServerTls | None = None
    # the client connections, for `stats conns`
    clients: dict[Connection, None] = field(default_factory=dict)

    def pools(self) -> list[NodePool]:
        return list(self.pools_by_address.values())
