"""What replication costs: the same load against a shard leader with `--replication sync`,
`--replication async`, and a standalone backend (no replication), in one run, as ratios.

Each mode gets a fresh etcd-coordinated shard of one leader and `--replicas - 1` followers
(the standalone backend needs no etcd). The servers are pinned to one core and the load
processes to the other, so a follower competes with its leader for the same core: on this
2-core box that is the honest case (a real deployment gives followers their own machine, and
sync mode then costs only the network round trip). The load goes straight to the leader, not
through a proxy, so the proxy's own cost does not hide replication's. Each round loads every
mode in turn (alternating the order); the table shows medians and each mode / async.

    .venv/bin/python bench/replication_cost.py                       # 90% get, then 100% set
    .venv/bin/python bench/replication_cost.py --rounds 3 --duration 10 --json ''
    .venv/bin/python bench/replication_cost.py --peer-secret --json ''  # authenticated links
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from backend_vs_memcached import check_cpus, cpu_model
from failover import stats
from loadgen import ProgressLine, add_load_arguments, preload, run_load, spec_from_args
from processes import BenchError, ask_version, free_port, run_until_done, spawned

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent
MODES = ("standalone", "async", "sync")
MIXES = (("90% get", 0.9), ("100% set", 0.0))
READY_TIMEOUT = 20.0


@contextlib.contextmanager
def shard(mode: str, args: argparse.Namespace) -> Iterator[int]:
    """A leader (and its followers) in `mode`; yields the leader's port once all are in sync."""
    pin = ["taskset", "-c", str(args.server_cpu)]
    with contextlib.ExitStack() as stack:
        if mode == "standalone":
            port = free_port()
            stack.enter_context(spawned("backend", [*pin, args.python, "-m", "memring.backend",
                                                    "--listen", f"{HOST}:{port}",
                                                    "--memory", str(args.memory)],
                                        port, ask_version, "`version`"))
            yield port
            return
        from memring.cluster.etcd_process import start_etcd

        try:
            etcd = start_etcd()
        except RuntimeError as e:
            raise BenchError(f"etcd: {e}") from e
        stack.callback(etcd.stop)
        ports = []
        secret: list[str] = []
        if args.peer_secret:  # authenticated peer links (issue 13)
            from memring.cluster.launcher import write_peer_secret

            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            write_peer_secret(workdir / "peer-secret")
            secret = ["--peer-secret-file", str(workdir / "peer-secret")]
        for r in range(args.replicas):
            port = free_port()
            argv = [*pin, args.python, "-m", "memring.backend", "--listen", f"{HOST}:{port}",
                    "--memory", str(args.memory), "--etcd", etcd.url, "--cluster", "cost",
                    "--shard", "s1", "--node-id", f"r{r + 1}", "--replication", mode,
                    "--peer-listen", f"{HOST}:{free_port()}", *secret]
            stack.enter_context(spawned(f"r{r + 1}", argv, port, ask_version, "`version`"))
            ports.append(port)
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            leaders = [p for p in ports if stats(p).get("memring_role") == "leader"]
            isr = stats(leaders[0]).get("memring_repl_isr", "") if len(leaders) == 1 else ""
            if len([m for m in isr.split(",") if m]) == args.replicas:
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{mode}: no leader with {args.replicas} in-sync replicas "
                                 f"within {READY_TIMEOUT:g}s (leaders {leaders}, ISR {isr!r})")
            time.sleep(0.05)
        yield leaders[0]


def measure(mode: str, get_ratio: float, args: argparse.Namespace,
            progress: ProgressLine) -> dict[str, Any]:
    spec = spec_from_args(argparse.Namespace(**{**vars(args), "get_ratio": get_ratio}),
                          args.load_cpu)
    with shard(mode, args) as port:
        preload(HOST, port, spec)
        result = run_load(HOST, port, spec, label=f"{mode} {get_ratio:.0%} get",
                          progress=progress)
        summary = result.summary()
        if mode != "standalone":
            lead = stats(port)
            summary["isr_shrinks"] = int(lead.get("memring_repl_isr_shrinks", 0))
    return summary


def run(args: argparse.Namespace) -> int:
    check_cpus(args.server_cpu, args.load_cpu)
    os.sched_setaffinity(0, {args.load_cpu})
    progress = ProgressLine()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {
        mix: {mode: [] for mode in MODES} for mix, _ in MIXES}
    for round_number in range(args.rounds):
        order = MODES if round_number % 2 == 0 else MODES[::-1]
        for mix, ratio in MIXES:
            for mode in order:
                print(f"round {round_number + 1}/{args.rounds}: {mix}, {mode} ...", flush=True)
                summary = measure(mode, ratio, args, progress)
                progress.clear()
                results[mix][mode].append(summary)
                print(f"  {summary['ops_per_s']:,.0f} ops/s  p50 {summary['p50_us']:,.0f} µs  "
                      f"p99 {summary['p99_us']:,.0f} µs  errors {summary.get('errors', 0)}",
                      flush=True)
    table: dict[str, Any] = {}
    print(f"\n{args.replicas} replicas per shard, {args.connections} connections, "
          f"{args.value_size}-byte values, medians of {args.rounds} round(s)")
    print(f"{'mix':<10}{'mode':<12}{'ops/s':>10}{'p50 µs':>9}{'p99 µs':>9}{'/ async':>9}")
    for mix, _ in MIXES:
        medians = {mode: {k: statistics.median(r[k] for r in runs)
                          for k in ("ops_per_s", "p50_us", "p99_us")}
                   for mode, runs in results[mix].items()}
        base = medians["async"]["ops_per_s"]
        for mode in MODES:
            m = medians[mode]
            m["ratio_to_async"] = round(m["ops_per_s"] / base, 3) if base else 0.0
            print(f"{mix:<10}{mode:<12}{m['ops_per_s']:>10,.0f}{m['p50_us']:>9,.0f}"
                  f"{m['p99_us']:>9,.0f}{m['ratio_to_async']:>8.2f}x")
        table[mix] = medians
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {"cpu_model": cpu_model(), "cpus": os.cpu_count(),
                        "python": platform.python_version()},
            "replicas": args.replicas, "rounds": args.rounds, "duration": args.duration,
            "connections": args.connections, "medians": table, "runs": results}, indent=2))
        print(f"wrote {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_arguments(parser)
    parser.add_argument("--replicas", type=int, default=2, help="nodes per shard (%(default)s)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds (%(default)s)")
    parser.add_argument("--memory", type=int, default=256, help="MB per backend (%(default)s)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--load-cpu", type=int, default=1)
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--peer-secret", action="store_true",
                        help="authenticate the peer links (a new --peer-secret-file)")
    parser.add_argument("--json", default=str(REPO / "docs" / "bench" / "replication-cost.json"),
                        help="where to write the figures ('' for nowhere; %(default)s)")
    args = parser.parse_args(argv)
    if args.replicas < 2:
        parser.error("--replicas must be at least 2 (a leader and a follower)")
    return run_until_done(run, args)


if __name__ == "__main__":
    sys.exit(main())
