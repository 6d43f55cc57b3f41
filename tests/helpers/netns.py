"""Network namespaces joined to the root namespace by veth pairs, for partition tests.

Theory of operation: `namespace()` creates `mr<suffix>` (iproute2, as root) and yields a
`Namespace`; `add_link()` makes a veth pair `<ns>l<n>` (root side) / `<ns>p<n>` (inside),
addresses it as a private /30 in 10.0.0.0/8 that no interface here uses (root side .1,
namespace side .2), and brings both ends up. A program runs inside with `exec_argv()`
(`ip netns exec NS ...`: the same pid, so it can be signalled and reaped as usual). A
partition is `set_link(link, up=False)`: the namespace's end goes down, so the root side
loses its carrier but keeps its route (marked linkdown): packets to the namespace are dropped
and connections hang, as in a real partition, while the root side's address stays reachable
from the root namespace. (Downing the root end instead would remove that route, and packets
would follow the default route to whatever answers there; on a sandbox whose gateway accepts
or refuses every connection that is no partition at all.) `answer_for(link)` makes the root
namespace answer for the namespace's address, so that connections to it are refused, as a
REJECT rule or a host that took the address over would do.

On exit every process still inside the namespace is SIGKILLed (they are the test's own: the
namespace is new), the veth pairs and the namespace are deleted, also after a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

COMMAND_TIMEOUT = 10.0


class NetnsError(RuntimeError):
    """An `ip` command failed; the message has its output."""


def unavailable() -> str | None:
    """Why namespaces cannot be made here (a skip reason), or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the chaos tests as root"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is missing (apt-get install iproute2)"
    return None


def ip(*args: str, namespace: str | None = None) -> str:
    """Run `ip ARGS` (inside `namespace` if given); its stdout, or NetnsError."""
    argv = ["ip", "netns", "exec", namespace, "ip", *args] if namespace else ["ip", *args]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise NetnsError(f"{' '.join(argv)}: {exc}") from exc
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _networks_in_use() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network of an address or a route in the root namespace."""
    found = []
    for line in ip("-4", "-o", "addr", "show").splitlines() + ip("-4", "route").splitlines():
        for word in line.split():
            with contextlib.suppress(ValueError):
                if "/" in word or word[:1].isdigit():
                    found.append(ipaddress.IPv4Network(word, strict=False))
    return found


def _free_subnet(taken: Sequence[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """A random /30 in 10.64.0.0/10 that overlaps nothing in `taken`."""
    pool = ipaddress.IPv4Network("10.64.0.0/10")
    for _ in range(1000):
        offset = random.randrange(pool.num_addresses // 4) * 4
        subnet = ipaddress.IPv4Network((int(pool.network_address) + offset, 30))
        if not any(subnet.overlaps(net) for net in taken):
            return subnet
    raise NetnsError("no free /30 in 10.64.0.0/10")


@dataclass(frozen=True)
class Link:
    """One veth pair: `root_device` in the root namespace, `ns_device` inside."""

    root_device: str
    ns_device: str
    root_address: str
    ns_address: str


@dataclass
class Namespace:
    name: str
    links: list[Link] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # addresses held on the root's lo

    def add_link(self) -> Link:
        """A new veth pair into the namespace with a fresh private /30; both ends up."""
        number = len(self.links)
        root_device, ns_device = f"{self.name}l{number}", f"{self.name}p{number}"
        taken = _networks_in_use()
        subnet = _free_subnet(taken)
        root_address, ns_address = (str(a) for a in list(subnet.hosts())[:2])
        ip("link", "add", root_device, "type", "veth", "peer", "name", ns_device)
        link = Link(root_device, ns_device, root_address, ns_address)
        self.links.append(link)
        ip("link", "set", ns_device, "netns", self.name)
        ip("addr", "add", f"{root_address}/30", "dev", root_device)
        ip("addr", "add", f"{ns_address}/30", "dev", ns_device, namespace=self.name)
        ip("link", "set", root_device, "up")
        ip("link", "set", ns_device, "up", namespace=self.name)
        return link

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (ip netns exec execs it: same pid)."""
        return ["ip", "netns", "exec", self.name, *argv]

    def set_link(self, link: Link, up: bool) -> None:
        """Plug (up) or unplug (down) the link at its namespace end."""
        ip("link", "set", link.ns_device, "up" if up else "down", namespace=self.name)

    def answer_for(self, link: Link, answer: bool) -> None:
        """Make the root namespace hold (or drop) the namespace's address on `link`: while it
        does, connections from the root namespace to that address are refused."""
        ip("addr", "add" if answer else "del", f"{link.ns_address}/32", "dev", "lo")
        self.answered = [a for a in self.answered if a != link.ns_address]
        if answer:
            self.answered.append(link.ns_address)

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in ip("netns", "pids", self.name).split()]
        except NetnsError:
            return []

    def remove(self) -> None:
        """Kill what still runs inside, delete the links and the namespace (errors collected)."""
        problems = []
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for address in self.answered:
            try:
                ip("addr", "del", f"{address}/32", "dev", "lo")
            except NetnsError as exc:
                problems.append(str(exc))
        deadline = time.monotonic() + 5
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        for link in self.links:
            try:
                ip("link", "del", link.root_device)  # deletes both ends
            except NetnsError as exc:
                if "Cannot find device" not in str(exc):
                    problems.append(str(exc))
        try:
            ip("netns", "del", self.name)
        except NetnsError as exc:
            problems.append(str(exc))
        if problems:
            raise NetnsError("; ".join(problems))


@contextlib.contextmanager
def namespace(prefix: str = "mr") -> Iterator[Namespace]:
    """A fresh network namespace (loopback up) for the block; always removed afterwards."""
    name = f"{prefix}{secrets.token_hex(3)}"
    ip("netns", "add", name)
    ns = Namespace(name)
    try:
        ip("link", "set", "lo", "up", namespace=name)
        yield ns
    finally:
        ns.remove()
