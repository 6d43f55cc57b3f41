"""Which TCP connections a process holds, read from /proc (not from its own stats).

A process's socket inodes come from /proc/<pid>/fd; their endpoints and states from
/proc/net/tcp, whose addresses are hex (the port big-endian, the IPv4 address in host
order). The lazy-pool tests count a proxy's backend connections this way, so a proxy that
misreports its own `connections` stat cannot pass them.
"""

from __future__ import annotations

import os
from pathlib import Path

ESTABLISHED = "01"


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:  # closed while listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def established_peer_ports(pid: int) -> list[int]:
    """The remote port of each established TCP (IPv4) connection of process `pid`."""
    inodes = _socket_inodes(pid)
    ports = []
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    for line in lines:
        fields = line.split()
        remote, state, inode = fields[2], fields[3], fields[9]
        if state == ESTABLISHED and inode in inodes:
            ports.append(int(remote.rsplit(":", 1)[1], 16))
    return ports
