"""Re-check a saved run: `python -m tests.helpers.jepsen.check history.jsonl [--budget N]`.

Prints the report; exits 1 when it found anomalies, 0 otherwise (undecided keys included).
"""

from __future__ import annotations

import argparse
import sys

from .anomalies import check
from .history import RecordedRun
from .linearizability import DEFAULT_BUDGET


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("history", help="a run saved as JSON lines (RecordedRun.save)")
    parser.add_argument("--budget", type=int, default=DEFAULT_BUDGET,
                        help="configurations to search per key before calling it undecided")
    arguments = parser.parse_args(argv)
    run = RecordedRun.load(arguments.history)
    report = check(run.history, run.final, run.initial, arguments.budget)
    print("\n".join(report.lines()))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
