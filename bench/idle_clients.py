"""RSS of a backend and a proxy under idle and half-sent clients, before and after they go.

Starts one memring backend (clients talk to it directly) and a proxy over a second backend,
both on free loopback ports, then for each of the two servers in turn:

1. `idle`: RSS with one `stats` connection;
2. `N idle clients`: --clients connections that connect and send nothing;
3. after the idle timeout (only with --idle-timeout): the same, once `curr_connections`
   has dropped back (the server closed them), or after they are closed by this script;
4. `M half-sent lines`: --half connections that each send a get line of --line-size bytes
   without its newline (an unfinished request the parser must hold);
5. `after close`: those connections closed by this script, 1 s later.

    .venv/bin/python bench/idle_clients.py                       # no idle timeout
    .venv/bin/python bench/idle_clients.py --idle-timeout 2      # with one
    .venv/bin/python bench/idle_clients.py --extra=--some-flag   # more server flags

RSS is VmRSS from /proc; `stats` gives curr_connections (the stats connection counts).
Every wait has a deadline; servers are stopped at the end, also on error.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from processes import BenchError, ask_version, free_port, spawned

HOST = "127.0.0.1"
MiB = 1 << 20


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise BenchError(f"no VmRSS for process {pid}")


def curr_connections(port: int) -> int:
    with socket.create_connection((HOST, port), timeout=5) as sock:
        sock.sendall(b"stats\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while not data.endswith(b"END\r\n"):
            if time.monotonic() > deadline:
                raise BenchError(f"no stats reply from port {port}")
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError(f"port {port} closed the stats connection")
            data += chunk
    for line in data.split(b"\r\n"):
        if line.startswith(b"STAT curr_connections "):
            return int(line.split()[2]) - 1  # without this stats connection
    raise BenchError("no curr_connections in stats")


def wait_connections(port: int, wanted: int, timeout: float, at_least: bool) -> int:
    """Poll until curr_connections (this probe excluded) reaches `wanted` from below
    (`at_least`) or above; the last figure either way."""
    deadline = time.monotonic() + timeout
    while True:
        curr = curr_connections(port)
        if (curr >= wanted) if at_least else (curr <= wanted):
            return curr
        if time.monotonic() > deadline:
            return curr
        time.sleep(0.1)


def open_idle(port: int, count: int) -> list[socket.socket]:
    conns = []
    for _ in range(count):
        conns.append(socket.create_connection((HOST, port), timeout=5))
    return conns


def open_half_sent(port: int, count: int, size: int) -> list[socket.socket]:
    """`count` connections, each with a get line of `size` bytes and no newline."""
    line = b"get " + b"k" * 200 + b" "
    line = (line * (size // len(line) + 1))[:size]
    conns = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port), timeout=30)
        sock.sendall(line)
        conns.append(sock)
    return conns


def close_all(conns: list[socket.socket]) -> None:
    for sock in conns:
        sock.close()
    conns.clear()


def measure(name: str, pid: int, port: int, args: argparse.Namespace) -> list[tuple[str, float]]:
    rows = [("idle", rss_mb(pid))]
    conns = open_idle(port, args.clients)
    try:
        curr = wait_connections(port, args.clients, 20, at_least=True)
        rows.append((f"{args.clients} idle clients ({curr} open)", rss_mb(pid)))
        if args.idle_timeout:
            curr = wait_connections(port, 0, args.idle_timeout * 3 + 10, at_least=False)
            time.sleep(1)
            rows.append((f"idle timeout fired ({curr} open)", rss_mb(pid)))
    finally:
        close_all(conns)
    wait_connections(port, 0, 20, at_least=False)
    time.sleep(1)
    rows.append(("idle clients closed", rss_mb(pid)))
    half = open_half_sent(port, args.half, args.line_size)
    try:
        curr = wait_connections(port, args.half, 20, at_least=True)
        time.sleep(0.5)  # the last lines read in
        rows.append((f"{args.half} half-sent {args.line_size / MiB:.2f} MiB lines "
                     f"({curr} open)", rss_mb(pid)))
    finally:
        close_all(half)
    wait_connections(port, 0, 20, at_least=False)
    time.sleep(1)
    rows.append(("half-sent closed", rss_mb(pid)))
    for label, mb in rows:
        print(f"{name:8} {label:48} {mb:8.1f} MB", flush=True)
    return rows


def run(args: argparse.Namespace) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = args.clients + args.half + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    python = sys.executable
    timeout = ["--idle-timeout", str(args.idle_timeout)] if args.idle_timeout else []
    extra = args.extra.split() if args.extra else []
    backend_port, upstream_port, proxy_port = free_port(), free_port(), free_port()
    backend_argv = [python, "-m", "memring.backend", "--max-connections",
                    str(args.clients + args.half + 16)]
    with contextlib.ExitStack() as stack:
        backend, _ = stack.enter_context(spawned(
            "backend", [*backend_argv, "--listen", f"{HOST}:{backend_port}", *timeout, *extra],
            backend_port, ask_version, "`version`"))
        stack.enter_context(spawned(
            "upstream", [*backend_argv, "--listen", f"{HOST}:{upstream_port}"],
            upstream_port, ask_version, "`version`"))
        config = stack.enter_context(topology(upstream_port))
        proxy, _ = stack.enter_context(spawned(
            "proxy", [python, "-m", "memring.proxy", "--listen", f"{HOST}:{proxy_port}",
                      "--config", str(config), *timeout, *extra],
            proxy_port, ask_version, "`version`"))
        print(f"idle timeout {args.idle_timeout or 'off'}; {args.clients} idle clients, "
              f"{args.half} half-sent lines of {args.line_size} bytes", flush=True)
        for name, server in (("backend", backend), ("proxy", proxy)):
            measure(name, server.process.pid, server.port, args)
    return 0


@contextlib.contextmanager
def topology(port: int) -> Iterator[Path]:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="idle-clients-") as f:
        f.write(f'[proxy]\n[[shards]]\nnodes = ["{HOST}:{port}"]\n')
        f.flush()
        yield Path(f.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000, help="idle clients (%(default)s)")
    parser.add_argument("--half", type=int, default=200,
                        help="connections with a half-sent line (%(default)s)")
    parser.add_argument("--line-size", type=int, default=MiB - 1024,
                        help="bytes of each half-sent get line (%(default)s: under --max-line)")
    parser.add_argument("--idle-timeout", type=float, default=0.0,
                        help="--idle-timeout for both servers (default: not passed)")
    parser.add_argument("--extra", default="", help="more flags for both servers")
    try:
        return run(parser.parse_args(argv))
    except BenchError as exc:
        print(f"idle_clients: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
