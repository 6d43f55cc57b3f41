"""Jepsen-style runs of memring, per fault type, and the table the HA issue asks for.

Each run deploys a fresh cluster (3 etcd members, shards x sync replicas, 2 proxies; see
tests/helpers/jepsen/), loads it with clients while the nemesis injects one kind of fault at
a time, heals, reads every key back and checks the history: linearizability per key, lost
acknowledged writes, dirty and phantom reads, unclean elections, the longest time a key could
not be written. Histories of runs that found a problem are kept (the path is printed);
`python -m tests.helpers.jepsen.check FILE` checks one again.

    python bench/jepsen.py                       # every fault type, 2 runs of 120 s each
    python bench/jepsen.py --faults kill,stop --runs 1 --seconds 60 --seed 7
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers, run from anywhere

from tests.helpers.jepsen.nemesis import FAULTS
from tests.helpers.jepsen.run import RunConfig, RunResult, run
from tests.helpers.jepsen.summary import FaultTotals, table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(sorted(FAULTS)) + ",mixed",
                        help="comma-separated fault types (default: each, then all mixed)")
    parser.add_argument("--runs", type=int, default=2, help="runs per fault type")
    parser.add_argument("--seconds", type=float, default=120.0, help="nemesis time per run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--mode", choices=("sync", "async"), default="sync",
                        help="the backends' replication (async: to measure its weaker promise)")
    parser.add_argument("--read-policy", choices=("leader", "round_robin"), default="leader",
                        help="round_robin: the proxies read from in-sync followers too")
    parser.add_argument("--peer-tls", action="store_true",
                        help="the backends' peer links are mutual TLS (besides the secret)")
    args = parser.parse_args()
    kinds = [k for k in args.faults.split(",") if k]
    unknown = [k for k in kinds if k != "mixed" and k not in FAULTS]
    if unknown:
        parser.error(f"unknown fault {unknown}: choose from {', '.join(sorted(FAULTS))}, mixed")
    totals: list[FaultTotals] = []
    started = time.monotonic()
    planned = len(kinds) * args.runs
    done = 0
    for kind in kinds:
        total = FaultTotals(kind)
        totals.append(total)
        for number in range(args.runs):
            seed = args.seed * 1000 + done
            config = RunConfig(seconds=args.seconds, seed=seed, clients=args.clients, mode=args.mode,
                               read_policy=args.read_policy, peer_tls=args.peer_tls,
                               faults=sorted(FAULTS) if kind == "mixed" else [kind])
            print(f"[{done + 1}/{planned}] {kind} run {number + 1}, seed {seed}, "
                  f"{args.seconds:g} s ({time.monotonic() - started:.0f} s so far)", flush=True)
            result: RunResult = trio.run(run, config)
            report = total.add(result)
            done += 1
            for line in report.lines():
                print("    " + line, flush=True)
            if not total.clean_run(result, report):
                print(f"    PROBLEM: history kept in {result.workdir}", flush=True)
    print()
    print(table(totals))
    print(f"\n{sum(t.nemesis_seconds for t in totals) / 60:.1f} minutes of nemesis in "
          f"{(time.monotonic() - started) / 60:.1f} minutes")
    return 0 if all(t.clean() for t in totals) else 1


if __name__ == "__main__":
    sys.exit(main())
