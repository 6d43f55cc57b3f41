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
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadgen import (
    LoadError,
    LoadSpec,
    ProgressLine,
    add_load_arguments,
    preload,
    spec_from_args,
)
from memaslap import RUNNERS, add_loadgen_argument, loadgens
from processes import (
    HOST,
    REPO,
    BenchError,
    Server,
    ask_version,
    free_port,
    pinned,
    run_until_done,
    spawned,
)

KINDS = ("memcached", "backend")
METRICS = ("ops_per_s", "p50_us", "p99_us", "p999_us")


def server_argv(kind: str, port: int, cpu: int | str, memory: int, python: str,
                tree: Path | None = None) -> list[str]:
    """The command for one server, pinned to `cpu` with taskset (as in the issue); a backend
    runs this checkout's code, or `tree`'s (another checkout of the repository)."""
    pin = pinned(cpu)
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


@contextlib.contextmanager
def started(name: str, kind: str, cpu: int | str, memory: int, python: str,
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
    per_request = f"{cpu_us_per_request(s):.1f}" if "server_cpu_pct" in s else "-"
    return (f"{name:<16}{s['ops_per_s']:>11,.0f}{fmt_us(s['p50_us']):>9}{fmt_us(s['p99_us']):>9}"
            f"{fmt_us(s['p999_us']):>10}{srv:>9}{per_request:>11}{s['load_cpu_pct']:>9.0f}%"
            f"{int(s['misses']):>8,}{int(s['errors']):>8,}")


def cpu_us_per_request(s: dict[str, Any]) -> float:
    """The server's CPU per request: steadier than ops/s when neighbours take the core."""
    return float(10_000 * s["server_cpu_pct"] / s["ops_per_s"]) if s["ops_per_s"] else math.nan


HEADER = (f"{'server':<16}{'ops/s':>11}{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}"
          f"{'srv cpu':>9}{'cpu µs/req':>11}{'load cpu':>10}{'misses':>8}{'errors':>8}")


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-metric median over rounds (each metric independently), to cut noise."""
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys
            if all(k in r for r in runs)}


def ratios(base: dict[str, Any], other: dict[str, Any]) -> dict[str, float]:
    return {k: other[k] / base[k] if base[k] else math.nan for k in METRICS}


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
    generators = loadgens(args.loadgen)
    print(describe(spec, args) + f"; load generator(s): {', '.join(generators)}", flush=True)
    line = ProgressLine()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        gen: {name: [] for name, _ in servers} for gen in generators}
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
            for gen in generators:
                for name, _ in order:
                    srv = running[name]
                    label = f"round {r + 1}/{args.rounds} {gen} {name}"
                    try:
                        result = RUNNERS[gen](HOST, srv.port, spec, label, line,
                                              srv.cpu_seconds)
                    except LoadError as e:
                        raise BenchError(f"{name}: {e}\n{name} log:\n{srv.log_tail()}") from e
                    finally:
                        line.clear()
                    if srv.process.poll() is not None:
                        raise BenchError(f"{name} exited with status {srv.process.returncode} "
                                         f"during the run:\n{srv.log_tail()}")
                    summary = result.summary()
                    results[gen][name].append(summary)
                    rounds_out.append({"round": r + 1, "loadgen": gen, "server": name,
                                       **summary})
                    print(f"{label}: {summary['ops_per_s']:,.0f} ops/s  p50 "
                          f"{fmt_us(summary['p50_us'])} µs  p99 {fmt_us(summary['p99_us'])} µs",
                          flush=True)
        versions = {name: srv.version for name, srv in running.items()}
        commands = {name: srv.argv for name, srv in running.items()}

    base = servers[0][0]
    by_gen: dict[str, dict[str, Any]] = {}
    for gen in generators:
        medians = {name: median_summary(runs) for name, runs in results[gen].items()}
        ratio = {f"{name}/{base}": ratios(medians[base], medians[name])
                 for name, _ in servers[1:]}
        by_gen[gen] = {"median": medians, "ratios": ratio}
        print()
        rounds = f"median of {args.rounds} rounds" if args.rounds > 1 else "results"
        print(f"{gen} load generator, {rounds} ({spec.duration:g}s each)"
              + (" (percentiles from log2 buckets, +-2x)" if gen == "memaslap" else "") + ":")
        print(HEADER)
        for name, _ in servers:
            print(row(name, medians[name]))
        for key, rt in ratio.items():
            other = medians[key.split("/")[0]]
            cost = (cpu_us_per_request(other) / cpu_us_per_request(medians[base])
                    if "server_cpu_pct" in other and "server_cpu_pct" in medians[base]
                    else math.nan)
            print(f"{key}: throughput {rt['ops_per_s']:.2f}x, p50 {rt['p50_us']:.2f}x, "
                  f"p99 {rt['p99_us']:.2f}x, p99.9 {rt['p999_us']:.2f}x, CPU per request "
                  f"{cost:.2f}x")
        for name, s in medians.items():
            if s.get("misses") or s.get("errors"):
                print(f"warning: {gen} {name} had get misses or errors; its figures are "
                      "suspect", file=sys.stderr)
    print(f"load average: {load_average()}")

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
            "load_average": load_average(),
            "median": by_gen[generators[0]]["median"],
            "ratios": by_gen[generators[0]]["ratios"],
            "loadgens": by_gen,
            "runs": rounds_out,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str) + "\n")
        print(f"wrote {path}")
    return 0


def load_average() -> str:
    """/proc/loadavg's 1, 5 and 15 minute figures, recorded beside every result."""
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for ln in f:
            if ln.startswith("model name"):
                return ln.split(":", 1)[1].strip()
    return platform.processor()


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
    add_loadgen_argument(parser)
    add_load_arguments(parser)
    return run_until_done(run, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
