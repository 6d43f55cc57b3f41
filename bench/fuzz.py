"""memring's fuzzer: grammar-generated requests against memcached 1.6.18 and memring.

Differential mode sends every case to memcached, a memring backend, a proxy over memcached
shards and a proxy over memring backends, and compares the replies byte for byte; known
differences are listed, with their reasons, in tests/helpers/fuzz_differences.py. Isolation
mode runs victim clients through both proxies while hostile cases run on other connections
and checks that every victim reply is its own.

    make fuzz                                      # 100,000 cases, both modes, <= 20 min
    .venv/bin/python bench/fuzz.py --cases 20000 --seed 7 --mode differential
    .venv/bin/python bench/fuzz.py --mode isolation --max-seconds 120

Exit status: 0 when nothing undocumented was found and no victim reply was wrong, 1 otherwise.
All servers run on 127.0.0.1 and are stopped at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.helpers, run from anywhere

from tests.helpers import fuzz_differences, fuzz_runner


class ProgressLine:
    """A progress line on stderr at most every `every` seconds."""

    def __init__(self, label: str, total: int, budget: float, every: float = 5.0) -> None:
        self.label, self.total, self.budget, self.every = label, total, budget, every
        self.last = 0.0

    def __call__(self, done: int, elapsed: float) -> None:
        now = time.monotonic()
        if now - self.last >= self.every or done == self.total:
            self.last = now
            rate = done / elapsed if elapsed > 0 else 0.0
            print(f"  {self.label}: {done}/{self.total} cases, {elapsed:.0f}/{self.budget:.0f} s, "
                  f"{rate:.0f} cases/s", file=sys.stderr, flush=True)


def left_out(args: argparse.Namespace) -> tuple[fuzz_differences.CommandDifference, ...]:
    tables = {"open-bugs": fuzz_differences.OPEN_BUGS, "reported": fuzz_differences.REPORTED,
              "both": fuzz_differences.OPEN_BUGS + fuzz_differences.REPORTED}
    return tables[args.leave_out] if args.leave_out else ()


def run_differential(fuzz: fuzz_runner.FuzzServers, args: argparse.Namespace,
                     budget: float) -> bool:
    runner = fuzz_runner.DifferentialRunner(fuzz, args.seed, max_findings=args.max_findings,
                                            drop=left_out(args))
    report = runner.run(args.cases, budget, ProgressLine("differential", args.cases, budget))
    print("\n".join(report.lines()))
    shown = {**report.open_bug_examples, **report.reported_examples}
    for name, finding in shown.items():
        print(f"\n--- example of {name}:\n{finding.describe()}")
    for finding in report.undocumented:
        print(f"\n--- UNDOCUMENTED difference:\n{finding.describe()}")
    for finding in report.flaky:
        print(f"\n--- difference that did not reproduce on a re-run:\n{finding.describe()}")
    return report.failures == 0


def run_isolation(fuzz: fuzz_runner.FuzzServers, args: argparse.Namespace,
                  budget: float) -> bool:
    runner = fuzz_runner.IsolationRunner(fuzz, args.seed, args.victims, drop=left_out(args))
    report = runner.run(args.cases, budget, ProgressLine("isolation", args.cases, budget))
    print("\n".join(report.lines()))
    for example in report.examples:
        print(f"\n--- wrong victim reply:\n  {example}")
    if report.wrong:  # what the proxies said meanwhile: a deadline, an ejection, an error
        for name in (n for n in fuzz.targets if n in fuzz_differences.PROXIES):
            said = [line for line in fuzz.targets[name].log_text().splitlines()
                    if "level=INFO" not in line and "level=DEBUG" not in line]
            print(f"\n--- {name}'s log above INFO ({len(said)} lines, the last 10):")
            print("\n".join(f"  {line[:300]}" for line in said[-10:]))
    return report.wrong == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000, help="cases per mode")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--mode", choices=("differential", "isolation", "both"),
                        default="both")
    parser.add_argument("--max-seconds", type=float, default=1200.0,
                        help="stop after this long in all (both modes: split in half)")
    parser.add_argument("--victims", type=int, default=2, help="victim connections per proxy")
    parser.add_argument("--shards", type=int, default=2, help="shards behind each proxy")
    parser.add_argument("--max-findings", type=int, default=30,
                        help="distinct undocumented differences shrunk and printed")
    parser.add_argument("--leave-out", choices=("open-bugs", "reported", "both"),
                        help="leave the commands of these known causes out of every case")
    parser.add_argument("--causes", action="store_true", help="list the known causes and exit")
    args = parser.parse_args(argv)
    if args.causes:
        for name, reason in fuzz_differences.reasons().items():
            print(f"{name}: {reason}")
        return 0
    modes = ["differential", "isolation"] if args.mode == "both" else [args.mode]
    start = time.monotonic()
    ok = True
    print(f"fuzz: seed {args.seed}, up to {args.cases} cases per mode, modes {modes}, "
          f"at most {args.max_seconds:.0f} s", flush=True)
    with fuzz_runner.started(args.shards) as fuzz:
        for i, mode in enumerate(modes):
            left = args.max_seconds - (time.monotonic() - start)
            budget = left / (len(modes) - i)
            run = run_differential if mode == "differential" else run_isolation
            ok = run(fuzz, args, budget) and ok
    print(f"fuzz: {'no undocumented difference, no wrong victim reply' if ok else 'FAILED'} "
          f"({time.monotonic() - start:.0f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
