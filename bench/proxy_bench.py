"""Compare proxies in one run: memcached direct, twemproxy and the memring proxy.

Scenarios (each proxy has 2 shards behind it, so routing and multi-get splitting happen):
  direct      the load talks to one `memcached -t 1` directly
  twemproxy   nutcracker (md5, ketama) -> 2 x memcached -t 1
  memring-mc  `python -m memring.proxy` -> 2 x memcached -t 1 (the same two as twemproxy's)
  memring-be  `python -m memring.proxy` -> 2 x memring backend (`python -m memring.backend`)
  memring-base  with --baseline DIR: the memring proxy of another source tree (DIR, e.g.
              `git archive main | tar -x -C DIR`) -> the same 2 memcached, to A/B a change
Servers and proxies are pinned to one core (--server-cpu), the load to another (--load-cpu).
Two loads: `getset` (single-key gets and sets) and `multiget` (each get names --multiget
distinct keys; a request counts as one op, keys/s is reported too). Each round runs every
load against every scenario (alternating the order), and the tables show medians and the
ratios memring/twemproxy (the headline) and proxy/direct. Then, if the proxy has
`--workers`, the memring proxy runs with --workers 1 and 2, unpinned, to show its scaling.
Every process started here is stopped at the end, also on Ctrl-C or an error.

    .venv/bin/python bench/proxy_bench.py                              # defaults, 1 round
    .venv/bin/python bench/proxy_bench.py --rounds 3 --json /tmp/proxy.json --svg /tmp/proxy.svg
    .venv/bin/python bench/proxy_bench.py --scenarios direct,twemproxy --loads getset
    .venv/bin/python bench/proxy_bench.py --scenarios memring-mc --baseline /tmp/main --rounds 7
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
from loadgen import (
    LoadError,
    LoadSpec,
    ProgressLine,
    add_load_arguments,
    preload,
    spec_from_args,
)
from memaslap import KEY_SIZE, RUNNERS, add_loadgen_argument, loadgens
from plot_svg import render
from processes import (
    HOST,
    REPO,
    BenchError,
    Server,
    free_port,
    group_cpu_seconds,
    pinned,
    run_until_done,
    spawned,
    stop_group,
)

SCENARIOS = {
    "direct": "memcached direct",
    "twemproxy": "twemproxy -> memcached",
    "memring-mc": "memring proxy -> memcached",
    "memring-be": "memring proxy -> backends",
    "memring-base": "baseline proxy -> memcached",
}
LOADS = ("getset", "multiget")
MEMASLAP_LOAD = "getset-memaslap"
# (numerator, denominator) pairs; the first is the headline.
RATIOS = (("memring-mc", "twemproxy"), ("memring-mc", "memring-base"), ("memring-be", "twemproxy"),
          ("twemproxy", "direct"),
          ("memring-mc", "direct"), ("memring-be", "direct"))
RATIO_METRICS = ("ops_per_s", "p50_us", "p99_us", "cpu_us_per_request")
SHARDS = 2
PROBE = b"get memring-bench:probe\r\n"


@dataclass
class Endpoint:
    """One scenario's entry point and every process it needs, for CPU accounting."""

    name: str
    title: str
    port: int
    proxy: Server | None
    servers: list[Server]
    failed: str = ""

    def processes(self) -> list[Server]:
        return ([self.proxy] if self.proxy else []) + self.servers


@dataclass
class Problem:
    scenario: str
    what: str

    def __str__(self) -> str:
        return f"{self.scenario}: {self.what}"


@dataclass
class Results:
    problems: list[Problem] = field(default_factory=list)
    checks: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------- processes


def answers_get(port: int) -> bool:
    """True once the port answers a get with END (works for memcached and both proxies)."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as s:
            s.sendall(PROBE)
            reply = b""
            deadline = time.monotonic() + 1.0
            while not reply.endswith(b"END\r\n") and time.monotonic() < deadline:
                chunk = s.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            return reply.endswith(b"END\r\n")
    except OSError:
        return False


def listening_sockets(port: int) -> int:
    """Listening TCP sockets on 127.0.0.1:port (one per worker with SO_REUSEPORT)."""
    want = f"0100007F:{port:04X}"
    count = 0
    with contextlib.suppress(OSError), open("/proc/net/tcp") as f:
        for ln in f:
            parts = ln.split()
            if len(parts) > 3 and parts[1] == want and parts[3] == "0A":
                count += 1
    return count


@contextlib.contextmanager
def launched(name: str, argv: list[str], port: int, workers: int = 1) -> Iterator[Server]:
    """Start a proxy, wait until it answers a get (and `workers` sockets listen), stop it."""
    with spawned(name, argv, port, lambda p: True if answers_get(p) else None,
                 "a get") as (server, _):
        try:
            deadline = time.monotonic() + 10.0
            while listening_sockets(port) < workers and time.monotonic() < deadline:
                time.sleep(0.05)
            if workers > 1 and (seen := listening_sockets(port)) < workers:
                print(f"warning: {name}: {seen} listening socket(s) on port {port}, expected "
                      f"{workers} (one per worker with SO_REUSEPORT)", file=sys.stderr)
            yield server
        finally:
            stop_group(server)


def nutcracker_argv(shard_ports: list[int], port: int, tmp: Path, cpu: int | str
                    ) -> list[str]:
    binary = shutil.which("nutcracker") or ("/usr/sbin/nutcracker"
                                            if os.path.exists("/usr/sbin/nutcracker") else None)
    if binary is None:
        raise BenchError(
            "twemproxy (nutcracker) is not installed. As root, without starting its service: "
            "printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d; "
            "chmod +x /usr/sbin/policy-rc.d; apt-get install -y nutcracker; "
            "rm -f /usr/sbin/policy-rc.d   (or leave twemproxy out of --scenarios)")
    conf = tmp / "nutcracker.yml"
    conf.write_text("memring_bench:\n"
                    f"  listen: {HOST}:{port}\n"
                    "  hash: md5\n"
                    "  distribution: ketama\n"
                    "  auto_eject_hosts: false\n"
                    "  timeout: 1000\n"
                    "  servers:\n"
                    + "".join(f"    - {HOST}:{p}:1\n" for p in shard_ports))
    return [*pinned(cpu), binary, "-c", str(conf), "-s", str(free_port()),
            "-a", HOST, "-o", str(tmp / "nutcracker.log"), "-p", str(tmp / "nutcracker.pid")]


def memring_argv(python: str, shard_ports: list[int], port: int, conf: Path,
                 cpu: int | None, workers: int | None, source: Path | None = None) -> list[str]:
    """The memring proxy's command; with `source`, the package of that tree (`python -P`:
    not the one in the working directory)."""
    conf.write_text('[proxy]\nhash = "md5"\nread_policy = "leader"\ntimeout_ms = 1000\n'
                    "failure_limit = 3\nretry_ms = 1000\n"
                    + "".join(f'\n[[shards]]\nnodes = ["{HOST}:{p}"]\n' for p in shard_ports))
    pin = pinned(cpu)
    extra = ["--workers", str(workers)] if workers is not None else []
    tree = ["env", f"PYTHONPATH={source}"] if source is not None else []
    isolated = ["-P"] if source is not None else []
    return [*tree, *pin, python, *isolated, "-m", "memring.proxy", "--listen", f"{HOST}:{port}",
            "--config", str(conf), *extra]


def memring_proxy_status(python: str) -> tuple[bool, bool, str]:
    """(usable, has --workers, why not) from `python -m memring.proxy --help`."""
    try:
        out = subprocess.run([python, "-m", "memring.proxy", "--help"], cwd=REPO, capture_output=True,
                             timeout=30, text=True)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, False, f"`{python} -m proxy --help` failed: {e}"
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return False, False, (f"`python -m memring.proxy --help` exited {out.returncode}: "
                              + " | ".join(tail))
    return True, "--workers" in out.stdout, ""


def log_findings(server: Server, limit: int = 5) -> list[str]:
    """Distinct log lines that look like trouble (tracebacks, errors, warnings)."""
    words = ("traceback", "error", "exception", "warning", "timeout", "timed out")
    seen: dict[str, None] = {}
    for ln in server.log_tail(1 << 20).splitlines():
        if any(w in ln.lower() for w in words):
            seen.setdefault(ln.strip()[:200])
    found = list(seen)
    return found[:limit] + ([f"... and {len(found) - limit} more"] if len(found) > limit else [])


# ---------------------------------------------------------------- reply checks


def exchange(port: int, request: bytes, expected_len: int, timeout: float = 3.0) -> bytes:
    """Send one (pipelined) request, read until `expected_len` bytes or a pause."""
    got = b""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        deadline = time.monotonic() + timeout
        while len(got) < expected_len and time.monotonic() < deadline:
            s.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            got += chunk
        if len(got) >= expected_len:  # anything extra would be a wrong reply too
            s.settimeout(0.2)
            with contextlib.suppress(TimeoutError, OSError):
                got += s.recv(65536)
    return got


def check_replies(port: int) -> str:
    """Pipelined sets, a multi-get with a miss in the middle, and mixed pipelining: byte-exact."""
    stamp = f"{os.getpid()}:{time.monotonic_ns()}"
    keys = [f"memring-bench:check:{stamp}:{i}".encode() for i in range(12)]
    values = [(b"v%d-" % i) * (1 + 7 * i) for i in range(12)]
    sets = b"".join(b"set %s %d 0 %d\r\n%s\r\n" % (k, i, len(v), v)
                    for i, (k, v) in enumerate(zip(keys, values, strict=True)))

    def item(i: int) -> bytes:
        return b"VALUE %s %d %d\r\n%s\r\n" % (keys[i], i, len(values[i]), values[i])

    missing = f"memring-bench:check:{stamp}:missing".encode()
    order = [7, 2, 11, 0, 5, 9, 3, 10, 1, 6]
    multi = b"get " + b" ".join([*(keys[i] for i in order[:5]), missing,
                                 *(keys[i] for i in order[5:])]) + b"\r\n"
    steps = [
        ("12 pipelined sets", sets, b"STORED\r\n" * 12),
        ("a 11-key get with a miss in the middle", multi,
         b"".join(item(i) for i in order) + b"END\r\n"),
        ("pipelined get/multi-get/set/get", b"get %s\r\n" % keys[4] + multi
         + b"set %s 0 0 2\r\nok\r\nget %s %s\r\n" % (keys[8], keys[8], keys[4]),
         item(4) + b"END\r\n" + b"".join(item(i) for i in order) + b"END\r\n"
         + b"STORED\r\n" + b"VALUE %s 0 2\r\nok\r\n" % keys[8] + item(4) + b"END\r\n"),
    ]
    for what, request, expected in steps:
        try:
            got = exchange(port, request, len(expected))
        except OSError as e:
            return f"{what}: {e}"
        if got != expected:
            at = next((i for i, (a, b) in enumerate(zip(got, expected, strict=False))
                       if a != b), min(len(got), len(expected)))
            return (f"wrong reply to {what}: {len(got)} bytes instead of {len(expected)}, "
                    f"first difference at byte {at}: expected {expected[at:at + 60]!r}, "
                    f"got {got[at:at + 60]!r}")
    return "ok"


def read_values(port: int, keys: list[bytes]) -> dict[bytes, bytes]:
    """A multi-get straight to one server, parsed: {key: value}."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        s.sendall(b"get " + b" ".join(keys) + b"\r\n")
        buf = b""
        deadline = time.monotonic() + 5
        while not buf.endswith(b"END\r\n") and time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    out: dict[bytes, bytes] = {}
    pos = 0
    while buf.startswith(b"VALUE ", pos):
        eol = buf.index(b"\r\n", pos)
        _, k, _, n = buf[pos:eol].split()[:4]
        out[k] = buf[eol + 2:eol + 2 + int(n)]
        pos = eol + 4 + int(n)
    return out


def check_placement(twemproxy: int, memring: int, shard_ports: list[int], n: int = 200) -> str:
    """Set the same keys through twemproxy ('tw') then memring ('mr'): when both proxies place
    a key on the same memcached, it exists once, as 'mr'; otherwise twice."""
    keys = [f"memring-bench:place:{os.getpid()}:{i}".encode() for i in range(n)]
    for port, val in ((twemproxy, b"tw"), (memring, b"mr")):
        req = b"".join(b"set %s 0 0 2\r\n%s\r\n" % (k, val) for k in keys)
        if exchange(port, req, 8 * n) != b"STORED\r\n" * n:
            return f"could not set {n} keys through port {port}"
    held = [read_values(p, keys) for p in shard_ports]
    agree = sum(1 for k in keys if [h.get(k) for h in held].count(b"mr") == 1
                and sum(k in h for h in held) == 1)
    return ("ok" if agree == n else
            f"twemproxy and memring place only {agree}/{n} keys on the same memcached")


# ---------------------------------------------------------------- running


def describe(spec: LoadSpec, args: argparse.Namespace) -> str:
    return (f"setup: servers (memcached -t 1 or memring backends, {SHARDS} shards behind each "
            f"proxy) and the proxy pinned to CPU {args.server_cpu}; load ({spec.processes} "
            f"processes, {spec.connections} connections, one request in flight each) pinned "
            f"to CPU {args.load_cpu}; {spec.get_ratio:.0%} get / {1 - spec.get_ratio:.0%} set, "
            f"{spec.value_size}-byte values, {spec.keys:,} keys preloaded; {spec.duration:g}s "
            f"measured after {spec.warmup:g}s warmup; {args.rounds} round(s), medians")


def load_specs(args: argparse.Namespace, loads: list[str]) -> dict[str, LoadSpec]:
    """The loads to run, by name; with `--loadgen memaslap|both` the get/set load run by
    memaslap is `getset-memaslap` (memaslap has no multi-get mix of this shape)."""
    base = spec_from_args(args, args.load_cpu)
    specs = {"getset": replace(base, multiget=1), "multiget": replace(base, multiget=args.multiget)}
    generators = loadgens(getattr(args, "loadgen", "python"))
    out = {name: specs[name] for name in loads} if "python" in generators else {}
    if "memaslap" in generators and "getset" in loads:
        out[MEMASLAP_LOAD] = specs["getset"]
    if not out:
        raise BenchError("nothing to run: memaslap runs only the getset load")
    return out


def load_title(name: str, spec: LoadSpec) -> str:
    mix = (f"{spec.get_ratio:.0%} get / {1 - spec.get_ratio:.0%} set, "
           f"{spec.value_size}-byte values, {spec.connections} connections")
    if name == MEMASLAP_LOAD:
        return (f"get/set by memaslap: {mix}, single-key, {KEY_SIZE}-byte keys (percentiles "
                "from its log2 buckets, +-2x)")
    if name == "multiget":
        return f"multi-get mix: {mix}, each get names {spec.multiget} distinct keys"
    return f"get/set: {mix}, single-key"


def measure(ep: Endpoint, load: str, spec: LoadSpec, label: str, line: ProgressLine,
            results: Results) -> dict[str, Any] | None:
    """One load against one endpoint; a failure marks the scenario failed and is recorded."""
    groups = [p.process.pid for p in ep.processes()]
    samples: list[list[float]] = []

    def cpu() -> float:
        sample = [group_cpu_seconds(g) for g in groups]
        samples.append(sample)
        return sum(sample)

    try:
        runner = RUNNERS["memaslap" if load == MEMASLAP_LOAD else "python"]
        result = runner(HOST, ep.port, spec, label, line, cpu)
    except LoadError as e:
        ep.failed = str(e)
    finally:
        line.clear()
    if not ep.failed and result.ops == 0:
        ep.failed = (f"no request completed in the {result.window_s:g}s window "
                     f"({result.stuck} connections stuck): {ep.name} stalled")
    dead = [p for p in ep.processes() if p.process.poll() is not None]
    if dead:
        ep.failed = (f"{dead[0].name} exited with status {dead[0].process.returncode} during "
                     f"the run")
    if ep.failed:
        logs = "\n".join(f"--- {p.name} log:\n{p.log_tail()}" for p in ep.processes()
                         if p.log_tail())
        results.problems.append(Problem(ep.name, f"{load}: {ep.failed}"))
        print(f"{label}: FAILED: {ep.failed}; skipping {ep.name} from now on\n{logs}",
              file=sys.stderr, flush=True)
        return None
    summary = result.summary()
    if ep.proxy and len(samples) >= 2:
        summary["proxy_cpu_pct"] = round(100 * (samples[-1][0] - samples[0][0])
                                         / result.window_s, 1)
    if "server_cpu_pct" in summary and result.ops:
        # CPU per request moves less than ops/s when neighbours take the server core
        summary["cpu_us_per_request"] = round(1e4 * summary["server_cpu_pct"]
                                              / summary["ops_per_s"], 2)
    for k in ("misses", "errors", "stuck"):
        if summary[k]:
            sample = f" (first: {result.error_sample!r})" if k == "errors" else ""
            results.problems.append(Problem(ep.name, f"{label}: {summary[k]:,} {k}{sample}"))
    results.runs.append({"load": load, "scenario": ep.name, **summary})
    keys = f"  {summary['keys_per_s']:,.0f} keys/s" if "keys_per_s" in summary else ""
    print(f"{label}: {summary['ops_per_s']:,.0f} ops/s{keys}  p50 {fmt_us(summary['p50_us'])} "
          f"µs  p99 {fmt_us(summary['p99_us'])} µs", flush=True)
    return summary


def run_rounds(endpoints: list[Endpoint], specs: dict[str, LoadSpec], rounds: int,
               line: ProgressLine, results: Results, tag: str = "") -> dict[str, Any]:
    """Every load against every endpoint per round, alternating the order; medians per load."""
    got: dict[str, dict[str, list[dict[str, Any]]]] = {ld: {} for ld in specs}
    for r in range(rounds):
        order = endpoints if r % 2 == 0 else endpoints[::-1]
        for load, spec in specs.items():
            for ep in order:
                if ep.failed:
                    continue
                label = f"{tag}round {r + 1}/{rounds} {load} {ep.name}"
                summary = measure(ep, load, spec, label, line, results)
                if summary is not None:
                    got[load].setdefault(ep.name, []).append(summary)
    out: dict[str, Any] = {}
    for load, spec in specs.items():
        medians = {ep.name: median_summary(got[load][ep.name]) for ep in endpoints
                   if got[load].get(ep.name) and not ep.failed}
        out[load] = {"title": load_title(load, spec), "spec": asdict(spec),
                     "keys_per_op": spec.keys_per_op, "median": medians}
    return out


def add_ratios(section: dict[str, Any], pairs: list[tuple[str, str]]) -> None:
    median = section["median"]
    section["ratios"] = {
        f"{a}/{b}": {m: round(median[a][m] / median[b][m], 3) if median[b].get(m) else math.nan
                     for m in RATIO_METRICS if m in median[a]}
        for a, b in pairs if a in median and b in median}


# ---------------------------------------------------------------- output


def table(section: dict[str, Any], titles: dict[str, str]) -> list[str]:
    multi = section["spec"]["multiget"] > 1
    head = (f"{'scenario':<28}{'ops/s':>10}" + (f"{'keys/s':>11}" if multi else "")
            + f"{'p50 µs':>9}{'p99 µs':>9}{'p99.9 µs':>10}{'proxy cpu':>10}{'all cpu':>9}"
            f"{'load cpu':>10}{'misses':>8}{'errors':>8}{'stuck':>7}")
    out = [head]
    for name, s in section["median"].items():
        pct = [f"{s[k]:.0f}%" if k in s else "-"
               for k in ("proxy_cpu_pct", "server_cpu_pct", "load_cpu_pct")]
        out.append(f"{titles.get(name, name):<28}{s['ops_per_s']:>10,.0f}"
                   + (f"{s.get('keys_per_s', 0):>11,.0f}" if multi else "")
                   + f"{fmt_us(s['p50_us']):>9}{fmt_us(s['p99_us']):>9}"
                   f"{fmt_us(s['p999_us']):>10}{pct[0]:>10}{pct[1]:>9}{pct[2]:>10}"
                   f"{int(s['misses']):>8,}{int(s['errors']):>8,}{int(s['stuck']):>7,}")
    for i, (key, rt) in enumerate(section.get("ratios", {}).items()):
        aim = "0.60x" if multi else "0.70x"  # issue 16
        mark = f"  <- headline (aim: >= {aim} throughput)" if i == 0 and key.endswith(
            "/twemproxy") and key.startswith("memring-mc") else ""
        cost = (f", CPU per request {rt['cpu_us_per_request']:.2f}x"
                if "cpu_us_per_request" in rt else "")
        out.append(f"  {key:<26} throughput {rt['ops_per_s']:.2f}x, p50 {rt['p50_us']:.2f}x, "
                   f"p99 {rt['p99_us']:.2f}x{cost}{mark}")
    return out


def markdown(section: dict[str, Any], titles: dict[str, str]) -> str:
    multi = section["spec"]["multiget"] > 1
    rows = [f"{section['title']}", "",
            "| scenario | ops/s |" + (" keys/s |" if multi else "")
            + " p50 µs | p99 µs | proxy CPU | all CPU | CPU µs/request |",
            "|---|---:|" + ("---:|" if multi else "") + "---:|---:|---:|---:|---:|"]
    for name, s in section["median"].items():
        pct = [f"{s[k]:.0f}%" if k in s else "" for k in ("proxy_cpu_pct", "server_cpu_pct")]
        rows.append(f"| {titles.get(name, name)} | {s['ops_per_s']:,.0f} |"
                    + (f" {s.get('keys_per_s', 0):,.0f} |" if multi else "")
                    + f" {fmt_us(s['p50_us'])} | {fmt_us(s['p99_us'])} | {pct[0]} | {pct[1]} |"
                    + (f" {s['cpu_us_per_request']:.1f} |" if "cpu_us_per_request" in s
                       else " |"))
    for key, rt in section.get("ratios", {}).items():
        rows.append(f"| **{key}** | **{rt['ops_per_s']:.2f}x** |" + (" |" if multi else "")
                    + f" {rt['p50_us']:.2f}x | {rt['p99_us']:.2f}x | | |"
                    + (f" {rt['cpu_us_per_request']:.2f}x |" if "cpu_us_per_request" in rt
                       else " |"))
    return "\n".join(rows)


def parse_list(text: str, allowed: tuple[str, ...] | dict[str, str], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise BenchError(f"{flag}: unknown or empty {bad or text!r}; choose from "
                         f"{','.join(allowed)}")
    return list(dict.fromkeys(names))


def run(args: argparse.Namespace) -> int:
    scenarios = parse_list(args.scenarios, SCENARIOS, "--scenarios")
    if args.baseline:
        if not (Path(args.baseline) / "memring" / "proxy" / "__main__.py").exists():
            raise BenchError(f"--baseline {args.baseline}: no memring proxy there (a source "
                             "tree: `git archive main | tar -x -C DIR`)")
        if "memring-base" not in scenarios:
            scenarios.append("memring-base")
    elif "memring-base" in scenarios:
        raise BenchError("--scenarios memring-base needs --baseline DIR")
    loads = parse_list(args.loads, LOADS, "--loads")
    specs = load_specs(args, loads)
    for spec in specs.values():
        spec.check()
    if args.rounds < 1:
        raise BenchError("--rounds must be at least 1")
    scaling = [int(w) for w in args.scaling.split(",") if w.strip()] if args.scaling else []
    check_cpus(args.server_cpu, args.load_cpu)
    os.sched_setaffinity(0, {args.load_cpu})  # this process too stays off the server core
    with contextlib.suppress(OSError):
        for cpu, busy in busy_cpus({args.server_cpu, args.load_cpu}).items():
            if busy > 0.10:
                print(f"warning: CPU {cpu} is already {busy:.0%} busy with other work; the "
                      "figures will be noisy (run on an idle machine, or use --rounds 3+)",
                      file=sys.stderr)
    first = next(iter(specs.values()))
    setup = describe(first, args)
    print(setup, flush=True)
    results = Results()
    usable, has_workers, why = memring_proxy_status(args.python)
    if not usable:
        for name in [s for s in scenarios if s.startswith("memring")]:
            scenarios.remove(name)
            results.problems.append(Problem(name, f"skipped: {why}"))
            print(f"skipped {name}: {why}", file=sys.stderr)
        if scaling:
            results.problems.append(Problem("scaling", f"skipped: {why}"))
    line = ProgressLine()
    cpu = args.server_cpu
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="proxy-bench-") \
            as tmpdir:
        tmp = Path(tmpdir)

        def start_server(name: str, kind: str) -> Server:
            srv = stack.enter_context(started(name, kind, cpu, args.memory, args.python))
            print(f"started {name} {srv.version} on port {srv.port}: {' '.join(srv.argv)}",
                  flush=True)
            return srv

        def start_proxy(name: str, argv: list[str], port: int, workers: int = 1) -> Server:
            srv = stack.enter_context(launched(name, argv, port, workers))
            print(f"started {name} on port {port}: {' '.join(argv)}", flush=True)
            return srv

        needs_mc = any(s in scenarios for s in ("direct", "twemproxy", "memring-mc",
                                                 "memring-base")) or scaling
        mcs = [start_server(f"memcached-{i + 1}", "memcached") for i in range(SHARDS)] \
            if needs_mc else []
        mc_ports = [m.port for m in mcs]
        endpoints: list[Endpoint] = []
        for name in scenarios:
            title = SCENARIOS[name]
            port = free_port()
            try:
                if name == "direct":
                    endpoints.append(Endpoint(name, title, mcs[0].port, None, mcs[:1]))
                elif name == "twemproxy":
                    proxy = start_proxy(name, nutcracker_argv(mc_ports, port, tmp, cpu), port)
                    endpoints.append(Endpoint(name, title, port, proxy, mcs))
                elif name == "memring-mc":
                    argv = memring_argv(args.python, mc_ports, port, tmp / f"{name}.toml", cpu,
                                        None)
                    endpoints.append(Endpoint(name, title, port, start_proxy(name, argv, port),
                                              mcs))
                elif name == "memring-base":
                    argv = memring_argv(args.python, mc_ports, port, tmp / f"{name}.toml", cpu,
                                        None, Path(args.baseline).resolve())
                    endpoints.append(Endpoint(name, title, port, start_proxy(name, argv, port),
                                              mcs))
                else:
                    bes = [start_server(f"backend-{i + 1}", "backend") for i in range(SHARDS)]
                    argv = memring_argv(args.python, [b.port for b in bes], port,
                                        tmp / f"{name}.toml", cpu, None)
                    endpoints.append(Endpoint(name, title, port, start_proxy(name, argv, port),
                                              bes))
            except BenchError as e:
                if not name.startswith("memring"):
                    raise
                results.problems.append(Problem(name, f"could not start: {e}"))
                print(f"skipped {name}: {e}", file=sys.stderr, flush=True)

        for ep in endpoints:
            if ep.proxy:
                results.checks[f"replies {ep.name}"] = verdict = check_replies(ep.port)
                print(f"check {ep.name}: pipelining and multi-get replies: {verdict}",
                      flush=True)
                if verdict != "ok" and ep.name.startswith("memring"):
                    results.problems.append(Problem(ep.name, verdict))
                elif verdict != "ok":  # a reference's quirk, e.g. twemproxy's order after a miss
                    print(f"note: {ep.name} is the reference, not memring; its reply differs "
                          "from memcached's (recorded under checks)", flush=True)
        names = {ep.name: ep for ep in endpoints}
        if "twemproxy" in names and "memring-mc" in names:
            verdict = check_placement(names["twemproxy"].port, names["memring-mc"].port,
                                      mc_ports)
            results.checks["placement memring-mc vs twemproxy"] = verdict
            print(f"check: key placement memring vs twemproxy (md5 ketama): {verdict}",
                  flush=True)
            if verdict != "ok":
                results.problems.append(Problem("memring-mc", verdict))
        for ep in endpoints:
            print(f"preloading {first.keys:,} keys through {ep.name}", flush=True)
            try:
                preload(HOST, ep.port, first)
            except LoadError as e:
                if not ep.name.startswith("memring"):
                    raise BenchError(f"{ep.name}: {e}") from e
                ep.failed = f"preload failed: {e}"
                results.problems.append(Problem(ep.name, ep.failed))
                print(f"skipped {ep.name}: {ep.failed}", file=sys.stderr, flush=True)

        sections = run_rounds(endpoints, specs, args.rounds, line, results)
        for section in sections.values():
            add_ratios(section, list(RATIOS))

        scale_out: dict[str, Any] = {}
        scale_eps: list[Endpoint] = []
        if scaling and usable and not has_workers:
            scale_out = {"skipped": "the memring proxy has no --workers option yet"}
        elif scaling and usable:
            print(f"\nscaling: memring proxy -> memcached with --workers "
                  f"{', '.join(map(str, scaling))}; the proxy is NOT pinned (it may use both "
                  f"cores, sharing them with memcached on CPU {cpu} and the load on CPU "
                  f"{args.load_cpu})", flush=True)
            for w in scaling:
                name = f"memring-w{w}"
                port = free_port()
                argv = memring_argv(args.python, mc_ports, port, tmp / f"{name}.toml", None, w)
                try:
                    scale_eps.append(Endpoint(name, f"memring --workers {w} (unpinned)", port,
                                              start_proxy(name, argv, port, w), mcs))
                    preload(HOST, port, first)
                except (BenchError, LoadError) as e:
                    results.problems.append(Problem(name, f"could not start: {e}"))
                    print(f"skipped {name}: {e}", file=sys.stderr, flush=True)
            if scale_eps:
                scale_out = run_rounds(scale_eps, specs, args.rounds, line, results,
                                       "scaling ")
                base = scale_eps[0].name
                for section in scale_out.values():
                    add_ratios(section, [(ep.name, base) for ep in scale_eps[1:]])
        elif args.scaling:
            scale_out = {"skipped": "the memring proxy is not usable"}
        for ep in endpoints + scale_eps:
            if ep.proxy and ep.name.startswith("memring") and (found := log_findings(ep.proxy)):
                results.problems.append(Problem(ep.name, "its log says: " + " | ".join(found)))
        versions = {p.name: p.version for ep in endpoints for p in ep.processes() if p.version}
        commands = {p.name: p.argv for ep in endpoints for p in ep.processes()}

    titles = {**SCENARIOS, **{f"memring-w{w}": f"memring --workers {w} (unpinned)"
                              for w in scaling}}
    md: list[str] = []
    print()
    rounds = f"median of {args.rounds} rounds" if args.rounds > 1 else "1 round"
    for section in sections.values():
        print(f"{section['title']} ({rounds}):")
        print("\n".join(table(section, titles)))
        print()
        md.append(markdown(section, titles))
    for load, section in scale_out.items():
        if load == "skipped":
            print(f"scaling with --workers: skipped ({section})")
            continue
        print(f"scaling, {section['title']} (proxy unpinned, memcached on CPU {cpu}, load on "
              f"CPU {args.load_cpu}):")
        print("\n".join(table(section, titles)))
        print()
        md.append("Scaling (proxy unpinned): " + markdown(section, titles))
    for name, verdict in results.checks.items():
        print(f"check {name}: {verdict}")
    print(f"load average: {load_average()}")
    for p in results.problems:
        print(f"problem: {p}", file=sys.stderr)

    doc = {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "setup": setup,
        "load_average": load_average(),
        "scenarios": {n: SCENARIOS[n] for n in scenarios},
        "server_cpu": cpu, "load_cpu": args.load_cpu, "rounds": args.rounds,
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpu_model": cpu_model(), "cpus": os.cpu_count()},
        "versions": versions, "commands": commands,
        "loads": sections,
        "scaling": scale_out,
        "checks": results.checks,
        "problems": [str(p) for p in results.problems],
        "markdown": "\n\n".join(md),
        "runs": results.runs,
    }
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        print(f"wrote {path}")
    if args.svg:
        path = Path(args.svg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(doc))
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Figures are medians over rounds; the tables end with the ratios.")
    parser.add_argument("--scenarios", default=",".join(n for n in SCENARIOS
                                                         if n != "memring-base"),
                        help="comma-separated scenarios to run (%(default)s; memring-base is "
                             "added with --baseline)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="another source tree whose memring proxy runs beside memring-mc "
                             "as memring-base, in front of the same memcached (an A/B of a "
                             "change: alternated rounds, medians, ratio memring-mc/memring-base)")
    parser.add_argument("--loads", default=",".join(LOADS),
                        help="comma-separated loads to run (%(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="rounds, alternating the scenario order; medians are reported "
                             "(%(default)s)")
    parser.add_argument("--scaling", default="1,2", metavar="N,N",
                        help="memring proxy --workers counts to compare, unpinned, after the "
                             "main rounds; '' to skip (%(default)s)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    parser.add_argument("--svg", metavar="FILE", help="also draw the figures to FILE (SVG)")
    parser.add_argument("--server-cpu", type=int, default=0,
                        help="CPU the servers and proxies are pinned to (%(default)s)")
    parser.add_argument("--load-cpu", type=int, default=1,
                        help="CPU the load processes are pinned to (%(default)s)")
    parser.add_argument("--memory", type=int, default=1024,
                        help="server memory limit in MB (%(default)s)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs `-m proxy` and `-m backend` (%(default)s)")
    add_loadgen_argument(parser)
    add_load_arguments(parser)
    parser.set_defaults(multiget=10)
    return run_until_done(run, parser.parse_args(argv),
                          "every process started here was stopped")


if __name__ == "__main__":
    sys.exit(main())

