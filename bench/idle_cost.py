"""What an idle `memring up` cluster costs: time to ready, CPU while nothing happens, syscalls.

Starts `memring up --shards N --replicas R` (etcd, N x R backends, a proxy) on free loopback
ports with its run directory and state file in a temporary directory, times the start until
it prints `ready`, asks every backend its role (`stats` memring_role), lets the cluster settle,
then samples utime+stime of every process from /proc/PID/stat over --seconds of idleness and
prints the CPU (in % of one core) in total, per class (etcd, proxy, leaders, followers) and
per backend, with the threads each class runs. `--strace follower` (or leader, proxy, etcd)
then runs `strace -c -f -p PID` on one process of that class for --strace-seconds and prints
its syscall counts. `--threads follower` (or leader, ...) samples one such process per thread
over --seconds: run time (/proc/PID/task/TID/schedstat, in ns, finer than the 10 ms ticks of
stat) and wake-ups (voluntary context switches), each with the thread's name. Everything is stopped at the end (SIGTERM to `memring up`, which stops
its children; SIGKILL to the process group after a deadline), also on error.

    flock /tmp/memring-bench.lock .venv/bin/python bench/idle_cost.py --shards 24 --replicas 2
    ... bench/idle_cost.py --code /work/wt-base --code . --rounds 2   # A/B, alternating rounds

`--code DIR` runs the memring found in DIR (PYTHONPATH=DIR, with a `memring` package there);
given several times the rounds alternate between them and the summary gives medians and
ratios to the first. The load average (`uptime`) is printed with every round.

`--burn N` loads the machine with N busy loops (one per core: 2 here) from the start of each
round until its cluster is ready, each ending by itself after BURN_LIMIT at most. The summary
gives the PSS and RSS of the cluster's processes too (PSS shares out the pages they share).

`--compile` first writes the bytecode of each checkout's modules (`python -m compileall`), as
any first run does where Python may write it: with PYTHONDONTWRITEBYTECODE set (this sandbox
sets it) and none written, every process compiles ~60 memring modules at start (~80 ms each).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
READY_TIMEOUT = 120.0  # memring up's own deadline is 30 s after its backends start
STOP_TIMEOUT = 20.0
BURN_LIMIT = 60.0
LINE = re.compile(r"memring up: (etcd|backend|proxy)\s+(\S+).*\(pid (\d+)\)")
ADDRESS = re.compile(r" (127\.0\.0\.1:\d+) ")
CLASSES = ("etcd", "proxy", "leader", "follower")


class BenchError(Exception):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_ticks(pid: int) -> int:
    """utime + stime of `pid` and its threads, in clock ticks (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of `pid` in kB (/proc/PID/smaps_rollup): PSS splits the pages processes
    share (copy-on-write after a fork, the interpreter's text) between them."""
    found = {"Pss:": 0, "Rss:": 0}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key, _, rest = line.partition(" ")
            if key in found:
                found[key] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return found["Pss:"], found["Rss:"]


class Burner:
    """`cores` busy loops (each its own process, each ending by itself after `limit`
    seconds) that load the machine while a cluster starts; stop() ends them sooner."""

    def __init__(self, cores: int, limit: float) -> None:
        loop = f"import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end: pass"
        self.processes = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(cores)]

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait(5)


def threads(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Threads:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def role(address: str) -> str:
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_connection((host, int(port)), timeout=5)
    except OSError as exc:
        raise BenchError(f"stats from {address}: {exc}") from None
    with sock:
        sock.sendall(b"stats\r\n")
        data = b""
        deadline = time.monotonic() + 5
        while not data.endswith(b"END\r\n"):
            if time.monotonic() > deadline:
                raise BenchError(f"no stats reply from {address}")
            chunk = sock.recv(65536)
            if not chunk:
                raise BenchError(f"{address} closed the stats connection")
            data += chunk
    match = re.search(rb"STAT memring_role (\S+)", data)
    return match.group(1).decode() if match else "unknown"


@dataclass
class Process:
    name: str
    kind: str  # etcd, proxy, leader, follower
    pid: int
    address: str = ""
    cpu: float = 0.0  # % of one core over the sample
    start_cpu: float = 0.0  # CPU seconds it had used when the cluster was ready
    threads: int = 0


@dataclass
class Round:
    code: str
    load_before: str
    ready_s: float = 0.0
    milestones: dict[str, float] = field(default_factory=dict)  # first line of each kind
    total_cpu: float = 0.0
    per_class: dict[str, float] = field(default_factory=dict)
    per_backend: float = 0.0
    pss_mb: float = 0.0  # every process of the cluster, after ready (PSS sums to what they use)
    rss_mb: float = 0.0
    backend_pss_mb: float = 0.0
    processes: list[Process] = field(default_factory=list)
    strace: str = ""
    threads: str = ""


class Cluster:
    """`memring up` in a temporary directory; its output read by a thread."""

    def __init__(self, code: str, shards: int, replicas: int, tmp: Path) -> None:
        env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp), TMPDIR=str(tmp))
        if code:
            env["PYTHONPATH"] = os.path.abspath(code)
        self.name = f"idle{os.getpid()}"
        self.lines: list[str] = []
        self.timeline: list[tuple[float, str]] = []  # (seconds since the start, line)
        self.ready = threading.Event()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "memring.cluster", "up", "--shards", str(shards),
             "--replicas", str(replicas), "--port", str(free_port()), "--cluster", self.name],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            process_group=0, cwd=tmp)
        self.ready_at = 0.0
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip())
            self.timeline.append((time.monotonic() - self.started, line.rstrip()))
            if "memring up: ready" in line:
                self.ready_at = time.monotonic()
                self.ready.set()

    def wait_ready(self) -> float:
        deadline = time.monotonic() + READY_TIMEOUT
        while not self.ready.wait(0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BenchError("memring up did not get ready:\n" + "\n".join(self.lines[-20:]))
        return self.ready_at - self.started

    def processes(self) -> list[Process]:
        found = [Process("memring-up", "launcher", self.process.pid)]
        for line in self.lines:
            match = LINE.search(line)
            if match:
                kind, name, pid = match.groups()
                address = ADDRESS.search(line)
                found.append(Process(name, kind, int(pid), address.group(1) if address else ""))
        for process in found:
            if process.kind == "backend":
                process.kind = role(process.address)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(5)


def sample(processes: list[Process], seconds: float) -> None:
    before = {p.pid: cpu_ticks(p.pid) for p in processes}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    for p in processes:
        p.cpu = 100.0 * (cpu_ticks(p.pid) - before[p.pid]) / CLK_TCK / elapsed
        p.threads = threads(p.pid)


def thread_stats(pid: int) -> dict[int, tuple[str, int, int]]:
    """{tid: (name, run time in ns, voluntary context switches)} of `pid`'s threads."""
    found = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            name = (task / "comm").read_text().strip()
            run_ns = int((task / "schedstat").read_text().split()[0])
            status = (task / "status").read_text()
        except (OSError, ValueError, IndexError):
            continue
        switches = re.search(r"^voluntary_ctxt_switches:\s+(\d+)", status, re.M)
        found[int(task.name)] = (name, run_ns, int(switches.group(1)) if switches else 0)
    return found


def sample_threads(pid: int, seconds: float) -> str:
    """One line per thread of `pid`: its CPU (ms) and wake-ups over `seconds`, busiest first."""
    before = thread_stats(pid)
    time.sleep(seconds)
    after = thread_stats(pid)
    rows = []
    for tid, (name, run_ns, switches) in after.items():
        _, run0, switches0 = before.get(tid, (name, 0, 0))
        rows.append((run_ns - run0, switches - switches0, tid, name))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    lines = [f"   threads of pid {pid} over {seconds:g} s: {total / 1e6:.1f} ms "
             f"({total / 1e7 / seconds:.3f}% of a core)"]
    lines += [f"     {name:<16} tid {tid:<8} {ns / 1e6:7.2f} ms {woke:6d} wake-ups"
              + ("" if tid in before else " (new)") for ns, woke, tid, name in rows]
    return "\n".join(lines)


def run_strace(pid: int, seconds: float, tmp: Path) -> str:
    out = tmp / f"strace-{pid}.txt"
    tracer = subprocess.Popen(["strace", "-c", "-f", "-o", str(out), "-p", str(pid)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(seconds)
    finally:
        tracer.send_signal(signal.SIGINT)
        try:
            tracer.wait(10)
        except subprocess.TimeoutExpired:
            tracer.kill()
            tracer.wait(5)
    return out.read_text() if out.exists() else "(strace wrote nothing: is ptrace allowed?)"


def milestones(timeline: list[tuple[float, str]]) -> dict[str, float]:
    """When memring up printed its etcd, its first and last backend, its proxy, ready."""
    found: dict[str, float] = {}
    for at, line in timeline:
        match = LINE.search(line)
        if match:
            kind = match.group(1)
            found.setdefault(f"first {kind}", at)
            found[f"last {kind}"] = at
        elif "memring up: ready" in line:
            found["ready"] = at
    return found


def one_round(args: argparse.Namespace, code: str) -> Round:
    result = Round(code or "(installed)", load_average())
    with tempfile.TemporaryDirectory(prefix="memring-idle-") as name:
        tmp = Path(name)
        burner = Burner(args.burn, BURN_LIMIT) if args.burn else None
        cluster = Cluster(code, args.shards, args.replicas, tmp)
        try:
            try:
                result.ready_s = cluster.wait_ready()
            finally:
                if burner is not None:  # the load is for the start-up; the idle sample is not
                    burner.stop()
            result.milestones = milestones(cluster.timeline)
            processes = cluster.processes()
            for p in processes:
                p.start_cpu = cpu_ticks(p.pid) / CLK_TCK
            time.sleep(args.settle)
            memory = {p.pid: memory_kb(p.pid) for p in processes}
            result.pss_mb = sum(pss for pss, _ in memory.values()) / 1024
            result.rss_mb = sum(rss for _, rss in memory.values()) / 1024
            result.backend_pss_mb = sum(memory[p.pid][0] for p in processes
                                        if p.kind in ("leader", "follower")) / 1024
            sample(processes, args.seconds)
            result.processes = processes
            result.total_cpu = sum(p.cpu for p in processes)
            for kind in (*CLASSES, "launcher"):
                result.per_class[kind] = sum(p.cpu for p in processes if p.kind == kind)
            backends = [p for p in processes if p.kind in ("leader", "follower")]
            result.per_backend = statistics.median(p.cpu for p in backends) if backends else 0
            if args.threads:
                target = next((p for p in processes if p.kind == args.threads), None)
                if target is None:
                    raise BenchError(f"no {args.threads} process to sample")
                result.threads = sample_threads(target.pid, args.seconds)
            if args.strace:
                target = next((p for p in processes if p.kind == args.strace), None)
                if target is None:
                    raise BenchError(f"no {args.strace} process to trace")
                result.strace = run_strace(target.pid, args.strace_seconds, tmp)
        finally:
            cluster.stop()
    return result


def report(r: Round) -> None:
    print(f"== {r.code}: load before {r.load_before}; ready after {r.ready_s:.1f} s; idle CPU "
          f"{r.total_cpu:.1f}% of a core (load after {load_average()})")
    print(f"   memory: PSS {r.pss_mb:.0f} MB (backends {r.backend_pss_mb:.0f} MB), RSS "
          f"{r.rss_mb:.0f} MB")
    print("   start-up: " + ", ".join(f"{name} {at:.1f} s" for name, at in
                                       sorted(r.milestones.items(), key=lambda kv: kv[1])))
    for kind in (*CLASSES, "launcher"):
        members = [p for p in r.processes if p.kind == kind]
        if members:
            cpus = sorted(p.cpu for p in members)
            print(f"   {kind:<9} x{len(members):<3} {r.per_class[kind]:6.1f}%  per process "
                  f"median {statistics.median(cpus):.2f}% max {cpus[-1]:.2f}%  threads "
                  f"{'/'.join(str(n) for n in sorted({p.threads for p in members}))}; CPU "
                  f"to start {sum(p.start_cpu for p in members):.1f} s")
    if r.threads:
        print(r.threads)
    if r.strace:
        print(r.strace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=24)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0, help="idle sample (default 10)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="wait this long after ready before sampling (default 3)")
    parser.add_argument("--strace", choices=CLASSES, help="strace -c -f one such process")
    parser.add_argument("--strace-seconds", type=float, default=6.0)
    parser.add_argument("--threads", choices=CLASSES,
                        help="CPU and wake-ups per thread of one such process over --seconds")
    parser.add_argument("--code", action="append", default=[],
                        help="a checkout to run (PYTHONPATH); repeat to compare")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per --code (default 1)")
    parser.add_argument("--burn", type=int, default=0,
                        help=f"busy loops (one per core) loading the machine until ready "
                             f"(each ends after {BURN_LIMIT:g} s at most)")
    parser.add_argument("--json", action="store_true", help="print the rounds as JSON too")
    parser.add_argument("--compile", action="store_true",
                        help="compile each checkout's bytecode first (python -m compileall)")
    args = parser.parse_args()
    codes = args.code or [""]
    rounds: list[Round] = []
    if args.compile:
        for code in codes:
            subprocess.run([sys.executable, "-m", "compileall", "-q", code or "."],
                           check=False, stdout=subprocess.DEVNULL, timeout=300)
    try:
        for _ in range(args.rounds):
            for code in codes:
                rounds.append(one_round(args, code))
                report(rounds[-1])
    except BenchError as exc:
        print(f"idle_cost: {exc}", file=sys.stderr)
        return 1
    if len(rounds) > 1:
        print("== medians")
        first = None
        for code in codes:
            mine = [r for r in rounds if r.code == (code or "(installed)")]
            cpu = statistics.median(r.total_cpu for r in mine)
            ready = statistics.median(r.ready_s for r in mine)
            backend = statistics.median(r.per_backend for r in mine)
            pss = statistics.median(r.pss_mb for r in mine)
            first = first or (cpu, ready, backend, pss)
            print(f"   {code or '(installed)'}: idle CPU {cpu:.1f}% (x{cpu / first[0]:.2f}), "
                  f"per backend {backend:.2f}% (x{backend / first[2] if first[2] else 0:.2f}),"
                  f" ready {ready:.1f} s (x{ready / first[1]:.2f}), PSS {pss:.0f} MB "
                  f"(x{pss / first[3] if first[3] else 0:.2f})")
    if args.json:
        print(json.dumps([asdict(r) for r in rounds], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
