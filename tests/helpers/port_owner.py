"""Who listens on a loopback port: a test's server, or somebody else's (from /proc).

Why: a port free when a test picked it can be taken before its server binds it (another
process on the machine picked the same one: a `memring up` the suite started, etcd, a bench),
and then `version` is answered by that other server while the test's own exits with "address
in use" a moment later. Asking /proc which process holds the listening socket tells the two
apart at once instead of testing the wrong server.
"""

from __future__ import annotations

import os
from pathlib import Path

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column


def listening_inodes(port: int) -> set[str]:
    """The socket inodes listening on `port` (any local address, IPv4 and IPv6)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == _LISTEN and \
                    int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


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
    wanted = {f"socket:[{inode}]" for inode in inodes}
    if _holds(root, wanted):  # the usual answer, without walking /proc
        return False
    return not any(_holds(pid, wanted) for pid in process_tree(root) - {root})


def _holds(pid: int, sockets: set[str]) -> bool:
    try:
        descriptors = list(os.scandir(f"/proc/{pid}/fd"))
    except OSError:
        return False
    for fd in descriptors:
        try:
            if os.readlink(fd.path) in sockets:
                return True
        except OSError:
            continue
    return False
