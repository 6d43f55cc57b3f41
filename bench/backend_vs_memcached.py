"""Run the same load against `memcached -t 1` and the memring backend, and compare them.

Both servers are started here on free loopback ports, pinned to one core; the load
processes are pinned to another, so the two never compete for a CPU. Each round loads
every server in turn (alternating the order, to cancel drift), and the table shows the
median per server plus the backend/memcached ratios. Servers are always stopped at
the end, also on Ctrl-C or an error.

    .venv/bin/python bench/backend_vs_memcached.py                 # the issue's defaults
    .venv/bin/python bench/backend_vs_memcached.py --rounds 3 --json bench/results/run.json
    .venv/bin/python bench/backend_vs_memcached.py --servers memcached,memcached-2
    # old code vs new in one run: a backend from another checkout (e.g. a worktree of main)
    .venv/bin/python bench/backend_vs_memcached.py --servers memcached,backend-main,backend \
        --tree backend-main=/work/wt-base
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from loadgen import (
    LoadError,
    LoadResult,
    LoadSpec,
    ProgressLine,
    add_load_arguments,
    preload,
    run_load,
    spec_from_args,
)

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
KINDS = ("memcached", "backend")
T = TypeVar("T")
STARTUP_TIMEOUT = 20.0
METRICS = ("ops_per_s", "p50_us", "p99_us", "p999_us", "cpu_us_per_op")


class BenchError(RuntimeError):
    """The benchmark cannot run; the message says what went wrong and what to do."""


@dataclass
class Server:
    """A server process this script started, and what is needed to stop and report it."""

    name: str
    argv: list[str]
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    version: str = ""

    def cpu_seconds(self) -> float:
        """User+system CPU the server has used so far, from /proc (all its threads)."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def log_tail(self, limit: int = 2000) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:].strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def ask_version(port: int) -> str | None:
    """The server's `version` reply, or None while it does not answer yet."""
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"version\r\n")
            reply = s.recv(128)
    except OSError:
        return None
    if reply.startswith(b"VERSION ") and reply.endswith(b"\r\n"):
        return reply[8:-2].decode(errors="replace")
    return None


def server_argv(kind: str, port: int, cpu: int, memory: int, python: str,
                tree: Path | None = None) -> list[str]:
    """The command for one server, pinned to `cpu` with taskset (as in the issue); a backend
    runs this checkout's code, or `tree`'s (another checkout of the repository)."""
    if shutil.which("taskset") is None:
        raise BenchError("taskset is missing: install it with `apt-get install util-linux`")
    pin = ["taskset", "-c", str(cpu)]
    if kind == "memcached":
        binary = shutil.which("memcached")
        if binary is None:
            raise BenchError("memcached is not installed: install it with "
                             "`apt-get install memcached` (or `make debian-deps` as root)")
        # memcached refuses to run as root without -u; as another user, -u is not needed.
        user = ["-u", "root"] if os.geteuid() == 0 else []
        return [*pin, binary, "-t", "1", "-p", str(port), "-U", "0", "-l", HOST, *user,
                "-m", str(memory)]
    if not (REPO / "backend" / "__main__.py").exists():
        raise BenchError(f"the backend is not there yet ({REPO / 'backend' / '__main__.py'} "
                         "is missing): run with `--servers memcached` until it exists")
    # -P: not the current directory (this checkout) first; PYTHONPATH puts `tree` there
    source = [] if tree is None else ["env", f"PYTHONPATH={tree}"]
    return [*pin, *source, python, *(["-P"] if tree else []), "-m", "memring.backend",
            "--listen", f"{HOST}:{port}", "--memory", str(memory)]


def _pdeathsig() -> None:
    """In the child before exec: get SIGKILLed if this script dies, even by SIGKILL."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def stop(process: subprocess.Popen[bytes], grace: float = 5.0) -> None:
    """Terminate, then kill if it does not exit within `grace` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(grace)


@contextlib.contextmanager
def spawned(name: str, argv: list[str], port: int, probe: Callable[[int], T | None],
            awaited: str) -> Iterator[tuple[Server, T]]:
    """Start `argv`, poll `probe(port)` until it gives a value, stop the process on exit.

    Shared by the benchmark scripts: servers and proxies start, wait and fail alike."""
    with tempfile.TemporaryFile() as log:
        try:
            # A new session keeps the terminal's Ctrl-C away from the server; we stop it.
            process = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, preexec_fn=_pdeathsig,
                                       start_new_session=True)
        except OSError as e:
            raise BenchError(f"cannot start {name} ({' '.join(argv)}): {e}") from e
        server = Server(name, argv, port, process, log)
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while (answer := probe(port)) is None:
                if process.poll() is not None:
                    raise BenchError(f"{name} exited with status {process.returncode} at "
                                     f"startup ({' '.join(argv)}):\n{server.log_tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{name} did not answer {awaited} on port {port} within "
                                     f"{STARTUP_TIMEOUT:.0f}s ({' '.join(argv)}):\n"
                                     f"{server.log_tail()}")
                time.sleep(0.05)
            yield server, answer
        finally:
            stop(process)


@contextlib.contextmanager
def started(name: str, kind: str, cpu: int, memory: int, python: str,
            tree: Path | None = None) -> Iterator[Server]:
    """Start one server on a free port, wait until it answers `version`, stop it on exit."""
    port = free_port()
    argv = server_argv(kind, port, cpu, memory, python, tree)
    with spawned(name, argv, port, ask_version, "`version`") as (server, version):
        server.version = version
        yield server


def parse_servers(text: str) -> list[tuple[str, str]]:
    """`memcached,backend` -> [(name, kind)]; a suffix (`memcached-2`) allows a second copy."""
    out: list[tuple[str, str]] = []
    for name in (n.strip() for n in text.split(",") if n.strip()):
        kind = next((k for k in KINDS if name == k or name.startswith(k + "-")), None)
        if kind is None:
            raise BenchError(f"unknown server {name!r} in --servers: use memcached or backend, "
                             "optionally with a suffix such as memcached-2")
        if any(name == n for n, _ in out):
            raise BenchError(f"server {name!r} is listed twice in --servers; "
                             "add a suffix to tell them apart (memcached-2)")
        out.append((name, kind))
    if not out:
        raise BenchError("--servers is empty: give e.g. memcached,backend")
    return out


def parse_trees(given: list[str], servers: list[tuple[str, str]]) -> dict[str, Path]:
    """`--tree NAME=PATH` options -> {backend name: source tree}."""
    backends = {name for name, kind in servers if kind == "backend"}
    trees: dict[str, Path] = {}
    for text in given:
        name, _, path = text.partition("=")
        tree = Path(path).resolve()
        if name not in backends:
            raise BenchError(f"--tree {text}: {name!r} is not a backend in --servers")
        if not (tree / "memring" / "backend" / "__main__.py").exists():
            raise BenchError(f"--tree {text}: {tree} is not a checkout of memring")
        trees[name] = tree
    return trees


def check_cpus(server_cpu: int, load_cpu: int) -> None:
    allowed = os.sched_getaffinity(0)
    for flag, cpu in (("--server-cpu", server_cpu), ("--load-cpu", load_cpu)):
        if cpu not in allowed:
            raise BenchError(f"{flag} {cpu} is not available here (usable CPUs: "
                             f"{sorted(allowed)}); pick one of those")
    if server_cpu == load_cpu:
        print(f"warning: servers and load share CPU {load_cpu}; the figures will be skewed",
              file=sys.stderr)


def busy_cpus(cpus: set[int], seconds: float = 0.5) -> dict[int, float]:
    """Per-CPU busy fraction over a short sample, to warn when something else is running."""
    def sample() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for ln in f:
                name, *vals = ln.split()
                if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
                    ticks = [int(v) for v in vals]
                    out[int(name[3:])] = (sum(ticks[:8]), ticks[3] + ticks[4])
        return out

    a = sample()
    time.sleep(seconds)
    b = sample()
    return {c: 1 - (b[c][1] - a[c][1]) / max(1, b[c][0] - a[c][0]) for c in a if c in b}


def fmt_us(x: float) -> str:
    return "-" if math.isnan(x) else f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def row(name: str, s: dict[str, Any]) -> str:
    srv = f"{s['server_cpu_pct']:.0f}%" if "server_cpu_pct" in s else "-"
    per_op = f"{s['cpu_us_per_op']:.1f}" if "cpu_us_per_op" in s else "-"
    return (f"{name:<16}{s['ops_per_s']:>11,.0f}{fmt_us(s['p50_us']):>9}{fmt_us(s['p99_us']):>9}"
            f"{fmt_us(s['p999_us']):>10}{srv:>9}{per_op:>9}{s['load_cpu_pct']:>9.0f}%"
            f"{int(s['misses']):>8,}{int(s['errors']):>8,}")


HEADER = (f"{'server':<16}{'ops/s':>11}{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}"
          f"{'srv cpu':>9}{'µs/op':>9}{'load cpu':>10}{'misses':>8}{'errors':>8}")


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over rounds (each metric independently), to cut noise."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys
            if all(k in r for r in runs)}


def ratios(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {k: other.get(k, math.nan) / base[k] if base.get(k) else math.nan for k in METRICS}


def describe(spec: LoadSpec, args: argparse.Namespace) -> str:
    return (f"load: {spec.connections} connections, {spec.get_ratio:.0%} get / "
            f"{1 - spec.get_ratio:.0%} set, {spec.value_size}-byte values, {spec.keys:,} keys "
            f"(preloaded); {spec.processes} load process(es) on CPU {args.load_cpu}, servers "
            f"on CPU {args.server_cpu}; {spec.duration:g}s measured after {spec.warmup:g}s "
            f"warmup, {args.rounds} round(s)")


def run(args: argparse.Namespace) -> int:
    servers = parse_servers(args.servers)
    trees = parse_trees(args.tree, servers)
    spec = spec_from_args(args, args.load_cpu)
    spec.check()
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    check_cpus(args.server_cpu, args.load_cpu)
    os.sched_setaffinity(0, {args.load_cpu})  # this process too stays off the server core
    with contextlib.suppress(OSError):
        for cpu, busy in busy_cpus({args.server_cpu, args.load_cpu}).items():
            if busy > 0.10:
                print(f"warning: CPU {cpu} is already {busy:.0%} busy with other work; the "
                      "figures will be noisy (run on an idle machine, or use --rounds 3+)",
                      file=sys.stderr)
    print(describe(spec, args), flush=True)
    line = ProgressLine()
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in servers}
    rounds_out: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        running: dict[str, Server] = {}
        for name, kind in servers:
            srv = stack.enter_context(started(name, kind, args.server_cpu, args.memory,
                                              args.python, trees.get(name)))
            running[name] = srv
            print(f"started {name} {srv.version} on port {srv.port}: {' '.join(srv.argv)}",
                  flush=True)
            preload(HOST, srv.port, spec)
        for r in range(args.rounds):
            order = servers if r % 2 == 0 else servers[::-1]
            for name, _ in order:
                srv = running[name]
                label = f"round {r + 1}/{args.rounds} {name}"
                try:
                    result: LoadResult = run_load(HOST, srv.port, spec, label, line,
                                                  srv.cpu_seconds)
                except LoadError as e:
                    raise BenchError(f"{name}: {e}\n{name} log:\n{srv.log_tail()}") from e
                finally:
                    line.clear()
                if srv.process.poll() is not None:
                    raise BenchError(f"{name} exited with status {srv.process.returncode} "
                                     f"during the run:\n{srv.log_tail()}")
                summary = result.summary()
                if summary.get("server_cpu_pct") and summary["ops_per_s"]:
                    # CPU per request: what a server costs even when other work shares its
                    # core and its throughput is cut short by waiting for the CPU
                    summary["cpu_us_per_op"] = round(
                        summary["server_cpu_pct"] * 1e4 / summary["ops_per_s"], 2)
                results[name].append(summary)
                rounds_out.append({"round": r + 1, "server": name, **summary})
                print(f"{label}: {summary['ops_per_s']:,.0f} ops/s  p50 "
                      f"{fmt_us(summary['p50_us'])} µs  p99 {fmt_us(summary['p99_us'])} µs",
                      flush=True)
        versions = {name: srv.version for name, srv in running.items()}
        commands = {name: srv.argv for name, srv in running.items()}

    medians = {name: median_summary(runs) for name, runs in results.items()}
    base = servers[0][0]
    ratio = {f"{name}/{base}": ratios(medians[base], medians[name]) for name, _ in servers[1:]}
    print()
    print(f"{'median of ' + str(args.rounds) + ' rounds' if args.rounds > 1 else 'results'}"
          f" ({spec.duration:g}s each):")
    print(HEADER)
    for name, _ in servers:
        print(row(name, medians[name]))
    for key, rt in ratio.items():
        print(f"{key}: throughput {rt['ops_per_s']:.2f}x, p50 {rt['p50_us']:.2f}x, "
              f"p99 {rt['p99_us']:.2f}x, p99.9 {rt['p999_us']:.2f}x, server CPU per request "
              f"{rt['cpu_us_per_op']:.2f}x")
    for name, s in medians.items():
        if s.get("misses") or s.get("errors"):
            print(f"warning: {name} had get misses or errors; its figures are suspect",
                  file=sys.stderr)

    if args.json:
        doc = {
            "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "load": asdict(spec),
            "server_cpu": args.server_cpu,
            "rounds": args.rounds,
            "host": {"python": platform.python_version(), "machine": platform.machine(),
                     "cpu_model": cpu_model(), "cpus": os.cpu_count()},
            "servers": {name: {"version": versions[name], "command": commands[name]}
                        for name, _ in servers},
            "median": medians,
            "ratios": ratio,
            "runs": rounds_out,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
        print(f"wrote {path}")
    return 0


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for ln in f:
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    return platform.processor()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_until_done(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                   stopped: str = "servers stopped") -> int:
    """Run a benchmark so that SIGTERM/SIGHUP stop it like Ctrl-C (its finally blocks stop
    every process it started) and its errors print one line instead of a traceback."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        return run(args)
    except (BenchError, LoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted; {stopped}", file=sys.stderr)
        return 130


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Figures are medians over rounds; ratios are each server / the first one.")
    parser.add_argument("--servers", default="memcached,backend",
                        help="comma-separated servers to start and load, the first is the "
                             "baseline for ratios (%(default)s)")
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH",
                        help="run the backend NAME of --servers from the checkout at PATH "
                             "(old code vs new in one run); repeatable")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds, alternating the server order; medians are reported "
                             "(%(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--server-cpu", type=int, default=0,
                        help="CPU the servers are pinned to (%(default)s)")
    parser.add_argument("--load-cpu", type=int, default=1,
                        help="CPU the load processes are pinned to (%(default)s)")
    parser.add_argument("--memory", type=int, default=1024,
                        help="server memory limit in MB (%(default)s)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs `-m backend` (%(default)s)")
    add_load_arguments(parser)
    return run_until_done(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
