"""Writes a backend refuses *before* applying them: the contract between backend and proxy.

A cluster backend that does not lead its shard, or whose lease ran out on its own clock,
answers a write with a memcached-shaped `SERVER_ERROR <reason>` and leaves the store alone.
Because nothing was applied, the proxy may send the same write to the shard's next leader
without applying it twice. Both sides use the reasons named here, so the text the backend
writes and the text the proxy recognises cannot drift apart.
"""

from __future__ import annotations

NOT_LEADER = b"not the leader of shard"  # followed by " <shard id>"
LEASE_EXPIRED = b"lease expired: not accepting writes"
TOO_FEW_IN_SYNC = b"fewer in-sync replicas than min_insync: not accepting writes"


def refusal_line(reason: bytes) -> bytes:
    """The reply line a backend sends for a refused write."""
    return b"SERVER_ERROR " + reason + b"\r\n"


def refusal_reason(line: bytes) -> bytes:
    """The reason of a refusal line (the body of the binary protocol's refusal)."""
    return line.removeprefix(b"SERVER_ERROR ").removesuffix(b"\r\n")


def not_leader_line(shard: str) -> bytes:
    return refusal_line(NOT_LEADER + b" " + shard.encode())


def retry_at_leader(server_error: bytes) -> bool:
    """Whether the text of a SERVER_ERROR reply refuses a write that the next leader may
    take (not applied; a new leader or a renewed lease can accept it). A min_insync
    refusal is not retried: it lasts until a follower catches up."""
    return server_error == LEASE_EXPIRED or server_error.startswith(NOT_LEADER + b" ")
