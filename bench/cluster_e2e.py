"""The whole cluster end to end (issue 16): memring's proxy over 3 shards x 2 replicas, with
sync and with async replication, beside twemproxy over 3 memcached, under the same load.

Scenarios, all started here and stopped at the end (also on Ctrl-C, SIGTERM or an error):
  twemproxy      nutcracker (md5 ketama) -> 3 x `memcached -t 1`
  memring-sync   `memring up` (the way users start a cluster: its own etcd, 3 shards x 2
                 replicas, one proxy) with `replication = "sync"`
  memring-async  the same with `replication = "async"`
Every server process (nutcracker, memcached, and everything `memring up` starts: etcd, the
backends, the proxy) runs on --server-cpu (taskset; `memring up`'s children inherit it), or
unpinned with --unpinned; the load runs on --load-cpu. All three systems stay up for the
whole run (the idle ones cost a few % of the server core: etcd and lease keepalives) and the
rounds alternate their order; the tables give medians and the ratios to twemproxy.

Besides ops/s and p50/p99, the CPU every process used in the measured window (from /proc),
summed per class (proxy, leaders, followers, etcd, the `memring up` launcher; twemproxy,
memcached), as a share of a core and as CPU milliseconds per 1,000 requests: where the time
goes. With --profile (default) a second proxy of the sync cluster runs under cProfile for
one short load, and the functions with the most own time are printed, grouped by package.

    .venv/bin/python bench/cluster_e2e.py                    # 3 rounds, both load generators
    .venv/bin/python bench/cluster_e2e.py --quick            # 1 short round, ~1 min
    .venv/bin/python bench/cluster_e2e.py --json /tmp/e2e.json --loadgen python --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import pstats
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from backend_vs_memcached import (
    busy_cpus,
    check_cpus,
    cpu_model,
    fmt_us,
    load_average,
    median_summary,
    started,
)
from loadgen import LoadError, LoadSpec, ProgressLine, add_load_arguments, preload, spec_from_args
from memaslap import RUNNERS, add_loadgen_argument, loadgens
from processes import (
    HOST,
    REPO,
    BenchError,
    free_port,
    pinned,
    process_cpu_seconds,
    run_until_done,
    spawned,
    stop,
)
from proxy_bench import answers_get, launched, nutcracker_argv

SHARDS = 3
REPLICAS = 2
SCENARIOS = {
    "twemproxy": f"twemproxy -> {SHARDS} memcached",
    "memring-sync": f"memring proxy -> {SHARDS} shards x {REPLICAS} replicas, sync",
    "memring-async": f"memring proxy -> {SHARDS} shards x {REPLICAS} replicas, async",
    "memring-sync-base": f"--baseline's memring, {SHARDS} x {REPLICAS}, sync",
}
CLASSES = ("proxy", "leaders", "followers", "etcd", "launcher", "memcached")
READY_TIMEOUT = 90.0
STOP_GRACE = 20.0
# The proxy under cProfile with a CPU clock (`python -m cProfile` times the wall clock, which
# would count the proxy's idle epoll waits); SystemExit is how it ends on SIGTERM.
PROFILED_PROXY = """
import cProfile, runpy, sys, time
profile = cProfile.Profile(time.process_time)
sys.argv[0] = "memring.proxy"
profile.enable()
try:
    runpy.run_module("memring.proxy", run_name="__main__", alter_sys=True)
except SystemExit:
    pass
finally:
    profile.disable()
    profile.dump_stats({out!r})
"""  # `memring up` gives its children 5 s, then stops etcd


@dataclass
class Process:
    """One server process of a scenario and the class its CPU is counted under."""

    pid: int
    cls: str
    name: str
    port: int = 0


@dataclass
class System:
    """One scenario: its entry port and the processes whose CPU it is charged."""

    name: str
    port: int
    processes: list[Process] = field(default_factory=list)
    launcher: subprocess.Popen[bytes] | None = None  # `memring up`
    etcd_url: str = ""
    cluster: str = ""
    failed: str = ""

    def cpu_by_class(self) -> dict[str, float]:
        out = dict.fromkeys(CLASSES, 0.0)
        for p in self.processes:
            with contextlib.suppress(OSError):
                out[p.cls] += process_cpu_seconds(p.pid)
        return out


# ---------------------------------------------------------------- memring up


def children_of(root: int) -> list[int]:
    """Every live descendant of `root` (from /proc's parent pids)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        frontier += kids
    return found


def command_line(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else ""


def memring_role(port: int) -> str:
    """A backend's `memring_role` stat ("leader", "follower"; "" if it does not answer)."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as s:
            s.sendall(b"stats\r\n")
            reply = b""
            deadline = time.monotonic() + 2.0
            while not reply.endswith(b"END\r\n") and time.monotonic() < deadline \
                    and len(reply) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return ""
    found = re.search(rb"STAT memring_role (\S+)", reply)
    return found.group(1).decode() if found else ""


def classify(system: System) -> None:
    """The launcher's descendants by class; backends by their role now (leader/follower)."""
    assert system.launcher is not None
    system.processes = [Process(system.launcher.pid, "launcher", "memring up")]
    for pid in children_of(system.launcher.pid):
        try:
            argv = command_line(pid)
        except OSError:
            continue
        text = " ".join(argv)
        if "memring.backend" in text:
            listen = flag(argv, "--listen")
            port = int(listen.rsplit(":", 1)[1]) if ":" in listen else 0
            role = memring_role(port)
            cls = {"leader": "leaders", "follower": "followers"}.get(role, "followers")
            system.processes.append(Process(pid, cls, flag(argv, "--node-id"), port))
        elif "memring.proxy" in text:
            system.processes.append(Process(pid, "proxy", flag(argv, "--proxy-id")))
        elif argv and os.path.basename(argv[0]).startswith("etcd"):
            system.processes.append(Process(pid, "etcd", "etcd"))
    leaders = sum(p.cls == "leaders" for p in system.processes)
    if leaders != SHARDS:
        raise BenchError(f"{system.name}: {leaders} backends say they lead, expected {SHARDS}")


@contextlib.contextmanager
def memring_up(name: str, mode: str, cpu: int | str, python: str, tmp: Path,
               source: Path | None = None) -> Iterator[System]:
    """`memring up` with a cluster file (3 x 2, `mode` replication), pinned; stopped on exit
    with SIGTERM (it stops its children, then etcd), then whatever is left is killed. With
    `source`, the memring of that tree: run from it (`python -m` puts the working directory
    first on sys.path, for `memring up` and the servers it starts)."""
    cluster = f"bench-e2e-{name}-{os.getpid()}"
    config = tmp / f"{name}.toml"
    config.write_text(f'name = "{cluster}"\nproxies = 1\n\n[config]\nhash = "md5"\n'
                      f'read_policy = "leader"\nreplication = "{mode}"\n\n'
                      + "".join(f'[[shards]]\nid = "s{i}"\nreplicas = {REPLICAS}\n\n'
                                for i in range(1, SHARDS + 1)))
    port = free_port()
    tree = ["env", f"PYTHONPATH={source}"] if source is not None else []
    argv = [*tree, *pinned(cpu), python, "-m", "memring", "up", "--config", str(config),
            "--port", str(port)]
    print(f"starting {name}: {' '.join(argv)}", file=sys.stderr, flush=True)
    seen: set[int] = set()
    with spawned(name, argv, port, lambda p: True if answers_get(p) else None, "a get",
                 timeout=READY_TIMEOUT, cwd=source or REPO) as (server, _):
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while "memring up: ready" not in server.log_tail(1 << 20):
                if server.process.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"{name} did not get ready:\n{server.log_tail()}")
                time.sleep(0.1)
            found = re.search(r"memring up: etcd\s+(\S+)", server.log_tail(1 << 20))
            system = System(name, port, launcher=server.process, cluster=cluster,
                            etcd_url=found.group(1) if found else "")
            classify(system)
            seen.update(p.pid for p in system.processes)
            print(f"{name} ready on port {port}: " + ", ".join(
                f"{p.name} ({p.cls}, pid {p.pid})" for p in system.processes),
                file=sys.stderr, flush=True)
            yield system
        finally:
            seen.update(children_of(server.process.pid))
            stop(server.process, STOP_GRACE)
            for pid in seen - {server.process.pid}:  # only what this launcher started
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


# ---------------------------------------------------------------- measuring


def measure(system: System, gen: str, spec: LoadSpec, label: str, line: ProgressLine
            ) -> dict[str, Any] | None:
    """One load against one system: the load's summary plus CPU per class in the window."""
    samples: list[dict[str, float]] = []

    def cpu() -> float:
        samples.append(system.cpu_by_class())
        return sum(samples[-1].values())

    try:
        result = RUNNERS[gen](HOST, system.port, spec, label, line, cpu)
    except LoadError as e:
        system.failed = str(e)
        print(f"{label}: FAILED: {e}; skipping {system.name} from now on", file=sys.stderr)
        return None
    finally:
        line.clear()
    summary = result.summary()
    ops = max(1, summary["ops"])
    window = summary["window_s"]
    if len(samples) >= 2:
        for cls in CLASSES:
            used = samples[-1][cls] - samples[0][cls]
            if used > 0 or any(p.cls == cls for p in system.processes):
                summary[f"cpu_pct_{cls}"] = round(100 * used / window, 1)
                summary[f"cpu_ms_per_1k_{cls}"] = round(1e6 * used / ops, 2)
        total = sum(samples[-1].values()) - sum(samples[0].values())
        summary["cpu_pct_all"] = round(100 * total / window, 1)
        summary["cpu_us_per_request"] = round(1e6 * total / ops, 2)
    print(f"{label}: {summary['ops_per_s']:,.0f} ops/s  p50 {fmt_us(summary['p50_us'])} µs  "
          f"p99 {fmt_us(summary['p99_us'])} µs  CPU {summary.get('cpu_us_per_request', 0):.1f} "
          "µs/request", flush=True)
    return summary


def profile_proxy(system: System, spec: LoadSpec, cpu: int | str, python: str, tmp: Path,
                  line: ProgressLine, top: int = 15) -> dict[str, Any]:
    """A second proxy of `system`'s cluster under cProfile (CPU time), one load through it,
    then the own time per function and per package (memring.proxy, memring.protocol, trio)."""
    out = tmp / "proxy.prof"
    port = free_port()
    argv = [*pinned(cpu), python, "-c", PROFILED_PROXY.format(out=str(out)), "--listen",
            f"{HOST}:{port}", "--etcd", system.etcd_url, "--cluster", system.cluster,
            "--proxy-id", "bench-profile"]
    with launched("profiled-proxy", argv, port) as proxy:
        time.sleep(1.0)  # its topology watch settles
        result = RUNNERS["python"](HOST, port, spec, "profile memring-sync", line)
        line.clear()
        proxy.process.send_signal(signal.SIGTERM)  # a clean exit writes the profile
        with contextlib.suppress(subprocess.TimeoutExpired):
            proxy.process.wait(15)
    if not out.exists():
        return {"skipped": "the profiled proxy wrote no profile (it did not exit cleanly)"}
    stats = pstats.Stats(str(out))
    entries: dict[Any, Any] = getattr(stats, "stats")  # noqa: B009  (not in typeshed)
    total = sum(v[2] for v in entries.values()) or 1.0
    groups: dict[str, float] = {}
    rows = []
    for (filename, lineno, func), (_, calls, own, cumulative, _) in entries.items():
        group = package(filename, func)
        groups[group] = groups.get(group, 0.0) + own
        rows.append((own, calls, cumulative, f"{short(filename)}:{lineno}({func})"))
    rows.sort(reverse=True)
    return {
        "ops_per_s_under_profile": round(result.ops_per_s, 1),
        "requests": result.ops,
        "own_time_s": round(total, 3),
        "by_package_pct": {g: round(100 * t / total, 1)
                           for g, t in sorted(groups.items(), key=lambda x: -x[1])},
        "top_functions": [{"own_pct": round(100 * own / total, 1), "calls": calls,
                           "cumulative_s": round(cum, 3), "function": name}
                          for own, calls, cum, name in rows[:top]],
    }


def package(filename: str, func: str) -> str:
    """The group a profiled function's own time is counted in."""
    if filename == "~":
        if "select" in func or "epoll" in func or "poll" in func:
            return "epoll (builtin, CPU only)"
        if "socket" in func or "send" in func or "recv" in func:
            return "socket send/recv (builtin)"
        return "other builtins"
    for mark in ("memring/proxy/", "memring/protocol/", "memring/netio/", "memring/cluster/",
                 "memring/"):
        if mark in filename:
            return mark.strip("/").replace("/", ".")
    for lib in ("trio", "outcome", "sniffio", "selectors", "socket", "ssl", "asyncio"):
        if f"/{lib}/" in filename or filename.endswith(f"/{lib}.py"):
            return lib
    return "other"


def short(filename: str) -> str:
    for mark in ("memring/", "site-packages/", "lib/python3"):
        if mark in filename:
            return filename[filename.index(mark):]
    return filename


# ---------------------------------------------------------------- tables


def table(section: dict[str, Any]) -> list[str]:
    out = [f"{'scenario':<46}{'ops/s':>9}{'p50 µs':>9}{'p99 µs':>9}{'all cpu':>9}"
           f"{'cpu µs/req':>11}{'load cpu':>10}{'misses':>8}{'errors':>8}"]
    for name, s in section["median"].items():
        out.append(f"{SCENARIOS[name]:<46}{s['ops_per_s']:>9,.0f}{fmt_us(s['p50_us']):>9}"
                   f"{fmt_us(s['p99_us']):>9}{s.get('cpu_pct_all', math.nan):>8.0f}%"
                   f"{s.get('cpu_us_per_request', math.nan):>11.1f}{s['load_cpu_pct']:>9.0f}%"
                   f"{int(s['misses']):>8,}{int(s['errors']):>8,}")
    for key, rt in section["ratios"].items():
        out.append(f"  {key:<44} throughput {rt['ops_per_s']:.2f}x, p50 {rt['p50_us']:.2f}x, "
                   f"p99 {rt['p99_us']:.2f}x, CPU/request {rt['cpu_us_per_request']:.2f}x")
    return out


def where_time_goes(section: dict[str, Any]) -> list[str]:
    cols = [c for c in CLASSES if any(f"cpu_ms_per_1k_{c}" in s
                                      for s in section["median"].values())]
    out = [f"{'CPU ms per 1,000 requests (% of a core)':<46}"
           + "".join(f"{c:>16}" for c in cols)]
    for name, s in section["median"].items():
        cells = [f"{s[f'cpu_ms_per_1k_{c}']:.1f} ({s[f'cpu_pct_{c}']:.0f}%)"
                 if f"cpu_ms_per_1k_{c}" in s else "-" for c in cols]
        out.append(f"{SCENARIOS[name]:<46}" + "".join(f"{c:>16}" for c in cells))
    return out


def markdown(section: dict[str, Any]) -> str:
    rows = [section["title"], "",
            "| scenario | ops/s | p50 µs | p99 µs | servers' CPU | CPU µs/request | load CPU |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, s in section["median"].items():
        rows.append(f"| {SCENARIOS[name]} | {s['ops_per_s']:,.0f} | {fmt_us(s['p50_us'])} | "
                    f"{fmt_us(s['p99_us'])} | {s.get('cpu_pct_all', 0):.0f}% | "
                    f"{s.get('cpu_us_per_request', 0):.1f} | {s['load_cpu_pct']:.0f}% |")
    for key, rt in section["ratios"].items():
        rows.append(f"| **{key}** | **{rt['ops_per_s']:.2f}x** | {rt['p50_us']:.2f}x | "
                    f"{rt['p99_us']:.2f}x | | {rt['cpu_us_per_request']:.2f}x | |")
    cols = [c for c in CLASSES if any(f"cpu_ms_per_1k_{c}" in s
                                      for s in section["median"].values())]
    rows += ["", "CPU milliseconds per 1,000 requests by process class (share of a core):", "",
             "| scenario | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for name, s in section["median"].items():
        rows.append(f"| {SCENARIOS[name]} | " + " | ".join(
            f"{s[f'cpu_ms_per_1k_{c}']:.1f} ({s[f'cpu_pct_{c}']:.0f}%)"
            if f"cpu_ms_per_1k_{c}" in s else "" for c in cols) + " |")
    return "\n".join(rows)


def add_ratios(section: dict[str, Any]) -> None:
    median = section["median"]
    section["ratios"] = {
        f"{name}/twemproxy": {m: round(median[name].get(m, math.nan)
                                       / median["twemproxy"].get(m, math.nan), 3)
                              if median["twemproxy"].get(m) else math.nan
                              for m in ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_request")}
        for name in median if name != "twemproxy" and "twemproxy" in median}
    if "memring-sync" in median and "memring-sync-base" in median:  # an A/B of a change
        new, base = median["memring-sync"], median["memring-sync-base"]
        section["ratios"]["memring-sync/memring-sync-base"] = {
            m: round(new.get(m, math.nan) / base[m], 3) if base.get(m) else math.nan
            for m in ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_request")}


# ---------------------------------------------------------------- the run


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.rounds, args.duration, args.warmup = 1, min(args.duration, 3.0), 1.0
    names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
    if not names or any(n not in SCENARIOS for n in names):
        raise BenchError(f"--scenarios: choose from {','.join(SCENARIOS)}")
    if args.baseline:
        if not (Path(args.baseline) / "memring" / "cluster" / "launcher.py").exists():
            raise BenchError(f"--baseline {args.baseline}: no memring source tree there "
                             "(`git worktree add --detach DIR main`)")
        names += [] if "memring-sync-base" in names else ["memring-sync-base"]
    elif "memring-sync-base" in names:
        raise BenchError("--scenarios memring-sync-base needs --baseline DIR")
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    check_cpus(args.server_cpu, args.load_cpu)
    # --unpinned: every CPU this script may use (taken before it pins itself to the load's)
    cpu: int | str = (",".join(map(str, sorted(os.sched_getaffinity(0)))) if args.unpinned
                      else args.server_cpu)
    os.sched_setaffinity(0, {args.load_cpu})  # this process too stays off the server core
    with contextlib.suppress(OSError):
        for c, busy in busy_cpus({args.server_cpu, args.load_cpu}).items():
            if busy > 0.10:
                print(f"warning: CPU {c} is already {busy:.0%} busy with other work; the "
                      "figures will be noisy (use --rounds 3+)", file=sys.stderr)
    spec = replace(spec_from_args(args, args.load_cpu), multiget=1)
    spec.check()
    generators = loadgens(args.loadgen)
    where = (f"servers unpinned (CPUs {cpu}, shared with the load)" if args.unpinned
             else f"all servers on CPU {cpu}")
    setup = (f"setup: {where}; load on CPU {args.load_cpu}: {spec.connections} connections, "
             f"one request in flight each, {spec.get_ratio:.0%} get / {1 - spec.get_ratio:.0%} "
             f"set, {spec.value_size}-byte values, {spec.keys:,} keys preloaded; generators "
             f"{', '.join(generators)}; {spec.duration:g}s measured after {spec.warmup:g}s "
             f"warmup; {args.rounds} round(s), alternating order, medians")
    print(setup, flush=True)
    line = ProgressLine()
    began = time.monotonic()
    got: dict[str, dict[str, list[dict[str, Any]]]] = {g: {} for g in generators}
    runs: list[dict[str, Any]] = []
    profile: dict[str, Any] = {}
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="cluster-e2e-") \
            as tmpdir:
        tmp = Path(tmpdir)
        systems: list[System] = []
        for name in names:
            if name == "twemproxy":
                mcs = [stack.enter_context(started(f"memcached-{i + 1}", "memcached", cpu,
                                                   args.memory, args.python))
                       for i in range(SHARDS)]
                port = free_port()
                proxy = stack.enter_context(launched(
                    name, nutcracker_argv([m.port for m in mcs], port, tmp, cpu), port))
                systems.append(System(name, port, [Process(proxy.process.pid, "proxy",
                                                           "nutcracker")]
                                      + [Process(m.process.pid, "memcached", m.name, m.port)
                                         for m in mcs]))
            else:
                mode = name.split("-")[1]
                source = Path(args.baseline).resolve() if name.endswith("-base") else None
                systems.append(stack.enter_context(memring_up(name, mode, cpu, args.python,
                                                              tmp, source)))
        for system in systems:
            print(f"preloading {spec.keys:,} keys through {system.name}", file=sys.stderr,
                  flush=True)
            preload(HOST, system.port, spec)
        for r in range(args.rounds):
            order = systems if r % 2 == 0 else systems[::-1]
            for gen in generators:
                for system in order:
                    if system.failed:
                        continue
                    label = f"round {r + 1}/{args.rounds} {gen} {system.name}"
                    summary = measure(system, gen, spec, label, line)
                    if summary is not None:
                        got[gen].setdefault(system.name, []).append(summary)
                        runs.append({"round": r + 1, "loadgen": gen, "scenario": system.name,
                                     **summary})
        sync = next((s for s in systems if s.name == "memring-sync" and not s.failed), None)
        if args.profile and sync is not None and sync.etcd_url:
            print("profiling a second proxy of memring-sync under cProfile", file=sys.stderr,
                  flush=True)
            profile = profile_proxy(sync, replace(spec, duration=min(spec.duration, 5.0)),
                                    cpu, args.python, tmp, line)
    sections: dict[str, Any] = {}
    for gen in generators:
        section = {"title": f"{gen} load generator: {spec.connections} connections, "
                            f"{spec.get_ratio:.0%} get / {1 - spec.get_ratio:.0%} set, "
                            f"{spec.value_size}-byte values",
                   "median": {n: median_summary(got[gen][n]) for n in names
                              if got[gen].get(n)}}
        add_ratios(section)
        sections[gen] = section
    print()
    rounds = f"median of {args.rounds} rounds" if args.rounds > 1 else "1 round"
    for section in sections.values():
        print(f"{section['title']} ({rounds}):")
        print("\n".join(table(section)))
        print("\n".join(where_time_goes(section)))
        print()
    if profile.get("by_package_pct"):
        print(f"cProfile of a second memring-sync proxy ({profile['requests']:,} requests at "
              f"{profile['ops_per_s_under_profile']:,.0f} ops/s under the profiler): own time "
              "by package: " + ", ".join(f"{g} {p:.0f}%" for g, p in
                                         profile["by_package_pct"].items() if p >= 1))
        for row in profile["top_functions"]:
            print(f"  {row['own_pct']:5.1f}%  {row['calls']:>9,}  {row['function']}")
    elif profile:
        print(f"profile: {profile.get('skipped')}")
    average = load_average()
    print(f"load average: {average}; took {time.monotonic() - began:.0f}s")
    if args.json:
        doc = {
            "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "setup": setup, "load_average": average, "load": asdict(spec),
            "server_cpu": cpu, "load_cpu": args.load_cpu, "rounds": args.rounds,
            "host": {"python": platform.python_version(), "cpu_model": cpu_model(),
                     "cpus": os.cpu_count()},
            "scenarios": {n: SCENARIOS[n] for n in names},
            "loadgens": sections, "profile": profile, "runs": runs,
            "markdown": "\n\n".join(markdown(s) for s in sections.values()),
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="twemproxy,memring-sync,memring-async",
                        help="comma-separated (%(default)s; memring-sync-base comes with "
                             "--baseline)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="another memring source tree (e.g. a worktree of main) whose sync "
                             "cluster runs beside memring-sync as memring-sync-base: an A/B "
                             "of a change end to end, ratio memring-sync/memring-sync-base")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, alternating the order; medians (%(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="1 round of 3 s after 1 s warmup (a smoke run, ~1 min)")
    parser.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                        help="profile a second sync-cluster proxy with cProfile (%(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--server-cpu", type=int, default=0,
                        help="CPU every server process is pinned to (%(default)s)")
    parser.add_argument("--unpinned", action="store_true",
                        help="leave the servers unpinned (they share both cores with the load)")
    parser.add_argument("--load-cpu", type=int, default=1,
                        help="CPU the load is pinned to (%(default)s)")
    parser.add_argument("--memory", type=int, default=1024,
                        help="memcached's memory limit in MB (%(default)s)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs `memring up` (%(default)s)")
    add_loadgen_argument(parser)
    add_load_arguments(parser)
    parser.set_defaults(duration=4.0, warmup=1.0)
    return run_until_done(run, parser.parse_args(argv), "every process started here was stopped")


if __name__ == "__main__":
    sys.exit(main())
