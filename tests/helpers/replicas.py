"""What a backend holds, as `mg <key> v f c t` shows it (value, flags, CAS, TTL), and a
bounded wait until a follower holds what its leader holds."""

from __future__ import annotations

import socket
import time
from collections.abc import Sequence

from tests.helpers import servers, wire

Item = tuple[bytes, int, int, int]  # value, flags, cas, ttl (-1: none)


def pipeline(sock: socket.socket, commands: Sequence[bytes]) -> bytes:
    """Send commands then `mn`; the replies up to (without) the MN."""
    sock.sendall(b"".join(commands) + b"mn\r\n")
    return wire.read_until(sock, b"MN\r\n", timeout=10)[:-4]


def dump(node: servers.RunningServer, keys: Sequence[bytes]) -> dict[bytes, Item | None]:
    """`mg <key> v f c t` for every key."""
    out: dict[bytes, Item | None] = {}
    with wire.connect(node) as sock:
        for start in range(0, len(keys), 200):
            batch = keys[start:start + 200]
            reply = pipeline(sock, [b"mg %s v f c t\r\n" % k for k in batch])
            offset = 0
            for key in batch:
                end = reply.index(b"\r\n", offset)
                line = reply[offset:end].split()
                offset = end + 2
                if line[0] == b"EN":
                    out[key] = None
                    continue
                assert line[0] == b"VA", line
                size = int(line[1])
                value = reply[offset:offset + size]
                offset += size + 2
                flags = {t[:1]: int(t[1:]) for t in line[2:] if t[:1] in (b"f", b"c", b"t")}
                out[key] = (value, flags[b"f"], flags[b"c"], flags[b"t"])
    return out


def assert_holds_nothing(node: servers.RunningServer, keys: Sequence[bytes]) -> None:
    """A member no leader's stream reached: its store is empty (`stats` curr_items) and it
    answers no read of `keys` (a new process refuses reads until it holds a leader's stream:
    ClusterMember.read_refusal), so `dump` cannot look inside it."""
    stats = wire.stats(node)
    assert stats["curr_items"] == "0", stats["curr_items"]
    assert stats["memring_role"] == "syncing", stats["memring_role"]
    with wire.connect(node) as sock:
        reply = pipeline(sock, [b"mg %s v\r\n" % key for key in keys])
    assert reply.split(b"\r\n")[:-1] == [b"SERVER_ERROR not the leader of shard "
                                          + stats["memring_shard"].encode()] * len(keys), reply


def differences(leader: dict[bytes, Item | None], follower: dict[bytes, Item | None]
                ) -> list[bytes]:
    bad = []
    for key, mine in leader.items():
        theirs = follower.get(key)
        if mine is None or theirs is None:
            if mine != theirs:
                bad.append(key)
        elif mine[:3] != theirs[:3] or abs(mine[3] - theirs[3]) > 1:
            bad.append(key)
    return bad


def wait_identical(leader: servers.RunningServer, follower: servers.RunningServer,
                   keys: Sequence[bytes], timeout: float) -> float:
    """Until the follower shows every key as the leader does; returns the seconds waited."""
    started = time.monotonic()
    expected = dump(leader, keys)
    bad: list[bytes] = []
    while time.monotonic() - started < timeout:
        bad = differences(expected, dump(follower, keys))
        if not bad:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"{len(bad)} keys differ after {timeout}s, e.g. {bad[:5]}")
