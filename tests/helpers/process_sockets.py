"""Which TCP sockets a process holds, read from /proc (not from its own stats).

A process's socket inodes come from /proc/<pid>/fd; their endpoints and states from
/proc/net/tcp, whose addresses are hex (the port big-endian, the IPv4 address in host
order). The lazy-pool tests count a proxy's backend connections this way, so a proxy that
misreports its own `connections` stat cannot pass them. The server helpers ask who listens
on a port: a port free when a test picked it can be taken before its server binds it
(another process on the machine picked the same one), and then `version` is answered by that
other server while the test's own exits with "address in use" a moment later.
"""

from __future__ import annotations

import os
from pathlib import Path

ESTABLISHED = "01"
LISTEN = "0A"


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
    return [_port(fields[2]) for fields in _tcp_rows("/proc/net/tcp")
            if fields[3] == ESTABLISHED and fields[9] in inodes]


def _tcp_rows(*tables: str) -> list[list[str]]:
    """The rows of /proc/net/tcp-style tables, split into fields (a missing table: none)."""
    rows: list[list[str]] = []
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        rows.extend(line.split() for line in lines)
    return rows


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on `port` (any local address, IPv4 and IPv6)."""
    return {fields[9] for fields in _tcp_rows("/proc/net/tcp", "/proc/net/tcp6")
            if fields[3] == LISTEN and _port(fields[1]) == port}


def process_tree(root: int) -> set[int]:
    """`root` and every process descended from it (a server may listen from a forked child)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # the command name, in parentheses, may hold spaces: fields start after the last ')'
        parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return tree


def held_by_other_process(port: int, root: int) -> bool:
    """True when a process outside `root`'s tree holds the port's listening socket; False when
    the tree holds it, or when /proc shows no listener to judge by."""
    inodes = listening_inodes(port)
    if not inodes:
        return False
    if _holds(root, inodes):  # the usual answer, without walking /proc
        return False
    return not any(_holds(pid, inodes) for pid in process_tree(root) - {root})


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        return not inodes.isdisjoint(_socket_inodes(pid))
    except OSError:  # gone meanwhile
        return False
