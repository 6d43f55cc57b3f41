"""What ASCII authentication costs the backend: the same load against backends that differ
only in it, alternating in rounds, medians reported.

Variants: `off` (this tree, no --auth-file), `on` (this tree, --auth-file; every load
connection authenticates once, then runs the load), and `base` (another interpreter's
memring, e.g. the main branch's venv, without auth: what the code before auth did). The
servers are pinned to one CPU and the load to another; each round runs every variant once,
in rotating order, so drift on a shared machine falls on all of them alike.

    .venv/bin/python bench/auth_cost.py --base-python /work/main/.venv/bin/python --rounds 5
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from loadgen import LoadSpec, ProgressLine, add_load_arguments, preload, run_load, spec_from_args
from processes import HOST, free_port, process_cpu_seconds, stop

USER, PASSWORD = b"bench", b"bench-password"
AUTH = b"set auth 0 0 %d\r\n%s %s\r\n" % (len(USER) + 1 + len(PASSWORD), USER, PASSWORD)


def answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as s:
            s.sendall(b"version\r\n")
            return s.recv(64).endswith(b"\r\n")
    except OSError:
        return False


def start(python: str, port: int, cpu: int, extra: list[str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        ["taskset", "-c", str(cpu), python, "-m", "memring.backend", "--listen",
         f"{HOST}:{port}", "--memory", "1024", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not answers(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit(f"backend ({python}) did not start on port {port}")
        time.sleep(0.05)
    return process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-python", help="an interpreter whose memring has no auth "
                        "(e.g. /work/main/.venv/bin/python); adds the `base` variant")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    add_load_arguments(parser)
    args = parser.parse_args(argv)
    spec = spec_from_args(args, args.load_cpu)
    with tempfile.TemporaryDirectory() as tmp:
        users = Path(tmp) / "users"
        users.write_bytes(USER + b":" + PASSWORD + b"\n")
        variants: dict[str, tuple[str, list[str], LoadSpec]] = {
            "off": (sys.executable, [], spec),
            "on": (sys.executable, ["--auth-file", str(users)], LoadSpec(
                **{**spec.__dict__, "auth": AUTH})),
        }
        if args.base_python:
            variants = {"base": (args.base_python, [], spec), **variants}
        figures: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        names = list(variants)
        line = ProgressLine()
        for round_ in range(args.rounds):
            order = names[round_ % len(names):] + names[: round_ % len(names)]
            for name in order:
                python, extra, load = variants[name]
                port = free_port()
                process = start(python, port, args.server_cpu, extra)
                try:
                    preload(HOST, port, load)
                    used = process_cpu_seconds(process.pid)
                    result = run_load(HOST, port, load, f"{name} round {round_ + 1}", line)
                    used = process_cpu_seconds(process.pid) - used
                finally:
                    stop(process)
                summary = result.summary()
                # CPU per request is steadier than throughput on a shared machine: others'
                # load takes time from the server, not (much) work per request. The warm-up's
                # requests are counted at the measured rate.
                requests = summary["ops_per_s"] * (load.duration + load.warmup)
                summary["cpu_us_per_op"] = used / requests * 1e6 if requests else float("nan")
                figures[name].append(summary)
                line.clear()
                print(f"round {round_ + 1} {name:>4}: {summary['ops_per_s']:>9.0f} ops/s  "
                      f"p50 {summary['p50_us']:.0f} us  p99 {summary['p99_us']:.0f} us  "
                      f"server CPU {summary['cpu_us_per_op']:.1f} us/op  "
                      f"errors {summary['errors']}", flush=True)
    first = names[0]
    print(f"\nmedians over {args.rounds} rounds (ratio to {first}):")
    base_ops = statistics.median(f["ops_per_s"] for f in figures[first])
    base_p99 = statistics.median(f["p99_us"] for f in figures[first])
    base_cpu = statistics.median(f["cpu_us_per_op"] for f in figures[first])
    for name in names:
        ops = statistics.median(f["ops_per_s"] for f in figures[name])
        p99 = statistics.median(f["p99_us"] for f in figures[name])
        cpu = statistics.median(f["cpu_us_per_op"] for f in figures[name])
        spread = (max(f["ops_per_s"] for f in figures[name])
                  - min(f["ops_per_s"] for f in figures[name])) / ops
        print(f"  {name:>4}: {ops:>9.0f} ops/s ({ops / base_ops:.3f})  p99 {p99:.0f} us "
              f"({p99 / base_p99:.3f})  server CPU {cpu:.2f} us/op ({cpu / base_cpu:.3f})  "
              f"ops/s spread across rounds {spread:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
